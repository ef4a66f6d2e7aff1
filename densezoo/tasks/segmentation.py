"""The training engine's ``task: seg``: semantic segmentation with ``densezoo.create_segmentor`` models.

Losses and metrics follow mmseg: pixel-wise cross entropy with ignore index 255 (+ 0.4 x the auxiliary head's), and
mIoU / pixel accuracy from a confusion matrix (``densezoo.metrics.segmentation``); ``slide_inference`` averages the
logits of overlapping windows.
"""
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from densezoo.config import DataConfig, ModelConfig, TrainConfig, require, require_pair
from densezoo.datasets.check import check_segmentation
from densezoo.datasets.segmentation import (SegmentationDataset, build_seg_pipeline, collate_segmentation,
                                            pair_segmentation_files)
from densezoo.distributed import all_reduce_sums
from densezoo.heads.segmentation import SEG_HEADS
from densezoo.heads.segmentor import create_segmentor
from densezoo.metrics.segmentation import IGNORE_INDEX, check_labels, confusion_matrix, segmentation_scores
from densezoo.tasks.base import Task, model_arguments, register_task

__all__ = ['segmentation_loss', 'slide_inference', 'SegmentationTask', 'SegModelConfig', 'SegDataConfig',
           'SegTrainConfig']


@dataclass
class SegModelConfig(ModelConfig):
    """The model section of ``task: seg``: the backbone ``name`` (features_only) and a decode head."""
    head: str = 'upernet'  # 'upernet', 'fpn', 'segformer' or 'dpt'
    head_kwargs: Dict[str, Any] = field(default_factory=dict)  # e.g. {channels: 512}
    out_indices: Optional[Tuple[int, ...]] = None  # feature maps of the backbone; default: chosen by the head
    aux_head: bool = False  # mmseg's auxiliary FCN head on the stride-16 map (loss weight 0.4)


@dataclass
class SegDataConfig(DataConfig):
    """The data section of ``task: seg``: <root>/images/<split>/* with label maps <root>/annotations/<split>/*.png."""
    num_classes: Optional[int] = None  # required (label 255 is ignored)
    resize_short: Optional[int] = None  # short side before random scaling / for evaluation; null: keep
    ratio_range: Tuple[float, float] = (0.5, 2.0)  # random scale of the training images (crop size: img_size)
    reduce_zero_label: bool = False  # label 0 -> 255 (ignored), others - 1 (ADE20K's 150 classes)
    val_slide_window: Optional[int] = None  # evaluate with sliding windows of this side (mmseg's slide mode)
    val_slide_stride: Optional[int] = None  # their stride (default: two thirds of the window, as mmseg's 512 / 341)


@dataclass
class SegTrainConfig(TrainConfig):
    """A segmentation run (pixel-wise cross entropy: no loss key)."""
    model: SegModelConfig = field(default_factory=SegModelConfig)
    data: SegDataConfig = field(default_factory=SegDataConfig)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, aux_logits: Optional[torch.Tensor] = None,
                      aux_weight: float = 0.4, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Pixel-wise cross entropy over non-ignored pixels (+ ``aux_weight`` x that of the auxiliary logits)."""
    check_labels(target, logits.shape[1], ignore_index)
    target = target.long()
    loss = F.cross_entropy(logits.float(), target, ignore_index=ignore_index)
    if aux_logits is not None:
        loss = loss + aux_weight * F.cross_entropy(aux_logits.float(), target, ignore_index=ignore_index)
    return loss


@torch.no_grad()
def slide_inference(model: nn.Module, images: torch.Tensor, num_classes: int, window: Union[int, Tuple[int, int]],
                    stride: Union[int, Tuple[int, int]]) -> torch.Tensor:
    """Logits of ``model`` over windows of size ``window`` taken every ``stride`` pixels (the last window flush with
    the border, as mmseg's slide mode), averaged where windows overlap."""
    win_h, win_w = (window, window) if isinstance(window, int) else window
    step_h, step_w = (stride, stride) if isinstance(stride, int) else stride
    if min(win_h, win_w, step_h, step_w) < 1:
        raise ValueError(f'window={window} and stride={stride} must be positive')
    if step_h > win_h or step_w > win_w:
        raise ValueError(f'stride={stride} is larger than window={window}; pixels between windows would get no '
                         f'logits')
    batch, _, height, width = images.shape
    logits = images.new_zeros((batch, num_classes, height, width), dtype=torch.float32)
    counts = images.new_zeros((1, 1, height, width), dtype=torch.float32)
    rows = max(height - win_h + step_h - 1, 0) // step_h + 1
    cols = max(width - win_w + step_w - 1, 0) // step_w + 1
    for r in range(rows):
        for c in range(cols):
            bottom, right = min(r * step_h + win_h, height), min(c * step_w + win_w, width)
            top, left = max(bottom - win_h, 0), max(right - win_w, 0)
            logits[:, :, top:bottom, left:right] += model(images[:, :, top:bottom, left:right]).float()
            counts[:, :, top:bottom, left:right] += 1
    return logits / counts


@register_task
class SegmentationTask(Task):
    """Semantic segmentation (``task: seg``) on ADE20K-layout folders: ``create_segmentor`` of the config's model
    (``model.name`` is the backbone; ``model.head``, ``head_kwargs``, ``out_indices``, ``aux_head``), pixel-wise
    cross entropy (ignore 255, auxiliary weight 0.4), mIoU / mAcc / aAcc on validation images at their label size,
    whole or in sliding windows (``data.val_slide_window`` / ``val_slide_stride``); confusion matrices are summed
    exactly over processes."""
    name = 'seg'
    main_metric = 'mIoU'
    log_metrics = ('mIoU', 'mAcc', 'aAcc')
    config_class = SegTrainConfig

    @classmethod
    def check_config(cls, config: SegTrainConfig) -> None:
        data, model = config.data, config.model
        require(data.num_classes is not None and data.num_classes >= 1,
                f'data.num_classes={data.num_classes} is not allowed; task seg needs the number of classes (e.g. 150)')
        require(model.head in ('upernet', 'fpn', 'segformer', 'dpt'),
                f"model.head={model.head!r} is not allowed; use upernet, fpn, segformer or dpt")
        require(data.img_size is None or data.img_size >= 1, f'data.img_size={data.img_size} must be at least 1')
        require(data.resize_short is None or data.resize_short >= 1,
                f'data.resize_short={data.resize_short} must be at least 1')
        require_pair('data.ratio_range', data.ratio_range)
        window, stride = data.val_slide_window, data.val_slide_stride
        require(window is None or window >= 1, f'data.val_slide_window={window} must be at least 1 (or null)')
        require(stride is None or (window is not None and 1 <= stride <= window),
                f'data.val_slide_stride={stride} needs data.val_slide_window and must lie in [1, window]')
        require(data.num_classes <= IGNORE_INDEX, f'data.num_classes={data.num_classes} is too many; label '
                                                  f'{IGNORE_INDEX} marks ignored pixels, so classes are 0..'
                                                  f'{IGNORE_INDEX - 1}')
        if model.out_indices is not None:
            indices = list(model.out_indices)
            require(len(indices) >= 1 and len(set(indices)) == len(indices),
                    f'model.out_indices={indices} must list one or more different feature maps (or be null: the '
                    f'head\'s default)')
        for key, reason in (('out_indices', 'set model.out_indices instead'),
                            ('features_only', 'the segmentor sets it'), ('feature_cls', 'the segmentor sets it')):
            require(key not in model.kwargs, f'model.kwargs.{key} is not allowed; {reason}')
        arguments = [name for name in model_arguments(SEG_HEADS[model.head])
                     if name not in ('in_channels', 'in_strides', 'num_classes')]
        bad = [key for key in model.head_kwargs if key not in arguments]
        require(not bad, f'model.head_kwargs has {", ".join(bad)}, which head {model.head} does not take; its '
                         f'arguments are: {", ".join(arguments)}; remove {"it" if len(bad) == 1 else "them"} from the '
                         f'config')

    def __init__(self, config, dist):
        super().__init__(config, dist)
        data = config.data
        for split in (data.train_split, data.val_split):  # found before the model is built
            pair_segmentation_files(data.root, split)
        self.num_classes = data.num_classes

    def build_model(self) -> nn.Module:
        model_cfg = self.config.model
        pretrained, kwargs = self.model_args()
        return create_segmentor(
            model_cfg.name, head=model_cfg.head, num_classes=self.num_classes, out_indices=model_cfg.out_indices,
            aux_head=model_cfg.aux_head, pretrained=pretrained, head_kwargs=model_cfg.head_kwargs, **kwargs)

    def build_datasets(self, model: nn.Module) -> Tuple[SegmentationDataset, SegmentationDataset]:
        data = self.config.data
        pretrained = getattr(model.backbone.model, 'pretrained_cfg', None) or {}
        mean = data.mean or pretrained.get('mean', IMAGENET_DEFAULT_MEAN)
        std = data.std or pretrained.get('std', IMAGENET_DEFAULT_STD)
        crop = data.img_size or 512

        def make(split: str, training: bool) -> SegmentationDataset:
            pipeline = build_seg_pipeline(training, crop, data.resize_short, data.ratio_range, data.hflip,
                                          data.color_jitter, data.albumentations, mean, std)
            return SegmentationDataset(data.root, split, pipeline, training, data.reduce_zero_label,
                                       seed=self.config.seed)

        train, val = make(data.train_split, True), make(data.val_split, False)
        # files, label modes and sizes, and label values (a bad one would stop the first validation, after training)
        check_segmentation(train, val, self.num_classes, data.corrupt_images, log=self.dist.is_main)
        return train, val

    def collate_fn(self, training: bool) -> Optional[Callable]:
        return None if training else collate_segmentation  # whole validation images differ in size

    def training_loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, aux = model(inputs, return_aux=True)
        return segmentation_loss(logits, targets, aux)

    def predict(self, model: nn.Module, image: torch.Tensor) -> torch.Tensor:
        """Logits of one evaluation image: whole, or in sliding windows with ``data.val_slide_window``."""
        window = self.config.data.val_slide_window
        if window is None:
            return model(image)
        stride = self.config.data.val_slide_stride or max(window * 2 // 3, 1)
        return slide_inference(model, image, self.num_classes, window, stride)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, device: torch.device, autocast) -> Dict[str, float]:
        matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)
        loss, count = 0., 0
        for images, labels in loader:
            for image, label in zip(images, labels):
                image, label = image[None].to(device), label[None].to(device)
                with autocast():
                    logits = self.predict(model, image)
                logits = F.interpolate(logits.float(), size=label.shape[-2:], mode='bilinear', align_corners=False)
                loss += segmentation_loss(logits, label).item()
                matrix += confusion_matrix(logits.argmax(1), label, self.num_classes)
                count += 1
        sums = {f'm{i}': float(v) for i, v in enumerate(matrix.flatten().tolist())}
        sums.update(loss=loss, count=float(count))
        sums = all_reduce_sums(sums, self.dist)
        total = torch.tensor([sums[f'm{i}'] for i in range(self.num_classes ** 2)], dtype=torch.float64)
        scores = segmentation_scores(total.reshape(self.num_classes, self.num_classes))
        return dict(loss=sums['loss'] / max(sums['count'], 1.), **scores, count=int(sums['count']))
