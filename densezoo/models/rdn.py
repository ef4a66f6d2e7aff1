"""RDN: residual dense network for image super-resolution (dense connections inside residual blocks).

``RDN`` is the EDSR-PyTorch port of the network (``src/model/rdn.py``), with its parameter names and counts, on
images in [0, 1]: ``RDN(...)(x) == rdn_edsr(255 * x) / 255``. Registered: ``rdn_x2``, ``rdn_x3``, ``rdn_x4`` (the
paper's configuration, EDSR-PyTorch's ``RDNconfig='B'``).

Paper: https://arxiv.org/abs/1802.08797 — authors' code (Torch7): https://github.com/yulunzhang/RDN — PyTorch port:
https://github.com/sanghyun-son/EDSR-PyTorch
Design notes: docs/sr-models.md.
"""
from typing import Optional, Sequence, Union

import torch
from torch import nn

from timm.models import checkpoint, generate_default_cfgs

from densezoo.layers.upsample import DenseUpsample
from densezoo.models._common import register_models
from densezoo.models._sr import SRModel, create_sr_model, sr_cfg

__all__ = ['RDN', 'RDB', 'RDBConv', 'RDN_CONFIGS']

#: EDSR-PyTorch's ``RDNconfig`` presets: (blocks D, layers per block C, growth rate G)
RDN_CONFIGS = {'A': (20, 6, 32), 'B': (16, 8, 64)}


class RDBConv(nn.Module):
    """One densely connected layer: conv → ReLU, its G channels concatenated after its input."""

    def __init__(self, in_channels: int, growth_rate: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, growth_rate, kernel_size, padding=(kernel_size - 1) // 2),
            nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x, self.conv(x)), 1)


class RDB(nn.Module):
    """Residual dense block: ``num_layers`` dense layers, a 1×1 local feature fusion and the local residual."""

    def __init__(self, num_features: int, growth_rate: int, num_layers: int):
        super().__init__()
        self.convs = nn.Sequential(*[RDBConv(num_features + c * growth_rate, growth_rate)
                                     for c in range(num_layers)])
        self.LFF = nn.Conv2d(num_features + num_layers * growth_rate, num_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LFF(self.convs(x)) + x


class RDNUpsample(DenseUpsample):
    """RDN's upsampler (``UPNet``) with ``kernel_size`` convs (EDSR-PyTorch's ``RDNkSize``; 3 by default)."""

    def __init__(self, scale: int, in_feat: int, growth: int, out_chans: int, kernel_size: int = 3):
        super().__init__(scale, in_feat, growth, out_chans)
        if kernel_size != 3:
            for index, layer in enumerate(self):
                if isinstance(layer, nn.Conv2d):
                    self[index] = nn.Conv2d(layer.in_channels, layer.out_channels, kernel_size,
                                            padding=(kernel_size - 1) // 2)


def _pick(name: str, value, default, alias: str, alias_value):
    """``value`` unless the alias was given; both given (``value`` not at its default) must agree."""
    if alias_value is None:
        return value
    if value != default and value != alias_value:
        raise ValueError(f'{name}={value!r} and {alias} disagree; give only one of them')
    return alias_value


class RDN(SRModel):
    """RDN with official-style arguments; EDSR-PyTorch's option names are accepted too (keyword only).

    Args:
        upscale: 2, 3 or 4 (EDSR-PyTorch: ``scale``, an int or a one-element list).
        in_chans: Image channels (``n_colors``).
        num_features: G0, the width of the shallow features and of each block's input and output (``G0``).
        growth_rate: G, the channels each dense layer adds.
        num_blocks: D, the residual dense blocks.
        num_layers: C, the dense layers per block.
        kernel_size: Kernel of the shallow, global-fusion and upsampler convs (``RDNkSize``). As in EDSR-PyTorch,
            the convs inside the blocks are always 3×3.
        img_range: Scale of the network's working range (``rgb_range``): the input in [0, 1] is multiplied by it
            and the output divided by it. There is no mean shift.
        RDNconfig: 'A' (D=20, C=6, G=32) or 'B' (D=16, C=8, G=64, the paper's model); sets num_blocks,
            num_layers and growth_rate.
    """

    def __init__(self, upscale: int = 4, in_chans: int = 3, num_features: int = 64, growth_rate: int = 64,
                 num_blocks: int = 16, num_layers: int = 8, kernel_size: int = 3, img_range: float = 255., *,
                 scale: Optional[Union[int, Sequence[int]]] = None, n_colors: Optional[int] = None,
                 G0: Optional[int] = None, RDNkSize: Optional[int] = None, RDNconfig: Optional[str] = None,
                 rgb_range: Optional[float] = None):
        if isinstance(scale, (list, tuple)):
            if len(scale) != 1:
                raise ValueError(f'RDN is built for one scale; got scale={list(scale)}')
            scale = scale[0]
        upscale = _pick('upscale', upscale, 4, f'scale={scale!r}', scale)
        in_chans = _pick('in_chans', in_chans, 3, f'n_colors={n_colors!r}', n_colors)
        num_features = _pick('num_features', num_features, 64, f'G0={G0!r}', G0)
        kernel_size = _pick('kernel_size', kernel_size, 3, f'RDNkSize={RDNkSize!r}', RDNkSize)
        img_range = _pick('img_range', img_range, 255., f'rgb_range={rgb_range!r}', rgb_range)
        if RDNconfig is not None:
            if RDNconfig not in RDN_CONFIGS:
                raise ValueError(f"RDNconfig={RDNconfig!r} is not known; choose 'A' (D=20, C=6, G=32) or 'B' "
                                 f"(D=16, C=8, G=64)")
            blocks, layers, growth = RDN_CONFIGS[RDNconfig]
            num_blocks = _pick('num_blocks', num_blocks, 16, f'RDNconfig={RDNconfig!r} (num_blocks={blocks})', blocks)
            num_layers = _pick('num_layers', num_layers, 8, f'RDNconfig={RDNconfig!r} (num_layers={layers})', layers)
            growth_rate = _pick('growth_rate', growth_rate, 64, f'RDNconfig={RDNconfig!r} (growth_rate={growth})',
                                growth)
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f'kernel_size={kernel_size!r} must be an odd positive integer (the convs keep the size)')
        super().__init__(in_chans=in_chans, upscale=upscale, img_range=img_range, rgb_mean=(0.,) * in_chans)
        self.num_features = num_features
        self.growth_rate = growth_rate
        self.num_blocks = num_blocks
        self.num_layers = num_layers
        self.kernel_size = kernel_size
        padding = (kernel_size - 1) // 2

        self.SFENet1 = nn.Conv2d(in_chans, num_features, kernel_size, padding=padding)
        self.SFENet2 = nn.Conv2d(num_features, num_features, kernel_size, padding=padding)
        self.RDBs = nn.ModuleList([RDB(num_features, growth_rate, num_layers) for _ in range(num_blocks)])
        self.GFF = nn.Sequential(
            nn.Conv2d(num_blocks * num_features, num_features, 1),
            nn.Conv2d(num_features, num_features, kernel_size, padding=padding))
        self.UPNet = RDNUpsample(upscale, num_features, growth_rate, in_chans, kernel_size)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Global feature fusion of the blocks' outputs for the SFENet2 features ``x``, before the global residual."""
        use_checkpoint = self.grad_checkpointing and self.training and not torch.jit.is_scripting()
        outputs = []
        for block in self.RDBs:
            x = checkpoint(block, x) if use_checkpoint else block(x)
            outputs.append(x)
        return self.GFF(torch.cat(outputs, 1))

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        shallow = self.SFENet1(x)
        features = self.forward_features(self.SFENet2(shallow)) + shallow
        return self.UPNet(features)


# ---------------------------------------------------------------------------------------------------------------
# registered configurations

_SOURCE = 'https://github.com/sanghyun-son/EDSR-PyTorch'
_PAPER = ('arXiv:1802.08797',)

CONFIGS = {f'rdn_x{s}': dict(upscale=s, num_features=64, growth_rate=64, num_blocks=16, num_layers=8, kernel_size=3,
                             img_range=255.) for s in (2, 3, 4)}


def _cfg(scale: int) -> dict:
    notes = (f'upscale x{scale}; paper configuration (RDNconfig B: 16 blocks x 8 layers, growth 64, 64 features)',
             'No PyTorch release weights are known: the RDN authors released Torch7 models (yulunzhang/RDN) and '
             'EDSR-PyTorch, whose port this is, ships no RDN weights. A checkpoint of EDSR-PyTorch\'s RDN has these '
             'parameter names and loads with pretrained_cfg_overlay=dict(file=...).')
    return sr_cfg(source=_SOURCE, paper=_PAPER, scale=scale, input_size=(3, 32, 32), first_conv='SFENet1',
                  license=None, notes=notes)


def _create_rdn(variant: str, pretrained: bool = False, **kwargs) -> RDN:
    return create_sr_model(RDN, variant, pretrained, **kwargs)


default_cfgs = generate_default_cfgs({name: _cfg(cfg['upscale']) for name, cfg in CONFIGS.items()})
register_models(__name__, _create_rdn, ['rdn_x2', 'rdn_x3', 'rdn_x4'], CONFIGS, title='RDN')
