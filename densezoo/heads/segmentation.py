"""Semantic segmentation heads over a backbone's feature maps.

``create_seg_head`` builds ``upernet`` (``UPerHead``), ``fpn`` (``FPNHead``), ``segformer`` (``SegFormerHead``) or
``dpt`` (``DPTHead``); ``FCNHead`` is the auxiliary head. Each takes a list of NCHW maps (finest first) described by
``in_channels`` and ``in_strides`` and returns class logits at ``head.output_stride``; layouts and defaults follow
mmsegmentation's heads.

Design notes: docs/segmentation.md.
"""
import math
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from timm.layers import ConvNormAct
from torch import nn

__all__ = ['SEG_HEADS', 'PYRAMID_HEADS', 'create_seg_head', 'SegHead', 'UPerHead', 'FPNHead', 'SegFormerHead',
           'DPTHead', 'FCNHead', 'PyramidPooling', 'ReassembleBlocks', 'FeatureFusionBlock']


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize (align_corners=False) to ``size``; no-op when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode='bilinear', align_corners=False)


class SegHead(nn.Module):
    """Common part of the heads: checks the inputs and holds the classifier (``dropout`` + ``conv_seg``)."""

    def __init__(self, in_channels: Sequence[int], in_strides: Sequence[int], channels: int, num_classes: int,
                 dropout: float = 0.1):
        super().__init__()
        if len(in_channels) != len(in_strides) or not in_channels:
            raise ValueError(f'{type(self).__name__} needs one stride per input map; got channels {list(in_channels)} '
                             f'and strides {list(in_strides)}')
        if num_classes < 1:
            raise ValueError(f'num_classes={num_classes} must be at least 1')
        self.in_channels = list(in_channels)
        self.in_strides = list(in_strides)
        self.channels = channels
        self.num_classes = num_classes
        self.output_stride = min(in_strides)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def check_inputs(self, features: Sequence[torch.Tensor]) -> None:
        if len(features) != len(self.in_channels):
            raise ValueError(f'{type(self).__name__} was built for {len(self.in_channels)} feature maps, got '
                             f'{len(features)}')

    def cls_seg(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(x))


def _check_pyramid(name: str, in_strides: Sequence[int]) -> None:
    if len(set(in_strides)) != len(in_strides) or list(in_strides) != sorted(in_strides):
        raise ValueError(f"head='{name}' needs a feature pyramid (maps of increasing stride, e.g. 4, 8, 16, 32); got "
                         f"strides {list(in_strides)}; use head='dpt' for plain (single-stride) backbones")


class PyramidPooling(nn.Module):
    """PSPNet's pooling module: adaptive average pools at ``pool_scales``, each followed by a 1x1 ConvNormAct and
    upsampled back; returns the list of pooled maps (the input itself not included)."""

    def __init__(self, in_channels: int, channels: int, pool_scales: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        self.stages = nn.ModuleList([
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), ConvNormAct(in_channels, channels, 1))
            for scale in pool_scales])

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [_resize(stage(x), x.shape[-2:]) for stage in self.stages]


class UPerHead(SegHead):
    """UPerNet: PPM on the coarsest map + FPN over all maps, fused at the finest stride (mmseg's ``UPerHead``)."""

    def __init__(self, in_channels: Sequence[int], in_strides: Sequence[int], num_classes: int, channels: int = 512,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1):
        super().__init__(in_channels, in_strides, channels, num_classes, dropout)
        _check_pyramid('upernet', in_strides)
        self.psp_modules = PyramidPooling(in_channels[-1], channels, pool_scales)
        self.bottleneck = ConvNormAct(in_channels[-1] + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList([ConvNormAct(c, channels, 1) for c in in_channels[:-1]])
        self.fpn_convs = nn.ModuleList([ConvNormAct(channels, channels, 3) for _ in in_channels[:-1]])
        self.fpn_bottleneck = ConvNormAct(len(in_channels) * channels, channels, 3)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        self.check_inputs(features)
        last = features[-1]
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, features[:-1])]
        laterals.append(self.bottleneck(torch.cat([last] + self.psp_modules(last), dim=1)))
        for i in range(len(laterals) - 1, 0, -1):  # top-down pathway
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        size = outs[0].shape[-2:]
        fused = self.fpn_bottleneck(torch.cat([_resize(x, size) for x in outs], dim=1))
        return self.cls_seg(fused)


class FPNHead(SegHead):
    """Semantic FPN: mmseg's ``FPN`` neck (1x1 laterals and 3x3 outputs with bias, nearest top-down upsampling,
    ``fpn_channels``) followed by ``FPNHead``: per level, ``log2(stride / finest stride)`` steps of 3x3 ConvNormAct +
    bilinear 2x upsampling (one conv for the finest level), summed at the finest stride."""

    def __init__(self, in_channels: Sequence[int], in_strides: Sequence[int], num_classes: int, channels: int = 128,
                 fpn_channels: int = 256, dropout: float = 0.1):
        super().__init__(in_channels, in_strides, channels, num_classes, dropout)
        _check_pyramid('fpn', in_strides)
        self.lateral_convs = nn.ModuleList([nn.Conv2d(c, fpn_channels, 1) for c in in_channels])
        self.fpn_convs = nn.ModuleList([nn.Conv2d(fpn_channels, fpn_channels, 3, padding=1) for _ in in_channels])
        self.scale_heads = nn.ModuleList()
        for stride in in_strides:
            length = max(1, int(round(math.log2(stride / in_strides[0]))))
            layers = []
            for k in range(length):
                layers.append(ConvNormAct(fpn_channels if k == 0 else channels, channels, 3))
                if stride != in_strides[0]:
                    layers.append(nn.Upsample(scale_factor=2, mode='bilinear', align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        self.check_inputs(features)
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, features)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:])
        pyramid = [conv(x) for conv, x in zip(self.fpn_convs, laterals)]
        out = self.scale_heads[0](pyramid[0])
        for head, x in zip(self.scale_heads[1:], pyramid[1:]):
            out = out + _resize(head(x), out.shape[-2:])
        return self.cls_seg(out)


class SegFormerHead(SegHead):
    """SegFormer's all-MLP decoder (mmseg's ``SegformerHead``): 1x1 ConvNormAct per level to ``channels``
    (the embedding dim: 256 for B0/B1-sized backbones, 768 for larger), upsampled to the finest map, concatenated and
    fused by a 1x1 ConvNormAct."""

    def __init__(self, in_channels: Sequence[int], in_strides: Sequence[int], num_classes: int, channels: int = 256,
                 dropout: float = 0.1):
        super().__init__(in_channels, in_strides, channels, num_classes, dropout)
        _check_pyramid('segformer', in_strides)
        self.convs = nn.ModuleList([ConvNormAct(c, channels, 1) for c in in_channels])
        self.fusion_conv = ConvNormAct(channels * len(in_channels), channels, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        self.check_inputs(features)
        size = features[0].shape[-2:]
        outs = [_resize(conv(x), size) for conv, x in zip(self.convs, features)]
        return self.cls_seg(self.fusion_conv(torch.cat(outs, dim=1)))


class ReassembleBlocks(nn.Module):
    """DPT's reassembly: a 1x1 projection of each stride-s token map to ``out_channels[i]``, then resampling by the
    factors 4, 2, 1, 1/2 (4x4 and 2x2 transposed convs, identity, 3x3 stride-2 conv): strides s/4 .. 2s.
    Token maps come without class/prefix tokens (timm's feature maps), i.e. DPT's readout 'ignore'."""

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int] = (96, 192, 384, 768)):
        super().__init__()
        self.projects = nn.ModuleList([nn.Conv2d(c, o, 1) for c, o in zip(in_channels, out_channels)])
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(out_channels[0], out_channels[0], kernel_size=4, stride=4),
            nn.ConvTranspose2d(out_channels[1], out_channels[1], kernel_size=2, stride=2),
            nn.Identity(),
            nn.Conv2d(out_channels[3], out_channels[3], kernel_size=3, stride=2, padding=1)])

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        return [resize(project(x)) for project, resize, x in zip(self.projects, self.resize_layers, features)]


class PreActResidualConvUnit(nn.Module):
    """``x + conv2(conv1(x))`` with pre-activation convs (ReLU → 3x3 conv → BatchNorm), as in DPT."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(channels))
        self.conv2 = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.conv1(x))


class FeatureFusionBlock(nn.Module):
    """DPT's fusion: adds a residual-conv-unit refined skip map (when given) to the coarser path, refines, upsamples
    2x (bilinear) and projects with a 1x1 conv."""

    def __init__(self, channels: int, with_skip: bool = True):
        super().__init__()
        self.res_conv_unit1 = PreActResidualConvUnit(channels) if with_skip else None
        self.res_conv_unit2 = PreActResidualConvUnit(channels)
        self.project = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.res_conv_unit1(_resize(skip, x.shape[-2:]))
        x = self.res_conv_unit2(x)
        x = F.interpolate(x, scale_factor=2, mode='bilinear', align_corners=False)
        return self.project(x)


class DPTHead(SegHead):
    """DPT decoder (mmseg's ``DPTHead``) for four same-stride token maps (e.g. ViT blocks 3, 6, 9, 12): reassembly to
    strides s/4, s/2, s, 2s (``post_process_channels``), 3x3 convs to ``channels``, four fusion blocks from coarse to
    fine, a 3x3 ConvNormAct and the classifier. Output stride: s/8 (2 for a patch-16 ViT)."""

    def __init__(self, in_channels: Sequence[int], in_strides: Sequence[int], num_classes: int, channels: int = 256,
                 post_process_channels: Sequence[int] = (96, 192, 384, 768), dropout: float = 0.1):
        super().__init__(in_channels, in_strides, channels, num_classes, dropout)
        if len(in_channels) != 4 or len(set(in_strides)) != 1:
            raise ValueError(f"head='dpt' needs four token maps of one stride (e.g. out_indices of four ViT blocks); "
                             f"got strides {list(in_strides)}")
        if len(post_process_channels) != 4:
            raise ValueError(f'post_process_channels={list(post_process_channels)} must have four values')
        self.output_stride = max(1, in_strides[0] // 8)
        self.reassemble_blocks = ReassembleBlocks(in_channels, post_process_channels)
        self.convs = nn.ModuleList([nn.Conv2d(c, channels, 3, padding=1, bias=False) for c in post_process_channels])
        self.fusion_blocks = nn.ModuleList([FeatureFusionBlock(channels, with_skip=i > 0) for i in range(4)])
        self.project = ConvNormAct(channels, channels, 3)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        self.check_inputs(features)
        maps = [conv(x) for conv, x in zip(self.convs, self.reassemble_blocks(features))]
        out = self.fusion_blocks[0](maps[-1])
        for block, skip in zip(self.fusion_blocks[1:], maps[-2::-1]):
            out = block(out, skip)
        return self.cls_seg(self.project(out))


class FCNHead(SegHead):
    """The auxiliary head of mmseg's UPerNet configs (``FCNHead``, ``num_convs=1``, no input concatenation):
    3x3 ConvNormAct to ``channels`` and the classifier, on one map."""

    def __init__(self, in_channels: int, in_stride: int, num_classes: int, channels: int = 256, num_convs: int = 1,
                 dropout: float = 0.1):
        super().__init__([in_channels], [in_stride], channels, num_classes, dropout)
        self.convs = nn.Sequential(*[ConvNormAct(in_channels if i == 0 else channels, channels, 3)
                                     for i in range(num_convs)])

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        self.check_inputs(features)
        return self.cls_seg(self.convs(features[0]))


SEG_HEADS: Dict[str, type] = dict(upernet=UPerHead, fpn=FPNHead, segformer=SegFormerHead, dpt=DPTHead)
#: heads that need maps of increasing stride
PYRAMID_HEADS = ('upernet', 'fpn', 'segformer')


def create_seg_head(name: str, in_channels: Sequence[int], in_strides: Sequence[int], num_classes: int,
                    **kwargs) -> SegHead:
    """The head ``name`` ('upernet', 'fpn', 'segformer' or 'dpt') for maps of ``in_channels`` at ``in_strides``."""
    if name not in SEG_HEADS:
        raise ValueError(f"head={name!r} is not known; choose one of {', '.join(SEG_HEADS)}")
    return SEG_HEADS[name](in_channels, in_strides, num_classes, **kwargs)
