"""The task interface of the training engine: one class per task, chosen by the config's ``task`` key."""
import inspect
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import timm
import torch
from torch import nn
from torch.utils.data import Dataset

from densezoo.checkpoint_io import check_weights_file
from densezoo.config import ConfigError, TrainConfig
from densezoo.registry import check_model_names

__all__ = ['Task', 'register_task', 'create_task', 'TASKS']

TASKS: Dict[str, type] = {}


def register_task(cls: type) -> type:
    """Class decorator: make a task available under ``cls.name``."""
    TASKS[cls.name] = cls
    return cls


def model_arguments(cls: type) -> List[str]:
    """The keyword arguments a model class takes: those of its ``__init__`` and, while that passes ``**kwargs`` on,
    those of its base classes (densezoo's connected models extend timm's this way)."""
    names: List[str] = []
    for klass in cls.__mro__:
        if klass in (nn.Module, object):
            break
        if '__init__' not in vars(klass):
            continue
        params = inspect.signature(vars(klass)['__init__']).parameters.values()
        names += [p.name for p in params if p.name != 'self' and p.name not in names
                  and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def model_keywords_error(name: str, kwargs: Dict[str, Any], err: TypeError) -> ConfigError:
    """A one-line ``ConfigError`` for the ``TypeError`` that ``timm.create_model(name, **kwargs)`` raised: the
    keywords the model does not take and the arguments it takes (read from its class, built on the meta device)."""
    try:
        with torch.device('meta'):
            cls = type(timm.create_model(name))
    except Exception:  # the class cannot be found: the error as it is
        return ConfigError(f'model {name} cannot be built with {", ".join(kwargs)}: {" ".join(str(err).split())}')
    arguments = model_arguments(cls)
    bad = [key for key in kwargs if key not in arguments]
    if not bad:
        unexpected = re.search(r"keyword argument '(\w+)'", str(err))
        bad = [unexpected.group(1)] if unexpected else list(kwargs)
    pronoun = 'it' if len(bad) == 1 else 'them'
    return ConfigError(f'model {name} does not take {", ".join(bad)}; its arguments are: {", ".join(arguments)}; '
                       f'remove {pronoun} from the config')


def check_model_keywords(name: str, kwargs: Dict[str, Any]) -> None:
    """Raise a one-line ``ConfigError`` if model ``name`` does not take the keyword arguments ``kwargs``; checked by
    building it on the meta device (no memory, no weights). Other errors are left to the real build."""
    if not kwargs:
        return
    try:
        with torch.device('meta'):
            timm.create_model(name, **kwargs)
    except TypeError as err:
        if 'keyword argument' in str(err):
            raise model_keywords_error(name, kwargs, err) from None
    except Exception:  # e.g. a value this model cannot use: the real build reports it
        pass


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
        try:
            return timm.create_model(self.config.model.name, pretrained=pretrained, **kwargs, **extra)
        except TypeError as err:  # a keyword the model does not take (the config's are checked before)
            if 'keyword argument' not in str(err):
                raise
            raise model_keywords_error(self.config.model.name, {**kwargs, **extra}, err) from None

    def model_args(self) -> Tuple[bool, Dict[str, Any]]:
        """``(pretrained, kwargs)`` for creating the config's model: its kwargs, drop-path rate and pretrained weights
        (timm's or a local file through the model's checkpoint filter); the model name and keywords are checked
        first."""
        model_cfg = self.config.model
        check_model_names([model_cfg.name])
        kwargs = dict(model_cfg.kwargs)
        if model_cfg.drop_path_rate is not None:
            kwargs['drop_path_rate'] = model_cfg.drop_path_rate
        check_model_keywords(model_cfg.name, kwargs)
        if model_cfg.pretrained_file:  # timm reads it; a damaged or unsafe file is reported first, naming it
            check_weights_file(model_cfg.pretrained_file)
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

    # What a task trains besides the model (a GAN's discriminator): the engine checkpoints and resumes it.
    def build_training(self, model: nn.Module, device: torch.device, make_optimizer: Callable,
                       make_scheduler: Callable) -> None:
        """Called once, after the model is on ``device`` and its optimizer is made: build the other networks the
        task trains and their optimizers. ``make_optimizer(module, optim_config)`` and
        ``make_scheduler(optimizer, sched_config)`` build them as the engine builds the model's."""

    def networks(self) -> Dict[str, nn.Module]:
        """The other networks the task trains, by name; checkpoints hold their weights as ``<name>.safetensors``."""
        return {}

    def training_state(self) -> Dict[str, Any]:
        """The task's own training state (its optimizers, schedules, scalers), saved in each checkpoint."""
        return {}

    def load_training_state(self, state: Dict[str, Any], step: int) -> None:
        """Restore what ``training_state`` returned, at optimizer step ``step``."""

    def after_step(self, step: int, autocast) -> Dict[str, float]:
        """Called after each optimizer step of the model (and the update of its EMA), ``step`` counting from 1: the
        task's own updates (a discriminator's step). Returns values to average into the training log."""
        return {}

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
