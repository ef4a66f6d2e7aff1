"""Image classification: timm models, image-folder data, mixup / cutmix, label smoothing, top-1 / top-5."""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import Mixup, resolve_data_config
from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform
from timm.data.transforms import str_to_interp_mode
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models import get_pretrained_cfg
from torch import nn

from densezoo.checkpoint_io import load_weights_file
from densezoo.config import ConfigError, DataConfig, TrainConfig, require, require_pair, require_probability
from densezoo.datasets import ImageFolderDataset, build_transform, list_classes
from densezoo.datasets.check import check_image_folders
from densezoo.distributed import all_reduce_sums
from densezoo.hub.runs import classifier_rows
from densezoo.tasks.base import Task, register_task

__all__ = ['ClassificationTask', 'ClassificationDataConfig', 'ClassificationTrainConfig', 'classification_scores',
           'resolved_data_config']


@dataclass
class ClassificationDataConfig(DataConfig):
    """The data section of ``task: classification``: transforms, mixup / cutmix and label smoothing."""
    pipeline: str = 'timm'  # 'timm' or 'albumentations'
    scale: Tuple[float, float] = (0.08, 1.0)
    ratio: Tuple[float, float] = (3 / 4, 4 / 3)
    auto_augment: Optional[str] = None  # e.g. 'rand-m9-mstd0.5-inc1' (RandAugment)
    re_prob: float = 0.0  # random erasing
    interpolation: Optional[str] = None
    crop_pct: Optional[float] = None
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = 'batch'
    label_smoothing: float = 0.1


@dataclass
class ClassificationTrainConfig(TrainConfig):
    """A classification run; its loss follows data.label_smoothing, data.mixup and data.cutmix."""
    data: ClassificationDataConfig = field(default_factory=ClassificationDataConfig)


def _classifier_rows(path, model_name: str) -> Optional[int]:
    """The number of rows of the classifier weight (named by the model's pretrained cfg) in weights file ``path``;
    None without one."""
    state = load_weights_file(path)
    for key in ('state_dict', 'model'):
        if isinstance(state.get(key), dict):
            state = state[key]
    return classifier_rows(getattr(get_pretrained_cfg(model_name), 'classifier', None), state)


def _timm_interpolation(name: str) -> bool:
    try:
        str_to_interp_mode(name)
    except KeyError:
        return False
    return True


#: data.interpolation values: PIL's resampling filters that timm's transforms take
INTERPOLATIONS = tuple(name for name in (mode.name.lower() for mode in Image.Resampling) if _timm_interpolation(name))
#: data.mixup_mode values: how timm's Mixup draws its mixing factors (per batch, per pair, per element)
MIXUP_MODES = ('batch', 'pair', 'elem')


def _check_auto_augment(policy: str) -> None:
    """Parse ``policy`` as timm's training transform does; raises ``ConfigError`` if timm cannot."""
    hparams = dict(translate_const=100, img_mean=(124, 116, 104))
    make = rand_augment_transform if policy.startswith('rand') else \
        augment_and_mix_transform if policy.startswith('augmix') else auto_augment_transform
    try:
        make(policy, hparams)
    except (AssertionError, ValueError, KeyError, IndexError) as err:
        reason = f' ({" ".join(str(err).split())})' if str(err) else ''
        raise ConfigError(f'data.auto_augment={policy!r} is not a timm augmentation policy{reason}; use e.g. '
                          f"'rand-m9-mstd0.5-inc1', 'augmix-m5-w4-d2', 'original' or 'v0'") from None


def resolved_data_config(data, model: nn.Module) -> Dict:
    """timm's data settings of ``model`` with the overrides of a config's ``data`` section."""
    resolved = resolve_data_config(model=model)
    if data.img_size:
        resolved['input_size'] = (resolved['input_size'][0], data.img_size, data.img_size)
    for key in ('interpolation', 'crop_pct', 'mean', 'std'):
        if getattr(data, key) is not None:
            resolved[key] = getattr(data, key)
    return resolved


@torch.no_grad()
def classification_scores(model: nn.Module, loader, device: torch.device, autocast, num_classes: int,
                          dist=None) -> Dict[str, float]:
    """Mean cross-entropy, top-1 and top-k (k = 5, capped at ``num_classes``) in percent over ``loader``, summed
    over the processes of ``dist``: what training validates with and ``tools/validate.py`` reports."""
    sums = dict(loss=0., top1=0., top5=0., count=0.)
    k = min(5, num_classes)
    for inputs, targets in loader:
        inputs, targets = inputs.to(device), targets.to(device)
        with autocast():
            logits = model(inputs)
        logits = logits.float()
        sums['loss'] += F.cross_entropy(logits, targets, reduction='sum').item()
        top = logits.topk(k, dim=1).indices
        sums['top1'] += (top[:, 0] == targets).sum().item()
        sums['top5'] += (top == targets[:, None]).any(dim=1).sum().item()
        sums['count'] += targets.numel()
    if dist is not None:
        sums = all_reduce_sums(sums, dist)
    count = max(sums['count'], 1.)
    return dict(loss=sums['loss'] / count, top1=100 * sums['top1'] / count, top5=100 * sums['top5'] / count,
                count=int(sums['count']))


@register_task
class ClassificationTask(Task):
    """Classification on ``<data.root>/<split>/<class>/<image>`` folders."""
    name = 'classification'
    main_metric = 'top1'
    log_metrics = ('top1', 'top5')
    config_class = ClassificationTrainConfig

    @classmethod
    def check_config(cls, config: ClassificationTrainConfig) -> None:
        data = config.data
        require(data.pipeline in ('timm', 'albumentations'),
                f"data.pipeline={data.pipeline!r} is not allowed; use 'timm' or 'albumentations'")
        for key in ('scale', 'ratio'):
            require_pair(f'data.{key}', getattr(data, key))
        require(data.scale[1] <= 1, f'data.scale={list(data.scale)} must be at most 1 (fractions of the image area)')
        for key in ('re_prob', 'mixup_prob', 'mixup_switch_prob'):
            require_probability(f'data.{key}', getattr(data, key))
        require(data.crop_pct is None or 0 < data.crop_pct <= 1,
                f'data.crop_pct={data.crop_pct} must lie in (0, 1] (e.g. 0.875), or be null (the model\'s)')
        require(data.interpolation is None or data.interpolation in INTERPOLATIONS,
                f'data.interpolation={data.interpolation!r} is not allowed; use {", ".join(INTERPOLATIONS)} or null '
                f'(the model\'s)')
        if data.auto_augment:
            _check_auto_augment(data.auto_augment)
        for key in ('mixup', 'cutmix'):
            require(getattr(data, key) >= 0, f'data.{key}={getattr(data, key)} must be 0 or more (0: off)')
        require(data.mixup_mode in MIXUP_MODES,
                f'data.mixup_mode={data.mixup_mode!r} is not allowed; use {", ".join(MIXUP_MODES)}')
        require(0 <= data.label_smoothing < 1,
                f'data.label_smoothing={data.label_smoothing} must be 0 or more and below 1 (e.g. 0.1)')
        require(not (data.mixup > 0 or data.cutmix > 0) or data.batch_size % 2 == 0,
                f'data.batch_size={data.batch_size} must be even with data.mixup / data.cutmix (timm\'s Mixup mixes '
                f'images in pairs)')
        require('num_classes' not in config.model.kwargs,
                'model.kwargs.num_classes is not allowed; task classification sets it to the number of class folders')

    def __init__(self, config, dist):
        super().__init__(config, dist)
        data = config.data
        self.train_folder = Path(data.root) / data.train_split
        self.train_classes = list_classes(self.train_folder)
        self.classes = list(self.train_classes)
        self.mixup = None
        if data.mixup > 0 or data.cutmix > 0:
            self.mixup = Mixup(mixup_alpha=data.mixup, cutmix_alpha=data.cutmix, prob=data.mixup_prob,
                               switch_prob=data.mixup_switch_prob, mode=data.mixup_mode,
                               label_smoothing=data.label_smoothing, num_classes=len(self.classes))
            self.criterion = SoftTargetCrossEntropy()
        elif data.label_smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=data.label_smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()

    def build_model(self) -> nn.Module:
        return self.create_model(num_classes=len(self.classes))

    def model_args(self):
        """As the base task's; a ``pretrained_file`` whose classifier has one row per class keeps it (timm would
        start a new classifier for any number of classes other than its pretrained cfg's)."""
        pretrained, kwargs = super().model_args()
        overlay = kwargs.get('pretrained_cfg_overlay')
        if overlay and _classifier_rows(overlay['file'], self.config.model.name) == len(self.classes):
            overlay['num_classes'] = len(self.classes)
        return pretrained, kwargs

    def resolved_data_config(self, model: nn.Module) -> Dict:
        """timm's data settings of the model, with the config's overrides."""
        return resolved_data_config(self.config.data, model)

    def build_datasets(self, model: nn.Module) -> Tuple[ImageFolderDataset, ImageFolderDataset]:
        data = self.config.data
        resolved = self.resolved_data_config(model)
        train = ImageFolderDataset(self.train_folder, build_transform(data, resolved, training=True),
                                   corrupt=data.corrupt_images, seed=self.config.seed, verify=data.verify_images,
                                   classes=self.train_classes)
        val = ImageFolderDataset(Path(data.root) / data.val_split, build_transform(data, resolved, training=False),
                                 class_to_idx=train.class_to_idx, corrupt=data.corrupt_images,
                                 seed=self.config.seed, verify=data.verify_images)
        check_image_folders(train, val, log=self.dist.is_main)  # every image opens: before the first step
        return train, val

    def training_loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.mixup is not None:
            inputs, targets = self.mixup(inputs, targets)
        return self.criterion(model(inputs), targets)

    def evaluate(self, model: nn.Module, loader, device: torch.device, autocast) -> Dict[str, float]:
        return classification_scores(model, loader, device, autocast, len(self.classes), self.dist)

