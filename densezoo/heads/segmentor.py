"""Semantic segmentation models: a timm / densezoo backbone (``features_only``) + a head from
``densezoo.heads.segmentation``.

``create_segmentor('swin_tiny_patch4_window7_224_dwa', head='upernet', num_classes=150)`` returns a ``Segmentor``
whose ``forward(images)`` gives logits at the input resolution for any input size (inputs are padded at the bottom
and right to a multiple of the backbone's stride and the logits cropped back).

Input sizes: backbones whose family fixes the input size at construction get the argument that lifts it (ViT-like
models ``dynamic_img_size=True``, Swin-like models ``strict_img_size=False``); plain ViT / LookupViT give maps at one
stride and go through the DPT head.
"""
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn.functional as F
from torch import nn

from densezoo.checkpoint_io import load_weights_file
from densezoo.heads.segmentation import PYRAMID_HEADS, SEG_HEADS, FCNHead, create_seg_head

__all__ = ['Segmentor', 'create_segmentor', 'load_segmentor_state']


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
        checkpoint: A segmentor state dict or a file holding one (safetensors, or a .pth read with
            ``weights_only=True``), loaded strictly.
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
        state = checkpoint if isinstance(checkpoint, dict) else load_weights_file(checkpoint)
        load_segmentor_state(segmentor, state)
    return segmentor
