"""Starting and resuming runs: run folders, the resolved config, and ``train`` for scripts and tests."""
import contextlib
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import torch.distributed as dist
import yaml

from densezoo.engine.config import ConfigError, TrainConfig, config_from_dict
from densezoo.distributed import init_distributed
from densezoo.engine.faults import Interrupted, resume_command
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
    return config_from_dict(yaml.safe_load(path.read_text()), drop_other_tasks_keys=True, resume=True)


class _Terminated(BaseException):  # not an Exception: no handler of data or model errors may take it for one
    """SIGTERM while a run is set up."""


@contextlib.contextmanager
def _sigterm_raises():
    """SIGTERM raises ``_Terminated`` instead of ending the process silently (in the main thread, unless ignored)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        yield
        return

    def terminate(signum, frame):
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def train(config: TrainConfig, run_dir: Optional[Path] = None, resume: bool = False,
          progress: Optional[bool] = None) -> RunResult:
    """Train ``config`` in ``run_dir`` (a new folder by default); ``resume`` continues that folder's run.

    SIGTERM or SIGINT stops training at the next step with a checkpoint, and SIGTERM while the model and data are
    set up stops at once: both raise ``Interrupted``, whose message the main process prints."""
    info = init_distributed(config.device)
    if run_dir is None:
        chosen = [new_run_dir(config) if info.is_main else None]
        if info.enabled:  # every process must write to the folder the first one chose
            dist.broadcast_object_list(chosen, src=0)
        run_dir = chosen[0]
    run_dir = Path(run_dir)
    try:
        with _sigterm_raises():
            trainer = Trainer(config, run_dir, resume=resume, progress=progress)
    except _Terminated:
        if resume:
            message = (f'stopped by SIGTERM before training resumed; its checkpoints are unchanged; continue with: '
                       f'{resume_command(run_dir, info.world_size)}')
        else:
            message = 'stopped by SIGTERM before training started; nothing to save, no checkpoint written; start the ' \
                      'run again'
        if info.is_main:
            print(message, file=sys.stderr, flush=True)
        raise Interrupted(message, 'SIGTERM', 0, None) from None
    return trainer.fit()
