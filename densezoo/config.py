"""Typed training configs: the sections every task shares, their checks, and the builder from plain values.

A config is a dataclass tree; ``TrainConfig`` holds the run keys and the ``model``, ``data``, ``optim`` and ``sched``
sections that every task reads, and each task (``densezoo.tasks``) extends it with the keys only it reads.
``build_config`` makes such a tree from plain values: an unknown key is a one-line error that names the closest
valid key (or the task whose key it is), a value of the wrong type one that names the key, the value and the
expected type. Reading files, ``_base_`` and overrides: ``densezoo.engine.config``.
"""
import dataclasses
import difflib
import inspect
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = ['ConfigError', 'ModelConfig', 'DataConfig', 'OptimConfig', 'SchedConfig', 'TrainConfig', 'build_config',
           'config_keys', 'check_common', 'check_device', 'check_optim', 'require', 'require_pair',
           'require_probability']


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
    keep_checkpoints: int = 3  # the newest checkpoints kept (the best one is kept besides)
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
                number = float(value)
            except ValueError:
                raise wrong from None
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong
        else:
            number = float(value)
        if not math.isfinite(number):
            raise ConfigError(f'{key}={value!r} is not allowed; {key} must be a finite number')
        return number
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


#: a run name: its folder under ``output``
_RUN_NAME = re.compile(r'[A-Za-z0-9_-][A-Za-z0-9_.-]*')
_DEVICE = re.compile(r'cpu|cuda(:[0-9]+)?|mps')
#: the names timm.scheduler.create_scheduler_v2 accepts (timm/scheduler/scheduler_factory.py)
_TIMM_SCHEDULERS = ('cosine', 'tanh', 'step', 'constant', 'multistep', 'plateau', 'poly', 'wsd', 'rsqrt', 'none')
#: timm schedules the engine cannot run: it updates the schedule every optimizer step, without a metric
_UNSUPPORTED_SCHEDULERS = {
    'plateau': 'it steps once per epoch on a validation metric; use cosine, step or multistep',
    'none': 'for a fixed learning rate use constant',
}
#: create_optimizer_v2 arguments the engine sets from the optim section
_OPTIM_KEYS = {'opt': 'name', 'lr': 'lr', 'weight_decay': 'weight_decay', 'momentum': 'momentum',
               'layer_decay': 'layer_decay'}


def check_device(device: Optional[str]) -> None:
    """Check the form of a ``device`` value (cpu, cuda, cuda:N, mps or None: cuda when available); whether the
    device exists is checked where it is opened (``densezoo.distributed.init_distributed``)."""
    require(device is None or (isinstance(device, str) and _DEVICE.fullmatch(device) is not None),
            f'device={device!r} is not allowed; use cpu, cuda, cuda:N (N: a GPU index) or mps, or leave device unset '
            f'(cuda when available, else cpu)')


def require_probability(key: str, value: float) -> None:
    """``key``'s ``value`` lies in [0, 1], else a one-line ``ConfigError``."""
    require(0 <= value <= 1, f'{key}={value} must lie between 0 and 1')


def require_pair(key: str, pair: Tuple[float, float]) -> None:
    """``key``'s ``pair`` is (low, high) with 0 < low <= high, else a one-line ``ConfigError``."""
    require(0 < pair[0] <= pair[1], f'{key}={list(pair)} must be two positive numbers, low <= high')


def _closest(value: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(value, names, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else f'use one of {", ".join(names)}'


def _check_run(config: TrainConfig) -> None:
    require(config.name == '' or _RUN_NAME.fullmatch(config.name) is not None,
            f"name={config.name!r} is not allowed; a run name (its folder under output) is made of letters, digits, "
            f"'-', '_' and '.', and does not start with '.'")
    require(0 <= config.seed < 2 ** 32, f'seed={config.seed} must lie between 0 and {2 ** 32 - 1}')
    check_device(config.device)
    require(config.eval_every >= 1, f'eval_every={config.eval_every} must be at least 1 (epochs)')
    require(config.log_every >= 1, f'log_every={config.log_every} must be at least 1 (optimizer steps)')


def _check_model(model: ModelConfig) -> None:
    require(model.drop_path_rate is None or 0 <= model.drop_path_rate < 1,
            f'model.drop_path_rate={model.drop_path_rate} must be 0 or more and below 1 (e.g. 0.1)')
    require('pretrained' not in model.kwargs, 'model.kwargs.pretrained is not allowed; set model.pretrained instead')
    require(model.drop_path_rate is None or 'drop_path_rate' not in model.kwargs,
            'model.kwargs.drop_path_rate and model.drop_path_rate are both set; keep model.drop_path_rate')
    if model.pretrained_file:
        path = Path(model.pretrained_file)
        require(path.exists(), f'model.pretrained_file={model.pretrained_file!r} does not exist')
        require(path.is_file(), f'model.pretrained_file={model.pretrained_file!r} is a folder; give the weights file '
                                f'(.safetensors, .pth)')
        require('pretrained_cfg_overlay' not in model.kwargs,
                'model.kwargs.pretrained_cfg_overlay and model.pretrained_file are both set; keep '
                'model.pretrained_file')


def _check_data(data: DataConfig) -> None:
    require(data.img_size is None or data.img_size >= 1, f'data.img_size={data.img_size} must be at least 1')
    require(data.val_batch_size is None or data.val_batch_size >= 1,
            f'data.val_batch_size={data.val_batch_size} must be at least 1 (or null: data.batch_size)')
    require_probability('data.hflip', data.hflip)
    require(data.color_jitter >= 0, f'data.color_jitter={data.color_jitter} must be 0 or more (0: no jitter)')
    for key in ('mean', 'std'):
        values = getattr(data, key)
        if values is None:
            continue
        require(len(values) in (1, 3), f'data.{key}={list(values)} must have 3 values (RGB) or 1 (grey)')
        low_ok = all(v > 0 for v in values) if key == 'std' else all(v >= 0 for v in values)
        require(low_ok and all(v <= 1 for v in values),
                f'data.{key}={list(values)} must lie {"in (0, 1]" if key == "std" else "between 0 and 1"}: images '
                f'are scaled to [0, 1] first (ImageNet: mean 0.485, 0.456, 0.406, std 0.229, 0.224, 0.225); divide '
                f'0-255 values by 255')
    for number, step in enumerate(data.albumentations, 1):
        require(isinstance(step, dict) and isinstance(step.get('name'), str) and bool(step['name']),
                f'data.albumentations step {number} ({step!r}) needs a name; write steps as '
                f'{{name: HorizontalFlip, p: 0.5}}')


def check_optim(optim: OptimConfig, key: str = 'optim') -> None:
    """Check an optim section (``key``: its name in the config); raises ``ConfigError`` with a one-line reason."""
    import timm.optim
    known = timm.optim.list_optimizers()
    name = optim.name.lower()
    base = name[len('lookahead_'):] if name.startswith('lookahead_') else name
    require(base in known, f'{key}.name={optim.name!r} is not a timm optimizer; {_closest(base, known)}')
    require(optim.lr > 0, f'{key}.lr={optim.lr} must be positive')
    require(optim.weight_decay >= 0, f'{key}.weight_decay={optim.weight_decay} must be 0 or more')
    require(0 <= optim.momentum < 1, f'{key}.momentum={optim.momentum} must be 0 or more and below 1 (e.g. 0.9)')
    require(optim.layer_decay is None or 0 < optim.layer_decay <= 1,
            f'{key}.layer_decay={optim.layer_decay} must lie in (0, 1] (e.g. 0.75), or be null (no layer decay)')
    require(optim.clip_grad is None or optim.clip_grad > 0,
            f'{key}.clip_grad={optim.clip_grad} must be positive, or null (no clipping)')
    for name in optim.kwargs:
        require(name not in _OPTIM_KEYS,
                f'{key}.kwargs.{name} is not allowed; set {key}.{_OPTIM_KEYS.get(name)} instead')
    try:  # the optimizer's own arguments (an optimizer that needs CUDA or a package cannot be inspected here)
        params = inspect.signature(timm.optim.get_optimizer_class(base, bind_defaults=False)).parameters
    except Exception:
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    factory = set(inspect.signature(timm.optim.create_optimizer_v2).parameters)
    arguments = [p for p in params if p != 'params']
    # create_optimizer_v2 takes its own options and drops eps / betas for optimizers without them
    bad = [name for name in optim.kwargs
           if name not in arguments and name not in factory and name not in ('eps', 'betas')]
    require(not bad, f'{key}.kwargs has {", ".join(bad)}, which optimizer {base} does not take; its arguments are: '
                     f'{", ".join(arguments)}; remove {"it" if len(bad) == 1 else "them"} from the config')


def _check_sched(sched: SchedConfig, optim: OptimConfig) -> None:
    require(sched.name in _TIMM_SCHEDULERS,
            f'sched.name={sched.name!r} is not a timm scheduler; {_closest(sched.name, _TIMM_SCHEDULERS)}')
    require(sched.name not in _UNSUPPORTED_SCHEDULERS,
            f'sched.name={sched.name!r} is not supported: the engine updates the schedule every optimizer step; '
            f'{_UNSUPPORTED_SCHEDULERS.get(sched.name)}')
    require(sched.warmup_epochs >= 0, f'sched.warmup_epochs={sched.warmup_epochs} must be 0 or more')
    require(sched.warmup_lr >= 0, f'sched.warmup_lr={sched.warmup_lr} must be 0 or more')
    require(sched.min_lr >= 0, f'sched.min_lr={sched.min_lr} must be 0 or more')
    require(sched.min_lr <= optim.lr, f'sched.min_lr={sched.min_lr} is larger than optim.lr={optim.lr}; the schedule '
                                      f'decays from optim.lr to sched.min_lr')
    require(sched.decay_rate > 0, f'sched.decay_rate={sched.decay_rate} must be positive')
    milestones = list(sched.decay_milestones)
    require(all(m >= 0 for m in milestones) and all(a < b for a, b in zip(milestones, milestones[1:])),
            f'sched.decay_milestones={milestones} must be 0 or more and increasing')


def check_common(config: TrainConfig) -> None:
    """Check the values of the keys every task shares; raises ``ConfigError`` with a one-line reason."""
    require(bool(config.model.name), 'model.name is missing; set it to a timm or densezoo model name')
    require(bool(config.data.root), 'data.root is missing; set it to the dataset folder')
    _check_run(config)
    _check_model(config.model)
    _check_data(config.data)
    check_optim(config.optim)
    _check_sched(config.sched, config.optim)
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
    require(config.keep_checkpoints >= 1, f'keep_checkpoints={config.keep_checkpoints} must be at least 1')
