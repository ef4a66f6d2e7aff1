"""Image classification: timm models, image-folder data, mixup / cutmix, label smoothing, top-1 / top-5."""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from timm.data import Mixup, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn

from densezoo.config import DataConfig, TrainConfig, require
from densezoo.datasets import ImageFolderDataset, build_transform, list_classes
from densezoo.distributed import all_reduce_sums
from densezoo.tasks.base import Task, register_task

__all__ = ['ClassificationTask', 'ClassificationDataConfig', 'ClassificationTrainConfig']


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


@register_task
class ClassificationTask(Task):
    """Classification on ``<data.root>/<split>/<class>/<image>`` folders."""
    name = 'classification'
    main_metric = 'top1'
    log_metrics = ('top1', 'top5')
    config_class = ClassificationTrainConfig

    @classmethod
    def check_config(cls, config: ClassificationTrainConfig) -> None:
        require(config.data.pipeline in ('timm', 'albumentations'),
                f"data.pipeline={config.data.pipeline!r} is not allowed; use 'timm' or 'albumentations'")

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

    def resolved_data_config(self, model: nn.Module) -> Dict:
        """timm's data settings of the model, with the config's overrides."""
        data = self.config.data
        resolved = resolve_data_config(model=model)
        if data.img_size:
            resolved['input_size'] = (resolved['input_size'][0], data.img_size, data.img_size)
        for key in ('interpolation', 'crop_pct', 'mean', 'std'):
            if getattr(data, key) is not None:
                resolved[key] = getattr(data, key)
        return resolved

    def build_datasets(self, model: nn.Module) -> Tuple[ImageFolderDataset, ImageFolderDataset]:
        data = self.config.data
        resolved = self.resolved_data_config(model)
        train = ImageFolderDataset(self.train_folder, build_transform(data, resolved, training=True),
                                   corrupt=data.corrupt_images, seed=self.config.seed, verify=data.verify_images,
                                   classes=self.train_classes)
        val = ImageFolderDataset(Path(data.root) / data.val_split, build_transform(data, resolved, training=False),
                                 class_to_idx=train.class_to_idx, corrupt=data.corrupt_images,
                                 seed=self.config.seed, verify=data.verify_images)
        return train, val

    def training_loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.mixup is not None:
            inputs, targets = self.mixup(inputs, targets)
        return self.criterion(model(inputs), targets)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, device: torch.device, autocast) -> Dict[str, float]:
        sums = dict(loss=0., top1=0., top5=0., count=0.)
        k = min(5, len(self.classes))
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
        sums = all_reduce_sums(sums, self.dist)
        count = max(sums['count'], 1.)
        return dict(loss=sums['loss'] / count, top1=100 * sums['top1'] / count, top5=100 * sums['top5'] / count,
                    count=int(sums['count']))

