"""Starting and resuming runs: run folders, the resolved config, and ``train`` for scripts and tests."""
import time
from pathlib import Path
from typing import Optional

import torch.distributed as dist
import yaml

from densezoo.engine.config import ConfigError, TrainConfig, config_from_dict
from densezoo.distributed import init_distributed
from densezoo.engine.trainer import RunResult, Trainer

__all__ = ['new_run_dir', 'resume_config', 'train']


def new_run_dir(config: TrainConfig) -> Path:
    """A new folder ``<output>/<name>-<time stamp>`` for a run of ``config``."""
    stamp = time.strftime('%Y%m%d-%H%M%S')
    base = Path(config.output) / f'{config.name or "run"}-{stamp}'
    run_dir, n = base, 1
    while run_dir.exists():
        n += 1
        run_dir = base.with_name(f'{base.name}-{n}')
    return run_dir


def resume_config(run_dir) -> TrainConfig:
    """The resolved config a run folder was started with (keys of other tasks, which older runs list, left out)."""
    path = Path(run_dir) / 'config.yaml'
    if not path.is_file():
        raise ConfigError(f'{str(run_dir)!r} is not a run folder (no config.yaml); pass the folder a run printed')
    return config_from_dict(yaml.safe_load(path.read_text()), drop_other_tasks_keys=True)


def train(config: TrainConfig, run_dir: Optional[Path] = None, resume: bool = False,
          progress: Optional[bool] = None) -> RunResult:
    """Train ``config`` in ``run_dir`` (a new folder by default); ``resume`` continues that folder's run."""
    info = init_distributed(config.device)
    if run_dir is None:
        chosen = [new_run_dir(config) if info.is_main else None]
        if info.enabled:  # every process must write to the folder the first one chose
            dist.broadcast_object_list(chosen, src=0)
        run_dir = chosen[0]
    run_dir = Path(run_dir)
    return Trainer(config, run_dir, resume=resume, progress=progress).fit()
