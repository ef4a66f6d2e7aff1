"""The task interface of the training engine: one class per task, chosen by the config's ``task`` key."""
from typing import Dict, Tuple

import torch
from torch import nn
from torch.utils.data import Dataset

__all__ = ['Task', 'register_task', 'create_task', 'TASKS']

TASKS: Dict[str, type] = {}


def register_task(cls: type) -> type:
    """Class decorator: make a task available under ``cls.name``."""
    TASKS[cls.name] = cls
    return cls


class Task:
    """What the engine needs from a task. Subclasses set ``name`` and ``main_metric`` and implement the methods."""
    name = ''
    main_metric = ''
    higher_is_better = True

    def __init__(self, config, dist):
        self.config = config
        self.dist = dist

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def build_datasets(self, model: nn.Module) -> Tuple[Dataset, Dataset]:
        """Training and validation datasets (both with a ``set_epoch`` method)."""
        raise NotImplementedError

    def training_loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, device: torch.device, autocast) -> Dict[str, float]:
        """Metrics over the whole validation set, reduced over all processes."""
        raise NotImplementedError


def create_task(config, dist) -> Task:
    """The task named by ``config.task``; raises ``ValueError`` for unknown names."""
    if config.task not in TASKS:
        raise ValueError(f'task={config.task!r} is not known; choose one of {", ".join(sorted(TASKS))}')
    return TASKS[config.task](config, dist)
