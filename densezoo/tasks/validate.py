"""Evaluation of trained classification and segmentation models (what ``tools/validate.py`` runs).

``model_source`` names the model and its weights: a registered model with a weights file or timm's pretrained
weights, or a densezoo run / checkpoint folder, whose config gives the model, the classes and the evaluation
settings. ``prepare_classification`` / ``prepare_segmentation`` build the model and data and check that they fit
(every error before any compute); ``run_classification`` reports top-1 / top-5 / loss as timm's validate.py and
training do, ``run_segmentation`` mIoU / mAcc / aAcc and per-class IoU as training and mmseg do.

Design notes: docs/measuring.md.
"""
import contextlib
import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform, resolve_model_data_config
from torch import nn
from torch.utils.data import DataLoader

from densezoo.checkpoint_io import load_weights_file
from densezoo.config import ConfigError, TrainConfig, build_config, config_keys
from densezoo.datasets import ImageFolderDataset, build_transform, list_classes
from densezoo.datasets.check import check_segmentation
from densezoo.datasets.segmentation import SegmentationDataset, build_seg_pipeline, collate_segmentation
from densezoo.heads.segmentor import create_segmentor, load_segmentor_state
from densezoo.hub.load import create_with_weights, pretrained_classes, training_weights
from densezoo.hub.runs import LoadError, find_weights, verified
from densezoo.metrics.segmentation import confusion_matrix, segmentation_scores
from densezoo.registry import check_model_names
from densezoo.tasks.base import TASKS
from densezoo.tasks.classification import ClassificationTrainConfig, classification_scores, resolved_data_config
from densezoo.tasks.segmentation import SegTrainConfig, segmentation_loss, slide_inference
from densezoo.tasks.sr_eval import first_lines

__all__ = ['ValidateError', 'ModelSource', 'model_source', 'ClassificationSetup', 'ClassificationResult',
           'prepare_classification', 'run_classification', 'SegmentationSetup', 'SegmentationResult',
           'prepare_segmentation', 'run_segmentation', 'validate', 'VALIDATION_SPLITS', 'AMP_DTYPES']

#: the sub-folders of a data folder taken as its validation split, in this order (timm's names for it)
VALIDATION_SPLITS = ('val', 'validation')
AMP_DTYPES = {'float16': torch.float16, 'bfloat16': torch.bfloat16}
_RUN_AMP = {'fp16': 'float16', 'bf16': 'bfloat16'}


class ValidateError(ValueError):
    """Evaluation input that cannot be used; the message says which and why."""


# ----------------------------------------------------------------------------------------------------------------
@dataclass
class ModelSource:
    """What to evaluate: the registered model (the backbone, for segmentation) and where its weights come from."""
    name: str
    task: str  # 'classification' or 'seg'
    weights: Optional[Path]  # None: timm's pretrained weights
    densezoo: bool = False  # weights of a densezoo checkpoint folder (the model's state dict as it trained)
    config: Optional[TrainConfig] = None  # the run's config, when the weights belong to a run
    kwargs: Dict[str, Any] = field(default_factory=dict)  # timm.create_model arguments
    ema: bool = True


def _run_config(values: Dict[str, Any], where: str) -> TrainConfig:
    """The typed config of a run's ``config.yaml`` values (keys of other tasks, which older runs list, left out)."""
    task = values.get('task', TrainConfig.task) if isinstance(values, dict) else None
    if task not in TASKS:
        raise ValidateError(f'{where} has no known task in its config.yaml (task={task!r})')
    cls = TASKS[task].config_class
    own = set(config_keys(cls))
    elsewhere: Dict[str, List[str]] = {}
    for name, other in sorted(TASKS.items()):
        for key in config_keys(other.config_class):
            if key not in own:
                elsewhere.setdefault(key, []).append(name)
    try:
        return build_config(cls, values, task, elsewhere, drop_elsewhere=True)
    except ConfigError as err:
        raise ValidateError(f'the config.yaml of {where} cannot be read: {err}') from None


def model_source(model: str, checkpoint=None, pretrained: bool = False, task: Optional[str] = None,
                 ema: bool = True, model_kwargs: Optional[Dict[str, Any]] = None) -> ModelSource:
    """Resolve ``model`` (a registered model name, or a densezoo run / checkpoint folder) and ``checkpoint`` (a
    weights file, run or checkpoint folder) into a ``ModelSource``; nothing is built or loaded yet.

    ``task`` ('classification' or 'seg') defaults to the run's; EMA weights are used when a checkpoint has them,
    unless ``ema`` is False."""
    if task not in (None, 'classification', 'seg'):
        raise ValidateError(f"task {task!r} is not known; use 'classification' or 'seg'")
    path = Path(model)
    is_name = timm.models.is_model(str(model).split('.')[0])
    if not is_name and (path.exists() or '/' in str(model) or '\\' in str(model)):
        if checkpoint is not None:
            raise ValidateError(f'{model!r} is a run or checkpoint folder and --checkpoint {checkpoint} was given '
                                f'too; give one of them')
        if not path.exists():
            raise ValidateError(f'run folder {str(path)!r} does not exist')
        if path.is_file():
            raise ValidateError(f'{str(path)!r} is a weights file; give the model name first and the file with '
                                f'--checkpoint')
        checkpoint, name = path, None
    else:
        check_model_names([model])
        name = model
    if pretrained and checkpoint is not None:
        raise ValidateError('--pretrained cannot be combined with a checkpoint or run folder: give one source of '
                            'weights')
    if checkpoint is None and not pretrained:
        raise ValidateError(f'{name} needs weights: give --checkpoint FILE (or a densezoo run folder) or '
                            f'--pretrained (timm\'s weights); without them it would be evaluated with random weights')
    kwargs = dict(model_kwargs or {})
    if checkpoint is None:
        if task == 'seg':
            raise ValidateError('--task seg needs a segmentor checkpoint (--checkpoint); --pretrained gives a '
                                'backbone without a trained head')
        return ModelSource(name, 'classification', None, kwargs=kwargs, ema=ema)
    try:
        weights, in_run, values = verified(find_weights(checkpoint, ema))
    except LoadError as err:
        raise ValidateError(str(err)) from None
    config = None
    if values is not None:
        where = f'run {str(weights.parent.parent.parent)!r}'
        trained_task = values.get('task', TrainConfig.task) if isinstance(values, dict) else None
        if trained_task not in ('classification', 'seg'):
            hint = '; evaluate super-resolution runs with densezoo-eval-sr (tools/eval_sr.py)' \
                if trained_task == 'sr' else ''
            raise ValidateError(f'{where} is a run of task {trained_task}, which this tool does not evaluate '
                                f'(classification, seg){hint}')
        if task is not None and task != trained_task:
            raise ValidateError(f'{where} is a run of task {trained_task}, not {task}; leave out --task')
        config = _run_config(values, where)
        task = trained_task
        if name is not None and name != config.model.name:
            raise ValidateError(f'checkpoint {str(checkpoint)!r} was trained as {config.model.name!r}, not '
                                f'{name!r}')
        name = config.model.name
        kwargs = {**config.model.kwargs, **kwargs}
    elif name is None:
        raise ValidateError(f'checkpoint folder {str(checkpoint)!r} belongs to no run (no config.yaml above it); '
                            f'give the model name first and the folder with --checkpoint')
    return ModelSource(name, task or 'classification', weights, in_run, config, kwargs, ema)


# ----------------------------------------------------------------------------------------------------------------
def _load_error(source: ModelSource, err: Exception) -> ValidateError:
    return ValidateError(f'the weights in {str(source.weights)!r} do not fit {source.name} ({first_lines(err)}); '
                         f'check --model-kwargs')


def _create(source: ModelSource, **kwargs) -> nn.Module:
    try:
        return timm.create_model(source.name, **kwargs)
    except TypeError as err:  # an argument the model does not take
        raise ValidateError(f'{source.name}: {" ".join(str(err).split())}; check --model-kwargs') from None


def load_classifier(source: ModelSource) -> nn.Module:
    """The classification model of ``source`` with its weights, in eval mode."""
    kwargs = dict(source.kwargs)
    default_classes, offset = pretrained_classes(source.name)
    if source.weights is None:
        if kwargs.get('num_classes', default_classes) != default_classes:
            raise ValidateError(f'--pretrained weights of {source.name} have {default_classes} classes; with '
                                f'num_classes={kwargs["num_classes"]} timm would drop the trained classifier')
        try:
            model = _create(source, pretrained=True, **kwargs)
        except (RuntimeError, OSError) as err:  # no weights for the model, no network, ...
            raise ValidateError(f'timm cannot load the pretrained weights of {source.name} '
                                f'({first_lines(err, 1)})') from None
        return model.eval()
    try:
        state = training_weights(load_weights_file(source.weights), source.ema)
    except LoadError as err:
        raise ValidateError(str(err)) from None
    try:  # a densezoo checkpoint is the model's own state dict; others go through its checkpoint filter
        model = create_with_weights(source.name, state, kwargs, filtered=not source.densezoo)
    except TypeError as err:  # an argument the model does not take
        raise ValidateError(f'{source.name}: {" ".join(str(err).split())}; check --model-kwargs') from None
    except (RuntimeError, KeyError, AssertionError, ValueError) as err:  # keys or shapes that do not fit
        raise _load_error(source, err) from None
    return model.eval()


def load_segmentor(source: ModelSource, head: str = 'upernet', num_classes: Optional[int] = None,
                   head_kwargs: Optional[Dict[str, Any]] = None,
                   out_indices: Optional[Sequence[int]] = None) -> nn.Module:
    """The segmentor of ``source`` with its weights, in eval mode. A run's config gives the head and the classes; for
    a weights file (a segmentor state dict) ``head``, ``head_kwargs`` and ``out_indices`` say how it was built, and
    the number of classes and the auxiliary head are read from the weights."""
    state = load_weights_file(source.weights)
    for key in ('state_dict', 'model'):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    try:
        state = training_weights(state, source.ema)
    except LoadError as err:
        raise ValidateError(str(err)) from None
    if source.config is not None:
        model_cfg = source.config.model
        head, head_kwargs, out_indices = model_cfg.head, model_cfg.head_kwargs, model_cfg.out_indices
        aux_head, num_classes = model_cfg.aux_head, source.config.data.num_classes
    else:
        aux_head = any(key.startswith('auxiliary_head.') for key in state)
        weight = state.get('decode_head.conv_seg.weight')
        found = int(weight.shape[0]) if weight is not None else None
        if num_classes is not None and found is not None and num_classes != found:
            raise ValidateError(f'--num-classes {num_classes} does not match the weights in '
                                f'{str(source.weights)!r}, which have {found} classes')
        num_classes = num_classes or found
        if num_classes is None:
            raise ValidateError(f'the weights in {str(source.weights)!r} have no decode_head.conv_seg.weight, so '
                                f'their number of classes is unknown; give --num-classes (and check that they are '
                                f'a segmentor\'s)')
    try:
        model = create_segmentor(source.name, head=head, num_classes=num_classes, out_indices=out_indices,
                                 aux_head=aux_head, pretrained=False, head_kwargs=head_kwargs, **source.kwargs)
    except TypeError as err:
        raise ValidateError(f'{source.name} with head {head}: {" ".join(str(err).split())}; check --model-kwargs '
                            f'and --head-kwargs') from None
    try:
        load_segmentor_state(model, state)
    except RuntimeError as err:
        raise ValidateError(f'the weights in {str(source.weights)!r} do not fit {source.name} with head {head} '
                            f'({first_lines(err)}); check --head, --head-kwargs and --model-kwargs') from None
    return model.eval()


# ----------------------------------------------------------------------------------------------------------------
def _autocast(device: torch.device, amp: Optional[str]) -> Callable:
    if not amp:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def _amp(source: ModelSource, amp: Optional[str]) -> Optional[str]:
    """``amp`` ('float16', 'bfloat16', 'off' or None: the run's setting, else off) as a dtype name or None."""
    if amp is None:
        return _RUN_AMP.get(source.config.amp) if source.config is not None and source.config.amp else None
    if amp == 'off':
        return None
    if amp not in AMP_DTYPES:
        raise ValidateError(f"amp {amp!r} is not known; use 'float16', 'bfloat16' or 'off'")
    return amp


def _split_folder(data, names: Sequence[str]) -> Path:
    """``data``, or its validation sub-folder (the first of ``names`` that exists)."""
    data = Path(data)
    if not data.is_dir():
        raise ValidateError(f'data folder {str(data)!r} does not exist')
    for name in names:
        if name and (data / name).is_dir():
            return data / name
    return data


def _default_data(source: ModelSource) -> Path:
    if source.config is None:
        raise ValidateError('give the data folder with --data (only a run folder brings its own)')
    return Path(source.config.data.root)


@dataclass
class ClassificationSetup:
    """A classification model and the validation data it is evaluated on, checked against each other."""
    source: ModelSource
    model: nn.Module
    dataset: ImageFolderDataset
    classes: List[str]  # class index -> folder name
    class_order: str  # where ``classes`` comes from
    data_config: Dict[str, Any]  # input_size, interpolation, mean, std, crop_pct, crop_mode
    batch_size: int
    amp: Optional[str]


def _read_class_map(path) -> List[str]:
    path = Path(path)
    if not path.is_file():
        raise ValidateError(f'class map {str(path)!r} does not exist')
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names or len(set(names)) != len(names):
        raise ValidateError(f'class map {str(path)!r} must list class folder names, one per line, each once')
    return names


def prepare_classification(source: ModelSource, data=None, batch_size: Optional[int] = None,
                           img_size: Optional[int] = None, crop_pct: Optional[float] = None,
                           interpolation: Optional[str] = None, class_map=None,
                           amp: Optional[str] = None) -> ClassificationSetup:
    """Build the model and the validation set of ``data`` (an ImageNet-style folder of class sub-folders, or a
    folder holding one as ``val/`` or ``validation/``) and check that they fit.

    Class indices: a run's training class folders, sorted (as training numbered them); else ``class_map`` (one folder
    name per line, in index order); else the data's class folder names, sorted. The eval transform: a run's (its
    ``data`` settings), else timm's ``resolve_model_data_config`` (test size) and ``create_transform``;
    ``img_size``, ``crop_pct`` and ``interpolation`` override either."""
    config: Optional[ClassificationTrainConfig] = source.config
    split_names = ((config.data.val_split,) if config else ()) + VALIDATION_SPLITS
    folder = _split_folder(data if data is not None else _default_data(source), split_names)
    found = list_classes(folder)  # DataError: no class folders, or one without images
    run_classes, class_order = None, ''
    if config is not None:
        train = Path(config.data.root) / config.data.train_split
        if train.is_dir():
            run_classes = sorted(p.name for p in train.iterdir() if p.is_dir())
            class_order = f"the run's training classes, from {train}"
    if class_map is not None:
        names, class_order = _read_class_map(class_map), f'class map {class_map}'
    elif run_classes is not None:
        names = run_classes
    else:
        names, class_order = sorted(found), f'the class folders of {folder}, sorted'
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise ValidateError(f'class folder {str(folder / unknown[0])!r} is not one of the {len(names)} classes of '
                            f'{class_order}')

    def check_classes(classes: Optional[int]) -> None:
        if classes != len(names):
            raise ValidateError(f'{source.name} has {classes} classes but the data has {len(names)} classes '
                                f'({class_order}); evaluate a model trained on these classes'
                                f'{"" if source.config else " (or give --class-map)"}')

    if source.weights is None:  # timm's weights: checked before they are downloaded
        check_classes(source.kwargs.get('num_classes', pretrained_classes(source.name)[0]))
    model = load_classifier(source)
    check_classes(getattr(model, 'num_classes', None))
    if img_size is None and source.config is None and isinstance(source.kwargs.get('img_size'), int):
        img_size = source.kwargs['img_size']  # a model built for another size is evaluated at it
    overrides = dict(img_size=img_size, crop_pct=crop_pct, interpolation=interpolation)
    if config is not None:
        data_config = resolved_data_config(config.data, model)
        if img_size:
            data_config['input_size'] = (data_config['input_size'][0], img_size, img_size)
        data_config.update({k: v for k, v in overrides.items() if v is not None and k != 'img_size'})
        transform = build_transform(config.data, data_config, training=False)
        batch_size = batch_size or config.data.val_batch_size or config.data.batch_size
    else:
        data_config = resolve_model_data_config(model, args={k: v for k, v in overrides.items() if v is not None},
                                                use_test_size=True)
        transform = create_transform(**data_config, is_training=False)
        batch_size = batch_size or 256
    dataset = ImageFolderDataset(folder, transform, class_to_idx={n: i for i, n in enumerate(names)},
                                 corrupt='error', classes=found, seed=config.seed if config else 0)
    return ClassificationSetup(source, model, dataset, names, class_order, data_config, batch_size, _amp(source, amp))


@dataclass
class ClassificationResult:
    """Top-1 / top-5 accuracy (%), mean cross-entropy and throughput of one model on one validation folder."""
    model: str
    checkpoint: Optional[str]
    data: str
    images: int
    num_classes: int
    topk: int  # the k of "top-5": 5, or the number of classes when there are fewer
    top1: float
    top5: float
    loss: float
    param_count: int
    data_config: Dict[str, Any]
    batch_size: int
    device: str
    amp: Optional[str]
    seconds: float  # the evaluation loop (loading included), after one warm-up batch

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.

    def summary(self) -> str:
        """timm's validate.py summary line."""
        return (f' * Acc@1 {self.top1:.3f} ({100 - self.top1:.3f}) Acc@{self.topk} {self.top5:.3f} '
                f'({100 - self.top5:.3f})')

    def to_dict(self) -> Dict[str, Any]:
        """timm's validate.py result (rounded as it rounds) and the rest of the measurement."""
        cfg = self.data_config
        return dict(model=self.model, top1=round(self.top1, 4), top1_err=round(100 - self.top1, 4),
                    top5=round(self.top5, 4), top5_err=round(100 - self.top5, 4),
                    param_count=round(self.param_count / 1e6, 2), img_size=cfg['input_size'][-1],
                    crop_pct=cfg['crop_pct'], interpolation=cfg['interpolation'], loss=self.loss, topk=self.topk,
                    images=self.images, num_classes=self.num_classes, images_per_s=round(self.images_per_s, 2),
                    checkpoint=self.checkpoint, data=self.data, batch_size=self.batch_size, device=self.device,
                    amp=self.amp, crop_mode=cfg.get('crop_mode', 'center'), mean=list(cfg['mean']),
                    std=list(cfg['std']))


def _on(iterable, progress: bool, desc: str, total: int):
    if not progress:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


def _checked_forward(name: str, model: nn.Module, inputs: torch.Tensor, autocast) -> None:
    """One forward pass of ``inputs`` (timm's warm-up batch): a model that cannot take this input size fails here,
    in one line, before the data is read."""
    try:
        with torch.no_grad(), autocast():
            model(inputs)
    except (RuntimeError, AssertionError, ValueError) as err:
        size = 'x'.join(map(str, inputs.shape[1:]))
        raise ValidateError(f'{name} cannot take {size} inputs ({first_lines(err, 1)}); check --img-size '
                            f'(or --crop-size) and --model-kwargs') from None


def run_classification(setup: ClassificationSetup, device='cpu', workers: int = 0,
                       progress: bool = False) -> ClassificationResult:
    """Evaluate ``setup``: the metrics the classification task computes in training (top-k capped at the number of
    classes, mean cross-entropy without label smoothing), over every image once, in folder order."""
    device = torch.device(device)
    model = setup.model.to(device)
    config = setup.source.config or ClassificationTrainConfig()
    if setup.source.config is not None and config.model.channels_last:
        model.to(memory_format=torch.channels_last)
    autocast = _autocast(device, setup.amp)
    warmup = torch.randn((min(setup.batch_size, len(setup.dataset)), *setup.data_config['input_size']),
                         device=device)
    _checked_forward(setup.source.name, model, warmup, autocast)
    loader = DataLoader(setup.dataset, batch_size=setup.batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == 'cuda')
    start = time.perf_counter()
    metrics = classification_scores(model, _on(loader, progress, 'validate', len(loader)), device, autocast,
                                    len(setup.classes))
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return ClassificationResult(
        model=setup.source.name, checkpoint=str(setup.source.weights) if setup.source.weights else None,
        data=str(setup.dataset.folder), images=metrics['count'], num_classes=len(setup.classes),
        topk=min(5, len(setup.classes)), top1=metrics['top1'], top5=metrics['top5'], loss=metrics['loss'],
        param_count=sum(p.numel() for p in model.parameters()), data_config=setup.data_config,
        batch_size=setup.batch_size, device=str(device), amp=setup.amp, seconds=seconds)


# ----------------------------------------------------------------------------------------------------------------
def _pair(value: Union[None, int, Sequence[int]], what: str) -> Optional[Tuple[int, int]]:
    if value is None:
        return None
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) == 1:
        pair = (pair[0], pair[0])
    if len(pair) != 2 or min(pair) < 1:
        raise ValidateError(f'{what} {" ".join(map(str, pair))} must be one or two positive sizes (H W)')
    return int(pair[0]), int(pair[1])


@dataclass
class SegmentationSetup:
    """A segmentor and the validation split it is evaluated on, checked against each other."""
    source: ModelSource
    model: nn.Module
    dataset: SegmentationDataset
    root: Path
    split: str
    num_classes: int
    mode: str  # 'whole' or 'slide'
    crop_size: Optional[Tuple[int, int]]
    stride: Optional[Tuple[int, int]]
    amp: Optional[str]


def _seg_split(root: Path, split: Optional[str], config: Optional[SegTrainConfig]) -> str:
    if split is not None:
        return split
    for name in ((config.data.val_split,) if config else ()) + ('validation', 'val'):
        if (root / 'images' / name).is_dir():
            return name
    raise ValidateError(f'segmentation folder {str(root)!r} has no images/validation or images/val folder; '
                        f'expected {root.name}/images/<split> and {root.name}/annotations/<split> (ADE20K layout), '
                        f'or give --split')


def prepare_segmentation(source: ModelSource, data=None, split: Optional[str] = None, mode: Optional[str] = None,
                         crop_size=None, stride=None, num_classes: Optional[int] = None, head: Optional[str] = None,
                         head_kwargs: Optional[Dict[str, Any]] = None, out_indices: Optional[Sequence[int]] = None,
                         resize_short: Optional[int] = None, reduce_zero_label: Optional[bool] = None,
                         amp: Optional[str] = None) -> SegmentationSetup:
    """Build the segmentor and the validation split of ``data`` (``images/<split>`` and ``annotations/<split>``) and
    check that they fit: label maps hold classes of the model or 255 (ignored).

    A run's config gives the head, classes, normalisation, ``resize_short``, ``reduce_zero_label`` and the
    sliding-window settings; the arguments override them. ``mode`` 'slide' takes windows of ``crop_size`` (H, W)
    every ``stride`` (default: two thirds of the window, as training). ``num_classes``, ``head`` (default upernet),
    ``head_kwargs`` and ``out_indices`` describe a weights file's segmentor; a run's config gives them."""
    config: Optional[SegTrainConfig] = source.config
    if config is not None:
        given = [flag for flag, value in (('--num-classes', num_classes), ('--head', head),
                                          ('--head-kwargs', head_kwargs), ('--out-indices', out_indices)) if value]
        if given:
            raise ValidateError(f'{given[0]} describes the segmentor of a weights file; a run\'s config gives it '
                                f'(leave it out)')
    root = Path(data) if data is not None else _default_data(source)
    if not root.is_dir():
        raise ValidateError(f'data folder {str(root)!r} does not exist')
    split = _seg_split(root, split, config)
    if mode not in (None, 'whole', 'slide'):
        raise ValidateError(f"mode {mode!r} is not known; use 'whole' or 'slide'")
    crop_size, stride = _pair(crop_size, '--crop-size'), _pair(stride, '--stride')
    window = config.data.val_slide_window if config else None
    if crop_size is None and window:
        crop_size = (window, window)
        if stride is None and config.data.val_slide_stride:
            stride = (config.data.val_slide_stride,) * 2
    mode = mode or ('slide' if window or crop_size else 'whole')
    if mode == 'slide':
        if crop_size is None:
            raise ValidateError('--mode slide needs --crop-size H W (the window)')
        stride = stride or tuple(max(side * 2 // 3, 1) for side in crop_size)
        if stride[0] > crop_size[0] or stride[1] > crop_size[1]:
            raise ValidateError(f'--stride {stride[0]} {stride[1]} is larger than --crop-size {crop_size[0]} '
                                f'{crop_size[1]}; pixels between windows would get no logits')
    else:
        crop_size = stride = None
    model = load_segmentor(source, head or 'upernet', num_classes, head_kwargs, out_indices)
    classes = model.num_classes
    pretrained = getattr(model.backbone.model, 'pretrained_cfg', None) or {}
    mean = (config.data.mean if config else None) or pretrained.get('mean', IMAGENET_DEFAULT_MEAN)
    std = (config.data.std if config else None) or pretrained.get('std', IMAGENET_DEFAULT_STD)
    if resize_short is None and config is not None:
        resize_short = config.data.resize_short
    if reduce_zero_label is None:
        reduce_zero_label = config.data.reduce_zero_label if config else False
    pipeline = build_seg_pipeline(False, None, resize_short, mean=mean, std=std)
    dataset = SegmentationDataset(root, split, pipeline, training=False, reduce_zero_label=reduce_zero_label,
                                  seed=config.seed if config else 0)
    empty = copy.copy(dataset)
    empty.samples = []
    check_segmentation(empty, dataset, classes, corrupt='error', log=False)  # files, label modes, sizes, values
    return SegmentationSetup(source, model, dataset, root, split, classes, mode, crop_size, stride, _amp(source, amp))


@dataclass
class SegmentationResult:
    """mIoU, mAcc, aAcc (%), per-class IoU and accuracy, and the mean loss of one segmentor on one split."""
    model: str
    checkpoint: Optional[str]
    data: str
    split: str
    images: int
    num_classes: int
    mIoU: float
    mAcc: float
    aAcc: float
    loss: float  # pixel-wise cross entropy of the decode head (ignored pixels left out), mean over images
    iou: List[Optional[float]]  # per class; None for a class in neither the labels nor the predictions
    acc: List[Optional[float]]  # per class; None for a class absent from the labels
    mode: str
    crop_size: Optional[Tuple[int, int]]
    stride: Optional[Tuple[int, int]]
    param_count: int
    device: str
    amp: Optional[str]
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.

    def summary(self) -> str:
        return f' * mIoU {self.mIoU:.2f} mAcc {self.mAcc:.2f} aAcc {self.aAcc:.2f}'

    def to_dict(self) -> Dict[str, Any]:
        return dict(model=self.model, mIoU=self.mIoU, mAcc=self.mAcc, aAcc=self.aAcc, loss=self.loss,
                    per_class=[dict(index=i, IoU=iou, Acc=acc) for i, (iou, acc) in enumerate(zip(self.iou, self.acc))],
                    images=self.images, num_classes=self.num_classes, mode=self.mode,
                    crop_size=list(self.crop_size) if self.crop_size else None,
                    stride=list(self.stride) if self.stride else None, param_count=round(self.param_count / 1e6, 2),
                    images_per_s=round(self.images_per_s, 2), checkpoint=self.checkpoint, data=self.data,
                    split=self.split, device=self.device, amp=self.amp)


def _per_class(matrix: torch.Tensor) -> Tuple[List[Optional[float]], List[Optional[float]]]:
    matrix = matrix.double()
    true_pos, labelled = matrix.diag(), matrix.sum(1)
    union = labelled + matrix.sum(0) - true_pos
    iou = [100 * t / u if u > 0 else None for t, u in zip(true_pos.tolist(), union.tolist())]
    acc = [100 * t / n if n > 0 else None for t, n in zip(true_pos.tolist(), labelled.tolist())]
    return iou, acc


def run_segmentation(setup: SegmentationSetup, device='cpu', workers: int = 0,
                     progress: bool = False) -> SegmentationResult:
    """Evaluate ``setup`` as the segmentation task validates in training: each image whole or in sliding windows,
    logits resized to the label map, one confusion matrix over all non-ignored pixels."""
    device = torch.device(device)
    model = setup.model.to(device)
    if setup.source.config is not None and setup.source.config.model.channels_last:
        model.to(memory_format=torch.channels_last)
    autocast = _autocast(device, setup.amp)
    classes = setup.num_classes

    def predict(image: torch.Tensor) -> torch.Tensor:
        if setup.mode == 'slide':
            return slide_inference(model, image, classes, setup.crop_size, setup.stride)
        return model(image)

    loader = DataLoader(setup.dataset, batch_size=1, shuffle=False, num_workers=workers,
                        collate_fn=collate_segmentation, pin_memory=device.type == 'cuda')
    matrix = torch.zeros(classes, classes, dtype=torch.int64, device=device)
    loss, count = 0., 0
    start = time.perf_counter()
    with torch.no_grad():
        for images, labels in _on(loader, progress, 'validate', len(loader)):
            for image, label in zip(images, labels):
                image, label = image[None].to(device), label[None].to(device)
                try:
                    with autocast():
                        logits = predict(image)
                except (RuntimeError, AssertionError) as err:
                    name = setup.dataset.name(count)
                    raise ValidateError(f'{setup.source.name} fails on image {name!r} '
                                        f'({first_lines(err, 1)}); check --crop-size and --model-kwargs') from None
                logits = F.interpolate(logits.float(), size=label.shape[-2:], mode='bilinear', align_corners=False)
                loss += segmentation_loss(logits, label).item()
                matrix += confusion_matrix(logits.argmax(1), label, classes)
                count += 1
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    matrix = matrix.cpu()
    scores = segmentation_scores(matrix)
    iou, acc = _per_class(matrix)
    return SegmentationResult(
        model=setup.source.name, checkpoint=str(setup.source.weights), data=str(setup.root), split=setup.split,
        images=count, num_classes=classes, mIoU=scores['mIoU'], mAcc=scores['mAcc'], aAcc=scores['aAcc'],
        loss=loss / max(count, 1), iou=iou, acc=acc, mode=setup.mode, crop_size=setup.crop_size,
        stride=setup.stride, param_count=sum(p.numel() for p in model.parameters()), device=str(device),
        amp=setup.amp, seconds=seconds)


# ----------------------------------------------------------------------------------------------------------------
def validate(model: str, data=None, checkpoint=None, pretrained: bool = False, task: Optional[str] = None,
             ema: bool = True, model_kwargs: Optional[Dict[str, Any]] = None, device='cpu', workers: int = 0,
             progress: bool = False, **options) -> Union[ClassificationResult, SegmentationResult]:
    """``model_source``, ``prepare_*`` and ``run_*`` in one call; ``options`` go to ``prepare_classification`` or
    ``prepare_segmentation`` (by the task)."""
    source = model_source(model, checkpoint, pretrained, task, ema, model_kwargs)
    if source.task == 'seg':
        return run_segmentation(prepare_segmentation(source, data, **options), device, workers, progress)
    return run_classification(prepare_classification(source, data, **options), device, workers, progress)
