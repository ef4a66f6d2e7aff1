"""The task interface of the training engine: one class per task, chosen by the config's ``task`` key."""
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import timm
import torch
from torch import nn
from torch.utils.data import Dataset

from densezoo.config import TrainConfig
from densezoo.registry import check_model_names

__all__ = ['Task', 'register_task', 'create_task', 'TASKS']

TASKS: Dict[str, type] = {}


def register_task(cls: type) -> type:
    """Class decorator: make a task available under ``cls.name``."""
    TASKS[cls.name] = cls
    return cls


class Task:
    """What the engine needs from a task. Subclasses set ``name`` and ``main_metric`` and implement the methods;
    a task with keys of its own declares them in ``config_class`` and checks their values in ``check_config``."""
    name = ''
    main_metric = ''
    higher_is_better = True
    log_metrics: Tuple[str, ...] = ()  # validation metrics written to log.csv (all go to log.jsonl)
    config_class: type = TrainConfig  # the task's config: TrainConfig or a subclass with the task's keys

    def __init__(self, config, dist):
        self.config = config
        self.dist = dist

    @classmethod
    def check_config(cls, config) -> None:
        """Check the values of the task's own keys (the shared ones are checked before); raises
        ``densezoo.config.ConfigError`` with a one-line reason."""

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def create_model(self, **extra) -> nn.Module:
        """``timm.create_model`` of the config's model: its kwargs, drop-path rate and pretrained weights (timm's or
        a local file through the model's checkpoint filter), plus ``extra`` arguments of the task."""
        pretrained, kwargs = self.model_args()
        return timm.create_model(self.config.model.name, pretrained=pretrained, **kwargs, **extra)

    def model_args(self) -> Tuple[bool, Dict[str, Any]]:
        """``(pretrained, kwargs)`` for creating the config's model: its kwargs, drop-path rate and pretrained weights
        (timm's or a local file through the model's checkpoint filter); the model name is checked first."""
        model_cfg = self.config.model
        check_model_names([model_cfg.name])
        kwargs = dict(model_cfg.kwargs)
        if model_cfg.drop_path_rate is not None:
            kwargs['drop_path_rate'] = model_cfg.drop_path_rate
        if model_cfg.pretrained_file:
            kwargs['pretrained_cfg_overlay'] = dict(file=model_cfg.pretrained_file)
        return model_cfg.pretrained or bool(model_cfg.pretrained_file), kwargs

    def build_datasets(self, model: nn.Module) -> Tuple[Dataset, Dataset]:
        """Training and validation datasets (both with a ``set_epoch`` method)."""
        raise NotImplementedError

    def collate_fn(self, training: bool) -> Optional[Callable]:
        """How the loaders batch samples (None: PyTorch's default)."""
        return None

    def training_loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, device: torch.device, autocast) -> Dict[str, float]:
        """Metrics over the whole validation set, reduced over all processes."""
        raise NotImplementedError

    def finish(self, model: nn.Module, val_set: Dataset, run_dir: Path, device: torch.device,
               autocast) -> Dict[str, Any]:
        """Called once at the end of a run (main process) with the final model (its EMA when there is one); may
        write extra outputs into ``run_dir`` and returns what it wrote or measured (nothing by default)."""
        return {}


def create_task(config, dist) -> Task:
    """The task named by ``config.task``; raises ``ValueError`` for unknown names."""
    if config.task not in TASKS:
        raise ValueError(f'task={config.task!r} is not known; choose one of {", ".join(sorted(TASKS))}')
    return TASKS[config.task](config, dist)
