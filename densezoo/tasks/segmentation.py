"""Semantic segmentation: a timm / densezoo backbone (``features_only``) + a head from ``densezoo.heads.segmentation``.

``create_segmentor('swin_tiny_patch4_window7_224_dwa', head='upernet', num_classes=150)`` returns a ``Segmentor``
whose ``forward(images)`` gives logits at the input resolution for any input size (inputs are padded at the bottom
and right to a multiple of the backbone's stride and the logits cropped back). Losses and metrics follow mmseg:
pixel-wise cross entropy with ignore index 255 (+ 0.4 x the auxiliary head's), and mIoU / pixel accuracy from a
confusion matrix; ``slide_inference`` averages the logits of overlapping windows. ``SegmentationTask`` is the
training engine's ``task: seg``.

Input sizes: backbones whose family fixes the input size at construction get the argument that lifts it (ViT-like
models ``dynamic_img_size=True``, Swin-like models ``strict_img_size=False``); plain ViT / LookupViT give maps at one
stride and go through the DPT head.
"""
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from densezoo.datasets.segmentation import (SegmentationDataset, build_seg_pipeline, collate_segmentation,
                                            pair_segmentation_files)
from densezoo.engine.distributed import all_reduce_sums
from densezoo.heads.segmentation import PYRAMID_HEADS, SEG_HEADS, FCNHead, create_seg_head
from densezoo.tasks.base import Task, register_task

__all__ = ['IGNORE_INDEX', 'Segmentor', 'create_segmentor', 'load_segmentor_state', 'check_labels',
           'segmentation_loss', 'confusion_matrix', 'segmentation_scores', 'slide_inference', 'SegmentationTask']

IGNORE_INDEX = 255


def _size_kwargs(model: nn.Module) -> Dict[str, bool]:
    """Constructor arguments that let ``model``'s family take inputs of any size (ViT-like models resize their
    position embeddings: ``dynamic_img_size=True``; Swin-like models pad their windows: ``strict_img_size=False``)."""
    if getattr(model, 'dynamic_img_size', True) is False:
        return dict(dynamic_img_size=True)
    patch_embed = getattr(model, 'patch_embed', None)
    if getattr(patch_embed, 'strict_img_size', False):
        return dict(strict_img_size=False)
    return {}


def _default_out_indices(head: str, feature_info: Sequence[Dict]) -> Tuple[int, ...]:
    """Pyramid heads: every map of stride >= 4; DPT: four evenly spaced blocks ending with the last (3, 6, 9, 12 of
    12 blocks, as DPT)."""
    if head in PYRAMID_HEADS:
        return tuple(i for i, info in enumerate(feature_info) if info['reduction'] >= 4)
    count = len(feature_info)
    return tuple(sorted({max(0, count * k // 4 - 1) for k in range(1, 5)}))


class Segmentor(nn.Module):
    """Backbone (timm ``features_only`` model) + decode head (+ optional auxiliary FCN head).

    ``forward(images)`` returns logits (N, num_classes, H, W) at the input size; ``forward(images, return_aux=True)``
    also the auxiliary head's.
    """

    def __init__(self, backbone: nn.Module, decode_head: nn.Module, auxiliary_head: Optional[nn.Module] = None,
                 aux_index: Optional[int] = None, size_divisor: int = 32):
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.auxiliary_head = auxiliary_head
        self.aux_index = aux_index
        self.size_divisor = size_divisor
        self.num_classes = decode_head.num_classes

    def _padded(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4:
            raise ValueError(f'images must be a batch (N, C, H, W), got shape {tuple(images.shape)}')
        height, width = images.shape[-2:]
        pad_h, pad_w = -height % self.size_divisor, -width % self.size_divisor
        return F.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images

    def _to_input_size(self, logits: torch.Tensor, padded_size, size) -> torch.Tensor:
        logits = F.interpolate(logits, size=padded_size, mode='bilinear', align_corners=False)
        return logits[..., :size[0], :size[1]]

    def forward(self, images: torch.Tensor, return_aux: bool = False):
        """Logits at the input size; with ``return_aux``, ``(logits, aux_logits)`` (aux_logits None without an
        auxiliary head)."""
        padded = self._padded(images)
        features = self.backbone(padded)
        size, padded_size = images.shape[-2:], padded.shape[-2:]
        logits = self._to_input_size(self.decode_head(features), padded_size, size)
        if not return_aux:
            return logits
        aux = None
        if self.auxiliary_head is not None:
            aux = self._to_input_size(self.auxiliary_head([features[self.aux_index]]), padded_size, size)
        return logits, aux

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Gradient checkpointing in the backbone."""
        self.backbone.model.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def no_weight_decay(self):
        """The backbone's parameters without weight decay (position embeddings, connection weights, ...)."""
        inner = getattr(self.backbone.model, 'no_weight_decay', None)
        return {f'backbone.model.{name}' for name in inner()} if inner is not None else set()


def load_segmentor_state(model: Segmentor, state_dict: Dict[str, torch.Tensor], strict: bool = True):
    """Load a segmentor state dict (or a checkpoint holding one under 'state_dict' / 'model'), checking the class
    count first."""
    for key in ('state_dict', 'model'):
        if key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
    weight = state_dict.get('decode_head.conv_seg.weight')
    if weight is not None and weight.shape[0] != model.num_classes:
        raise ValueError(f'the checkpoint has {weight.shape[0]} classes but the segmentor has {model.num_classes}; '
                         f'create it with num_classes={weight.shape[0]} (or drop the conv_seg weights to fine-tune)')
    return model.load_state_dict(state_dict, strict=strict)


def create_segmentor(backbone: str, head: str = 'upernet', num_classes: int = 150,
                     out_indices: Optional[Sequence[int]] = None, aux_head: bool = False, pretrained: bool = False,
                     head_kwargs: Optional[Dict] = None, checkpoint: Union[str, Path, Dict, None] = None,
                     **backbone_kwargs) -> Segmentor:
    """A ``Segmentor`` of the timm / densezoo model ``backbone`` (features_only) and the head ``head``
    ('upernet', 'fpn', 'segformer' or 'dpt').

    Args:
        out_indices: Feature maps to use (indices into the model's feature_info). Default: the maps of stride >= 4
            for pyramid heads, four evenly spaced blocks for 'dpt'.
        aux_head: Add mmseg's auxiliary FCN head on the stride-16 map (trained with weight 0.4).
        head_kwargs: Extra head arguments (e.g. ``channels``).
        checkpoint: A segmentor state dict or a file holding one, loaded strictly.
        backbone_kwargs: ``timm.create_model`` arguments of the backbone.
    """
    if head not in SEG_HEADS:
        raise ValueError(f"head={head!r} is not known; choose one of {', '.join(SEG_HEADS)}")
    if num_classes < 1:
        raise ValueError(f'num_classes={num_classes} must be at least 1')
    with torch.device('meta'):
        probe = timm.create_model(backbone, **dict(backbone_kwargs, device='meta'))
    feature_info = list(getattr(probe, 'feature_info', None) or [])
    if not feature_info:
        raise ValueError(f'{backbone} has no feature_info, so it cannot give feature maps; use a timm model that '
                         f'supports features_only')
    for key, value in _size_kwargs(probe).items():
        backbone_kwargs.setdefault(key, value)
    count = len(feature_info)
    if out_indices is None:
        out_indices = _default_out_indices(head, feature_info)
    out_indices = tuple(out_indices)
    bad = [i for i in out_indices if not -count <= i < count]
    if bad:
        raise ValueError(f'out_indices {bad} are out of range: {backbone} has {count} feature maps '
                         f'(indices 0..{count - 1})')
    strides = [feature_info[i]['reduction'] for i in out_indices]
    if head in PYRAMID_HEADS and len(set(strides)) < len(strides):
        raise ValueError(f"head={head!r} needs a feature pyramid but {backbone} gives maps at a single stride "
                         f"{strides[0]}; use head='dpt'")
    model = timm.create_model(backbone, pretrained=pretrained, features_only=True, feature_cls='getter',
                              out_indices=out_indices, **backbone_kwargs)
    channels, strides = model.feature_info.channels(), model.feature_info.reduction()
    decode_head = create_seg_head(head, channels, strides, num_classes, **(head_kwargs or {}))
    auxiliary, aux_index = None, None
    if aux_head:
        at_16 = [i for i, s in enumerate(strides) if s == 16]
        if not at_16:
            raise ValueError(f'aux_head=True needs a stride-16 map; out_indices {list(out_indices)} give strides '
                             f'{strides}')
        aux_index = at_16[0] if len(at_16) == 1 else at_16[-2]
        auxiliary = FCNHead(channels[aux_index], 16, num_classes)
    size_divisor = max(strides) * (2 if head == 'dpt' else 1)  # DPT reassembles a map at twice the stride
    segmentor = Segmentor(model, decode_head, auxiliary, aux_index, size_divisor)
    if checkpoint is not None:
        state = checkpoint if isinstance(checkpoint, dict) else torch.load(checkpoint, map_location='cpu')
        load_segmentor_state(segmentor, state)
    return segmentor


def check_labels(target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
    """Raise ``ValueError`` when ``target`` holds values outside [0, num_classes) other than ``ignore_index``."""
    bad = (target < 0) | (target >= num_classes)
    bad &= target != ignore_index
    if bool(bad.any()):
        values = sorted(set(target[bad].unique().tolist()))[:5]
        raise ValueError(f'label values {values} are outside [0, {num_classes}) and not the ignore index '
                         f'{ignore_index}; fix the label maps or num_classes')


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, aux_logits: Optional[torch.Tensor] = None,
                      aux_weight: float = 0.4, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Pixel-wise cross entropy over non-ignored pixels (+ ``aux_weight`` x that of the auxiliary logits)."""
    check_labels(target, logits.shape[1], ignore_index)
    target = target.long()
    loss = F.cross_entropy(logits.float(), target, ignore_index=ignore_index)
    if aux_logits is not None:
        loss = loss + aux_weight * F.cross_entropy(aux_logits.float(), target, ignore_index=ignore_index)
    return loss


def confusion_matrix(prediction: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts: row = true class, column = predicted class; ignored pixels skipped."""
    check_labels(target, num_classes, ignore_index)
    keep = target != ignore_index
    index = target[keep].long() * num_classes + prediction[keep].long()
    return torch.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def segmentation_scores(matrix: torch.Tensor) -> Dict[str, float]:
    """mIoU, mean class accuracy (mAcc) and pixel accuracy (aAcc), in percent, from a confusion matrix; classes
    absent from both labels and predictions are left out of the means (as mmseg's NaN-mean)."""
    matrix = matrix.double()
    true_pos = matrix.diag()
    per_label = matrix.sum(1)
    union = per_label + matrix.sum(0) - true_pos
    present = union > 0
    iou = true_pos[present] / union[present]
    labelled = per_label > 0
    acc = true_pos[labelled] / per_label[labelled]
    total = matrix.sum()
    return dict(mIoU=100 * iou.mean().item() if present.any() else 0.,
                mAcc=100 * acc.mean().item() if labelled.any() else 0.,
                aAcc=100 * (true_pos.sum() / total).item() if total > 0 else 0.)


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

        return make(data.train_split, True), make(data.val_split, False)

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
