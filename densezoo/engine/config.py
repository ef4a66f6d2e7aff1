"""Training configs: typed sections loaded from YAML, overridden with ``key=value`` pairs, checked up front.

Every key is declared below with its type and default. An unknown key is an error that names the closest valid key;
a value of the wrong type is an error that names the key, the value and the expected type.
"""
import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

__all__ = ['ConfigError', 'ModelConfig', 'DataConfig', 'OptimConfig', 'SchedConfig', 'TrainConfig', 'load_config',
           'read_config_values', 'config_from_dict', 'config_to_dict', 'apply_overrides']


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
    # segmentation (task: seg): the backbone `name` (features_only) + a decode head
    head: str = 'upernet'  # 'upernet', 'fpn', 'segformer' or 'dpt'
    head_kwargs: Dict[str, Any] = field(default_factory=dict)  # e.g. {channels: 512}
    out_indices: Optional[Tuple[int, ...]] = None  # feature maps of the backbone; default: chosen by the head
    aux_head: bool = False  # mmseg's auxiliary FCN head on the stride-16 map (loss weight 0.4)


@dataclass
class DataConfig:
    """Where the images are and how they are augmented."""
    root: str = ''
    train_split: str = 'train'
    val_split: str = 'val'
    img_size: Optional[int] = None  # default: the model's pretrained cfg
    batch_size: int = 64
    val_batch_size: Optional[int] = None
    workers: int = 2
    pipeline: str = 'timm'  # 'timm' or 'albumentations'
    albumentations: List[Dict[str, Any]] = field(default_factory=list)  # [{name: HorizontalFlip, p: 0.5}, ...]
    scale: Tuple[float, float] = (0.08, 1.0)
    ratio: Tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    color_jitter: float = 0.4
    auto_augment: Optional[str] = None  # e.g. 'rand-m9-mstd0.5-inc1' (RandAugment)
    re_prob: float = 0.0  # random erasing
    interpolation: Optional[str] = None
    crop_pct: Optional[float] = None
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = 'batch'
    label_smoothing: float = 0.1
    corrupt_images: str = 'skip'  # 'skip' (warn, naming the file) or 'error'
    verify_images: bool = False  # open every image once before training
    # super-resolution (task: sr): images in <root>/<split>/<hr_dir>, inputs in <root>/<split>/<lr_dir>
    hr_dir: str = 'HR'
    lr_dir: Optional[str] = None  # e.g. 'LR_bicubic/X{scale}'; null: made from HR by `degradation`
    upscale: Optional[int] = None  # default: the model's `upscale`
    lr_patch: int = 48  # training crop, in LR pixels (HR crop: lr_patch * upscale)
    repeat: int = 1  # sr: passes over the training images per epoch (few large images: many crops per epoch)
    degradation: str = 'bicubic'  # 'bicubic' (MATLAB imresize), 'noise' or 'jpeg' (the last two for upscale 1)
    noise_sigma: float = 25.0  # Gaussian noise of degradation 'noise', on the 0..255 scale
    jpeg_quality: int = 40  # quality of degradation 'jpeg'
    rot90: bool = True  # random vertical flips and transposes (with hflip: all 8 symmetries)
    channels: Optional[int] = None  # 3 or 1; default: the model's `in_chans`
    grey: str = 'L'  # channels 1: 'L' (PIL luma) or 'Y' (MATLAB rgb2ycbcr Y)
    val_y_channel: Optional[bool] = None  # PSNR / SSIM on Y; default: yes for upscale > 1, RGB for upscale 1
    val_crop_border: Optional[int] = None  # pixels cut from each border before scoring; default: upscale
    # segmentation (task: seg): <root>/images/<split>/* with label maps <root>/annotations/<split>/*.png
    num_classes: Optional[int] = None  # required for task seg (label 255 is ignored)
    resize_short: Optional[int] = None  # short side before random scaling / for evaluation; null: keep
    ratio_range: Tuple[float, float] = (0.5, 2.0)  # random scale of the training images (crop size: img_size)
    reduce_zero_label: bool = False  # label 0 -> 255 (ignored), others - 1 (ADE20K's 150 classes)
    val_slide_window: Optional[int] = None  # evaluate with sliding windows of this side (mmseg's slide mode)
    val_slide_stride: Optional[int] = None  # their stride (default: two thirds of the window, as mmseg's 512 / 341)


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
    """A whole training run."""
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
    loss: Optional[str] = None  # sr: 'l1' (default), 'charbonnier' or 'mse'; classification: set by data options
    charbonnier_eps: float = 1e-3
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


def _build(cls, values: Dict[str, Any], prefix: str):
    if not isinstance(values, dict):
        raise ConfigError(f'{prefix.rstrip(".") or "the config"} must be a mapping, got {values!r}')
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            known = [prefix + name for name in fields]
            close = difflib.get_close_matches(prefix + str(key), known, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f'; valid keys: {", ".join(known)}'
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value or {}, f'{prefix}{key}.')
        else:
            kwargs[key] = _coerce(prefix + key, value, tp)
    return cls(**kwargs)


def config_from_dict(values: Dict[str, Any]) -> TrainConfig:
    """Build and check a ``TrainConfig`` from plain values; raises ``ConfigError``."""
    config = _build(TrainConfig, values, '')
    _check(config)
    return config


def config_to_dict(config: TrainConfig) -> Dict[str, Any]:
    """Plain (YAML-safe) values of a config."""
    def plain(value):
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    return plain(dataclasses.asdict(config))


def _parse_value(text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(values: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        key, sep, text = item.partition('=')
        if not sep or not key:
            raise ConfigError(f'override {item!r} is not of the form key=value (e.g. optim.lr=3e-4)')
        target = values
        parts = key.split('.')
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f'override {item!r}: {part} is not a section')
        target[parts[-1]] = _parse_value(text)
    return values


#: key naming the config files a config builds on (paths relative to its own folder), as in mmengine's configs
BASE_KEY = '_base_'
#: key that, set to true in a mapping, replaces the base's mapping instead of updating it key by key
DELETE_KEY = '_delete_'


def _merge(base: Dict[str, Any], update: Dict[str, Any]) -> Dict[str, Any]:
    """``base`` updated by ``update``: mappings merge key by key (unless ``update``'s has ``_delete_: true``),
    anything else is replaced."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and value.get(DELETE_KEY):
            merged[key] = {k: v for k, v in value.items() if k != DELETE_KEY}
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_config_values(path, _including: Tuple[Path, ...] = ()) -> Dict[str, Any]:
    """The values of a YAML config file with its ``_base_`` files (one name or a list, read relative to the file's
    folder, earlier ones first) merged under it; raises ``ConfigError`` with a one-line reason."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'config file {str(path)!r} does not exist')
    if path.resolve() in _including:
        chain = ' -> '.join(str(p) for p in (*_including, path.resolve()))
        raise ConfigError(f'config file {str(path)!r} includes itself through {BASE_KEY}: {chain}')
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0]
        raise ConfigError(f'config file {str(path)!r} is not valid YAML: {first}') from None
    if not isinstance(values, dict):
        raise ConfigError(f'config file {str(path)!r} must hold a mapping of sections, got {type(values).__name__}')
    bases = values.pop(BASE_KEY, [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(base, str) and base for base in bases):
        raise ConfigError(f'{BASE_KEY} in config file {str(path)!r} must be a file name or a list of file names, '
                          f'got {bases!r}')
    merged: Dict[str, Any] = {}
    for base in bases:
        if not (path.parent / base).is_file():
            raise ConfigError(f'{BASE_KEY} file {base!r} of config file {str(path)!r} does not exist (it is read '
                              f'relative to {str(path.parent)!r})')
        merged = _merge(merged, read_config_values(path.parent / base, (*_including, path.resolve())))
    return _merge(merged, values)


def load_config(path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config file (with its ``_base_`` files), apply overrides and check it; raises ``ConfigError``
    with a one-line reason."""
    path = Path(path)
    config = config_from_dict(apply_overrides(read_config_values(path), overrides))
    if not config.name:
        config.name = path.stem
    return config


def _check(config: TrainConfig) -> None:
    def require(ok: bool, message: str):
        if not ok:
            raise ConfigError(message)

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
    require(config.data.pipeline in ('timm', 'albumentations'),
            f"data.pipeline={config.data.pipeline!r} is not allowed; use 'timm' or 'albumentations'")
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
    if config.task == 'sr':
        _check_sr(config, require)
    elif config.task == 'seg':
        _check_seg(config, require)
    else:
        require(config.loss is None, f"loss={config.loss!r} is only used by task sr; {config.task}'s loss follows "
                                     f"data.label_smoothing, data.mixup and data.cutmix")


def _check_sr(config: TrainConfig, require) -> None:
    data = config.data
    require(config.loss in (None, 'l1', 'charbonnier', 'mse'),
            f"loss={config.loss!r} is not allowed; use l1, charbonnier or mse")
    require(config.charbonnier_eps > 0, f'charbonnier_eps={config.charbonnier_eps} must be positive')
    require(data.degradation in ('bicubic', 'noise', 'jpeg'),
            f"data.degradation={data.degradation!r} is not allowed; use bicubic, noise or jpeg")
    require(data.upscale is None or data.upscale >= 1, f'data.upscale={data.upscale} must be at least 1')
    require(data.lr_patch >= 1, f'data.lr_patch={data.lr_patch} must be at least 1')
    require(data.repeat >= 1, f'data.repeat={data.repeat} must be at least 1')
    require(data.channels in (None, 1, 3), f'data.channels={data.channels} is not allowed; use 3, 1 or null')
    require(data.grey in ('L', 'Y'), f"data.grey={data.grey!r} is not allowed; use 'L' or 'Y'")
    require(1 <= data.jpeg_quality <= 100, f'data.jpeg_quality={data.jpeg_quality} must lie between 1 and 100')
    require(data.noise_sigma >= 0, f'data.noise_sigma={data.noise_sigma} must be 0 or more')
    require(data.val_crop_border is None or data.val_crop_border >= 0,
            f'data.val_crop_border={data.val_crop_border} must be 0 or more')


def _check_seg(config: TrainConfig, require) -> None:
    data, model = config.data, config.model
    require(config.loss is None, f"loss={config.loss!r} is not used by task seg (pixel-wise cross entropy)")
    require(data.num_classes is not None and data.num_classes >= 1,
            f'data.num_classes={data.num_classes} is not allowed; task seg needs the number of classes (e.g. 150)')
    require(model.head in ('upernet', 'fpn', 'segformer', 'dpt'),
            f"model.head={model.head!r} is not allowed; use upernet, fpn, segformer or dpt")
    require(data.img_size is None or data.img_size >= 1, f'data.img_size={data.img_size} must be at least 1')
    require(data.resize_short is None or data.resize_short >= 1,
            f'data.resize_short={data.resize_short} must be at least 1')
    require(0 < data.ratio_range[0] <= data.ratio_range[1],
            f'data.ratio_range={list(data.ratio_range)} must be two positive numbers, low <= high')
    window, stride = data.val_slide_window, data.val_slide_stride
    require(window is None or window >= 1, f'data.val_slide_window={window} must be at least 1 (or null)')
    require(stride is None or (window is not None and 1 <= stride <= window),
            f'data.val_slide_stride={stride} needs data.val_slide_window and must lie in [1, window]')
