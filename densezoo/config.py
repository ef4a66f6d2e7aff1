"""Typed training configs: the sections every task shares, their checks, and the builder from plain values.

A config is a dataclass tree; ``TrainConfig`` holds the run keys and the ``model``, ``data``, ``optim`` and ``sched``
sections that every task reads, and each task (``densezoo.tasks``) extends it with the keys only it reads.
``build_config`` makes such a tree from plain values: an unknown key is a one-line error that names the closest
valid key (or the task whose key it is), a value of the wrong type one that names the key, the value and the
expected type. Reading files, ``_base_`` and overrides: ``densezoo.engine.config``.
"""
import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = ['ConfigError', 'ModelConfig', 'DataConfig', 'OptimConfig', 'SchedConfig', 'TrainConfig', 'build_config',
           'config_keys', 'check_common', 'require']


class ConfigError(ValueError):
    """A config key or value that cannot be used; the message says which and what is allowed."""


@dataclass
class ModelConfig:
    """What to train."""
    name: str = ''
    pretrained: bool = False
    pretrained_file: Optional[str] = None  # local weights (safetensors / .pth), loaded like timm's pretrained
    kwargs: Dict[str, Any] = field(default_factory=dict)  # extra timm.create_model arguments
    drop_path_rate: Optional[float] = None
    channels_last: bool = False
    compile: bool = False
    compile_backend: str = 'inductor'
    grad_checkpointing: bool = False


@dataclass
class DataConfig:
    """Where the images are and how they are loaded and augmented (the keys of more than one task)."""
    root: str = ''
    train_split: str = 'train'
    val_split: str = 'val'
    img_size: Optional[int] = None  # classification: default the model's pretrained cfg; seg: crop size (512)
    batch_size: int = 64
    val_batch_size: Optional[int] = None
    workers: int = 2
    albumentations: List[Dict[str, Any]] = field(default_factory=list)  # [{name: HorizontalFlip, p: 0.5}, ...]
    hflip: float = 0.5
    color_jitter: float = 0.4
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    corrupt_images: str = 'skip'  # 'skip' (warn, naming the file) or 'error'
    verify_images: bool = False  # open every image once before training


@dataclass
class OptimConfig:
    """Optimizer (timm's create_optimizer_v2)."""
    name: str = 'adamw'
    lr: float = 1e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    layer_decay: Optional[float] = None
    clip_grad: Optional[float] = None
    clip_mode: str = 'norm'
    kwargs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class SchedConfig:
    """Learning-rate schedule (timm's create_scheduler_v2), updated every optimizer step."""
    name: str = 'cosine'
    warmup_epochs: float = 0.0
    warmup_lr: float = 1e-6
    min_lr: float = 0.0
    decay_milestones: Tuple[int, ...] = (90, 180, 270)
    decay_rate: float = 0.1
    unit: str = 'epochs'  # what warmup_epochs and decay_milestones count: 'epochs' or 'steps' (optimizer steps)


@dataclass
class TrainConfig:
    """A whole training run; a task's config class extends it with the task's own keys and sections."""
    task: str = 'classification'
    name: str = ''  # run folder name (default: the config file name and a time stamp)
    output: str = 'runs'
    seed: int = 0
    device: Optional[str] = None  # default: cuda when available
    epochs: Optional[int] = 10  # null: as many as max_steps needs
    max_steps: Optional[int] = None  # stop after this many optimizer steps
    accumulation_steps: int = 1
    amp: Optional[str] = None  # 'bf16' or 'fp16'
    ema_decay: Optional[float] = None
    ema_warmup: bool = False
    checkpoint_every: Optional[int] = None  # optimizer steps between checkpoints (default: every epoch)
    eval_every: int = 1  # epochs
    log_every: int = 10  # optimizer steps
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return f'{_type_name(args[0])} or null'
    if origin in (tuple, Tuple):
        args = typing.get_args(tp)
        inner = _type_name(args[0]) if args else 'value'
        return f'a list of {inner}s'
    if origin in (list, List):
        return 'a list'
    if origin in (dict, Dict):
        return 'a mapping'
    return {int: 'an integer', float: 'a number', str: 'a string', bool: 'true or false'}.get(tp, str(tp))


def _coerce(key: str, value, tp):
    """Check ``value`` against the declared type ``tp`` (with the few safe conversions YAML needs)."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        if value is None:
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
        return _coerce(key, value, inner)
    wrong = ConfigError(f'{key}={value!r} has the wrong type; {key} must be {_type_name(tp)}')
    if origin in (tuple, Tuple):
        if not isinstance(value, (list, tuple)):
            raise wrong
        args = typing.get_args(tp)
        item_type = args[0]
        if len(args) == 2 and args[1] is Ellipsis or len(args) == len(value):
            return tuple(_coerce(key, v, item_type) for v in value)
        raise ConfigError(f'{key}={value!r} must have {len(args)} values')
    if origin in (list, List):
        if not isinstance(value, list):
            raise wrong
        return value
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise wrong
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise wrong
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
        return value
    if tp is float:
        if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise wrong from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise wrong
        return value
    return value


def config_keys(cls, prefix: str = '') -> List[str]:
    """The dotted keys a config dataclass declares (``'loss'``, ``'data.root'``, ...), sections included."""
    keys = []
    for name, tp in typing.get_type_hints(cls).items():
        keys.append(prefix + name)
        if dataclasses.is_dataclass(tp):
            keys += config_keys(tp, f'{prefix}{name}.')
    return keys


def build_config(cls, values: Dict[str, Any], task: str = '', elsewhere: Mapping[str, Sequence[str]] = None,
                 drop_elsewhere: bool = False, prefix: str = ''):
    """An instance of the config dataclass ``cls`` from plain (YAML) values, each checked against its declared type;
    raises ``ConfigError`` with a one-line reason.

    ``elsewhere`` maps dotted keys that ``cls`` lacks to the tasks that declare them: such a key is an error naming
    those tasks (the config's being ``task``), or with ``drop_elsewhere`` it is left out.
    """
    if not isinstance(values, dict):
        raise ConfigError(f'{prefix.rstrip(".") or "the config"} must be a mapping, got {values!r}')
    elsewhere = elsewhere or {}
    fields = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            owners = elsewhere.get(f'{prefix}{key}')
            if owners and drop_elsewhere:
                continue
            if owners:
                tasks = f'tasks {", ".join(owners)}' if len(owners) > 1 else f'task {owners[0]}'
                raise ConfigError(f"unknown config key '{prefix}{key}' for task {task}; it is a key of {tasks}")
            known = [prefix + name for name in fields]
            close = difflib.get_close_matches(prefix + str(key), known, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f'; valid keys: {", ".join(known)}'
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build_config(tp, value or {}, task, elsewhere, drop_elsewhere, f'{prefix}{key}.')
        else:
            kwargs[key] = _coerce(prefix + key, value, tp)
    return cls(**kwargs)


def require(ok: bool, message: str) -> None:
    """Raise ``ConfigError(message)`` unless ``ok``."""
    if not ok:
        raise ConfigError(message)


def check_common(config: TrainConfig) -> None:
    """Check the values of the keys every task shares; raises ``ConfigError`` with a one-line reason."""
    require(bool(config.model.name), 'model.name is missing; set it to a timm or densezoo model name')
    require(bool(config.data.root), 'data.root is missing; set it to the dataset folder')
    require(config.epochs is not None or config.max_steps is not None,
            'epochs is null and max_steps is not set; set one of them')
    require(config.epochs is None or config.epochs >= 1,
            f'epochs={config.epochs} is not allowed; it must be at least 1')
    require(config.accumulation_steps >= 1, f'accumulation_steps={config.accumulation_steps} must be at least 1')
    require(config.data.batch_size >= 1, f'data.batch_size={config.data.batch_size} must be at least 1')
    require(config.data.workers >= 0, f'data.workers={config.data.workers} must be 0 or more')
    require(config.amp in (None, 'bf16', 'fp16'), f"amp={config.amp!r} is not allowed; use bf16, fp16 or null")
    require(config.data.corrupt_images in ('skip', 'error'),
            f"data.corrupt_images={config.data.corrupt_images!r} is not allowed; use 'skip' or 'error'")
    require(config.optim.clip_mode in ('norm', 'value', 'agc'),
            f"optim.clip_mode={config.optim.clip_mode!r} is not allowed; use norm, value or agc")
    require(config.ema_decay is None or 0 < config.ema_decay < 1,
            f'ema_decay={config.ema_decay} is not allowed; it must lie between 0 and 1 (e.g. 0.999)')
    require(config.checkpoint_every is None or config.checkpoint_every >= 1,
            f'checkpoint_every={config.checkpoint_every} must be at least 1')
    require(config.max_steps is None or config.max_steps >= 1, f'max_steps={config.max_steps} must be at least 1')
    require(config.sched.unit in ('epochs', 'steps'),
            f"sched.unit={config.sched.unit!r} is not allowed; use 'epochs' or 'steps'")
