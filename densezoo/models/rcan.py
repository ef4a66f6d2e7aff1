"""RCAN: very deep residual channel attention networks for image super-resolution (residual-in-residual).

``RCAN`` follows BasicSR's port (``basicsr/archs/rcan_arch.py``): the same constructor arguments, parameter names,
counts and outputs; ``checkpoint_filter_fn`` also loads the authors' original EDSR-PyTorch layout. Registered:
``rcan_x2``, ``rcan_x3``, ``rcan_x4`` (10 groups of 20 RCABs, 64 features, squeeze factor 16).

Paper: https://arxiv.org/abs/1807.02758 — official code: https://github.com/yulunzhang/RCAN
Design notes: docs/sr-models.md.
"""
import logging
import re
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from timm.models import checkpoint, generate_default_cfgs

from densezoo.layers.upsample import PixelShuffleUpsample
from densezoo.layers.channel_attention import ChannelAttention
from densezoo.models._common import register_models
from densezoo.models._sr import RGB_MEAN, SRModel, create_sr_model, sr_cfg, unwrap_checkpoint
from densezoo.models._sr import checkpoint_filter_fn as sr_checkpoint_filter_fn

__all__ = ['RCAN', 'RCAB', 'ResidualGroup', 'checkpoint_filter_fn', 'original_state_dict']

_logger = logging.getLogger(__name__)


class RCAB(nn.Module):
    """Residual channel attention block: x + res_scale · CA(conv(ReLU(conv(x)))).

    ``self.rcab`` holds the branch (conv, ReLU, conv, channel attention; BasicSR's names); the forward applies the
    attention's channel weights, ``res_scale`` and the skip in one ``addcmul`` pass instead of three.
    """

    def __init__(self, num_feat: int, squeeze_factor: int = 16, res_scale: float = 1):
        super().__init__()
        self.res_scale = res_scale
        self.rcab = nn.Sequential(
            nn.Conv2d(num_feat, num_feat, 3, 1, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(num_feat, num_feat, 3, 1, 1),
            ChannelAttention(num_feat, squeeze_factor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv1, act, conv2, attention = self.rcab
        branch = conv2(act(conv1(x)))
        return torch.addcmul(x, branch, attention.gate(branch), value=self.res_scale)


class ResidualGroup(nn.Module):
    """``num_block`` RCABs and a closing 3×3 conv, with the group's own skip connection."""

    def __init__(self, num_feat: int, num_block: int, squeeze_factor: int = 16, res_scale: float = 1):
        super().__init__()
        self.residual_group = nn.Sequential(*[RCAB(num_feat, squeeze_factor, res_scale) for _ in range(num_block)])
        self.conv = nn.Conv2d(num_feat, num_feat, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.residual_group(x)) + x


def _is_channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` is a channels-last (and not also a contiguous) 4-D map."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _supported_scale(upscale: int) -> bool:
    return isinstance(upscale, int) and upscale >= 1 and (upscale & (upscale - 1) == 0 or upscale == 3)


class RCAN(SRModel):
    """RCAN with BasicSR's constructor (argument names, defaults and meanings).

    Inputs are images in [0, 1]; the model subtracts ``rgb_mean``, multiplies by ``img_range`` (255: the network
    works on the [0, 255] scale, as the original RCAN does), and undoes both on the output.

    Args:
        num_in_ch: Input image channels (BasicSR requires it; here it defaults to ``in_chans``, else 3).
        num_out_ch: Output image channels (defaults to ``num_in_ch``).
        num_feat: Feature width.
        num_group: Residual groups.
        num_block: RCABs per residual group.
        squeeze_factor: Channel reduction of the attention (num_feat → num_feat // squeeze_factor → num_feat).
        upscale: 3 or a power of 2 (1 keeps the size: no upsampler, as in BasicSR).
        res_scale: Scale of each RCAB's residual.
        img_range: Scale applied after subtracting the mean.
        rgb_mean: Mean subtracted from the input and added to the output (DIV2K mean by default); one value per
            channel, or a single value.
        in_chans: timm's name for ``num_in_ch`` (timm passes it from the pretrained cfg).
    """

    def __init__(self, num_in_ch: Optional[int] = None, num_out_ch: Optional[int] = None, num_feat: int = 64,
                 num_group: int = 10, num_block: int = 16, squeeze_factor: int = 16, upscale: int = 4,
                 res_scale: float = 1, img_range: float = 255., rgb_mean: Sequence[float] = RGB_MEAN,
                 in_chans: Optional[int] = None):
        if num_in_ch is not None and in_chans is not None and num_in_ch != in_chans:
            raise ValueError(f'num_in_ch={num_in_ch} and in_chans={in_chans} disagree; give one of them')
        num_in_ch = num_in_ch if num_in_ch is not None else (in_chans if in_chans is not None else 3)
        num_out_ch = num_in_ch if num_out_ch is None else num_out_ch
        if not _supported_scale(upscale):
            raise ValueError(f'upscale={upscale} is not supported by RCAN; it supports 3 and powers of 2 '
                             f'(1, 2, 4, 8, ...)')
        rgb_mean = tuple(float(v) for v in rgb_mean)
        if num_out_ch != num_in_ch and len(rgb_mean) != 1:
            raise ValueError(f'num_out_ch={num_out_ch} differs from num_in_ch={num_in_ch}, but rgb_mean has '
                             f'{len(rgb_mean)} values for the output to add back; give a single rgb_mean value')
        super().__init__(in_chans=num_in_ch, upscale=upscale, img_range=img_range, rgb_mean=rgb_mean)
        self.num_out_ch = num_out_ch
        self.num_feat = self.num_features = num_feat
        self.num_group = num_group
        self.num_block = num_block
        self.res_scale = res_scale

        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[ResidualGroup(num_feat, num_block, squeeze_factor, res_scale)
                                    for _ in range(num_group)])
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.upsample = PixelShuffleUpsample(upscale, num_feat) if upscale > 1 else nn.Sequential()
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The residual groups applied to the shallow features ``x`` (B, num_feat, H, W), before the long skip."""
        use_checkpoint = self.grad_checkpointing and self.training and not torch.jit.is_scripting()
        for group in self.body:
            x = checkpoint(group, x) if use_checkpoint else group(x)
        return x

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        memory_format = torch.channels_last if _is_channels_last(x) else torch.contiguous_format
        if x.device.type == 'cpu':
            # oneDNN's CPU convs take channels-last maps as they are, but reorder contiguous (NCHW) ones to a
            # blocked layout and back around every conv: run the network channels-last, return the input's layout
            x = x.contiguous(memory_format=torch.channels_last)
        shallow = self.conv_first(x)
        features = self.conv_after_body(self.forward_features(shallow)) + shallow
        return self.conv_last(self.upsample(features)).contiguous(memory_format=memory_format)


# ---------------------------------------------------------------------------------------------------------------
# checkpoints: BasicSR layout, and the original RCAN / EDSR-PyTorch layout

def _attention_key(group: str, block: str, index: str, name: str) -> str:
    # conv_du holds (conv, ReLU, conv, sigmoid); BasicSR's attention puts the pooling first, shifting indices by 1
    return f'body.{group}.residual_group.{block}.rcab.3.attention.{int(index) + 1}.{name}'


#: (pattern of an original RCAN key, its BasicSR name); patterns are matched in full, in this order
_ORIGINAL_KEYS = (
    (re.compile(r'head\.0\.(weight|bias)'), lambda name: f'conv_first.{name}'),
    (re.compile(r'body\.(\d+)\.body\.(\d+)\.body\.([02])\.(weight|bias)'),
     lambda group, block, index, name: f'body.{group}.residual_group.{block}.rcab.{index}.{name}'),
    (re.compile(r'body\.(\d+)\.body\.(\d+)\.body\.3\.conv_du\.([02])\.(weight|bias)'), _attention_key),
    (re.compile(r'body\.(\d+)\.body\.(\d+)\.(weight|bias)'), lambda group, _, name: f'body.{group}.conv.{name}'),
    (re.compile(r'body\.(\d+)\.(weight|bias)'), lambda _, name: f'conv_after_body.{name}'),
    (re.compile(r'tail\.0\.(\d+)\.(weight|bias)'), lambda index, name: f'upsample.{index}.{name}'),
    (re.compile(r'tail\.1\.(weight|bias)'), lambda name: f'conv_last.{name}'),
)

_MEAN_SHIFTS = (('sub_mean', -1.), ('add_mean', 1.))


def _is_original_layout(state_dict: Dict[str, torch.Tensor]) -> bool:
    return any(key.split('.', 1)[0] in ('head', 'tail', 'sub_mean', 'add_mean') for key in state_dict)


def _original_to_basicsr(key: str) -> str:
    """BasicSR name of an original (EDSR-PyTorch layout) RCAN key; other keys are returned unchanged."""
    for pattern, rename in _ORIGINAL_KEYS:
        match = pattern.fullmatch(key)
        if match:
            return rename(*match.groups())
    return key


def _check_mean_shift(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> None:
    """Check that the stored mean-shift convs are the fixed shift ``model`` applies (identity, ∓img_range·mean).

    Raises for another mean, range or a clearly trained shift; warns when they drifted by a small amount (the
    original training code left them trainable), since dropping them then changes outputs slightly.
    """
    mean = model.mean.detach().float().cpu().flatten()
    if mean.numel() == 1:
        mean = mean.expand(model.in_chans)
    drift = []
    for prefix, sign in _MEAN_SHIFTS:
        weight, bias = state_dict.get(f'{prefix}.weight'), state_dict.get(f'{prefix}.bias')
        if weight is not None:
            identity = torch.eye(model.in_chans).view(model.in_chans, model.in_chans, 1, 1)
            if weight.shape != identity.shape:
                raise ValueError(f'checkpoint key {prefix}.weight has shape {"x".join(map(str, weight.shape))}, but '
                                 f'the model has {model.in_chans} image channels')
            deviation = (weight.float().cpu() - identity).abs().max().item()
            if deviation > 1e-2:
                raise ValueError(f'checkpoint key {prefix}.weight differs from the identity by {deviation:.3g}, so '
                                 f'its mean shift cannot be dropped; this model applies a fixed mean shift')
            if deviation > 1e-6:
                drift.append(f'{prefix}.weight by {deviation:.2g}')
        if bias is not None:
            bias = bias.float().cpu().flatten()
            expected = sign * model.img_range * mean
            if bias.shape != expected.shape:
                raise ValueError(f'checkpoint key {prefix}.bias has {bias.numel()} values, but the model has '
                                 f'{model.in_chans} image channels')
            deviation = (bias - expected).abs().max().item()
            if deviation > 0.5:
                implied = ', '.join(f'{v:.4f}' for v in (sign * bias / model.img_range).tolist())
                raise ValueError(f'checkpoint key {prefix}.bias shifts by the mean ({implied}) at '
                                 f'img_range={model.img_range:g}, but the model uses rgb_mean='
                                 f'{tuple(round(v, 4) for v in mean.tolist())}; create it with the rgb_mean and '
                                 f'img_range the checkpoint was trained with')
            if deviation > 1e-3:
                drift.append(f'{prefix}.bias by {deviation:.2g}')
    if drift:
        _logger.warning(f'the checkpoint\'s mean-shift convs differ slightly from the fixed mean shift '
                        f'({", ".join(drift)}); they are dropped, which changes outputs slightly')


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> Dict[str, torch.Tensor]:
    """Turn a BasicSR, original RCAN (EDSR-PyTorch layout) or densezoo checkpoint into this model's state dict.

    Original checkpoints are renamed to BasicSR's names (``head.0`` → ``conv_first``, ``body.G.body.B.body.{0,2}`` →
    ``body.G.residual_group.B.rcab.{0,2}``, ``...body.3.conv_du.{0,2}`` → ``...rcab.3.attention.{1,3}``, the
    group's last conv ``body.G.body.B`` → ``body.G.conv``, ``body.G`` after the groups → ``conv_after_body``,
    ``tail.0`` → ``upsample``, ``tail.1`` → ``conv_last``); their ``sub_mean`` / ``add_mean`` convs are checked to
    be the mean shift the model applies (``rgb_mean``, ``img_range``), then dropped. Raises ``ValueError`` naming
    the first key or shape that does not fit ``model``.
    """
    state_dict = unwrap_checkpoint(state_dict, getattr(model, 'checkpoint_key', 'params'))
    state_dict = {key[len('module.'):] if key.startswith('module.') else key: value
                  for key, value in state_dict.items()}
    if _is_original_layout(state_dict):
        _check_mean_shift(state_dict, model)
        state_dict = {_original_to_basicsr(key): value for key, value in state_dict.items()
                      if key.split('.', 1)[0] not in ('sub_mean', 'add_mean')}
    return sr_checkpoint_filter_fn(state_dict, model)


def original_state_dict(model: 'RCAN') -> Dict[str, torch.Tensor]:
    """``model``'s weights in the original RCAN (EDSR-PyTorch) layout, the inverse of ``checkpoint_filter_fn``:
    the renames listed there, and the fixed ``sub_mean`` / ``add_mean`` convs (identity weights, biases ∓
    ``img_range · rgb_mean``) that the original model holds as parameters."""
    groups, blocks = model.num_group, model.num_block
    renames = (
        (r'conv_first\.(\w+)', r'head.0.\1'),
        (r'body\.(\d+)\.residual_group\.(\d+)\.rcab\.([02])\.(\w+)', r'body.\1.body.\2.body.\3.\4'),
        (r'body\.(\d+)\.residual_group\.(\d+)\.rcab\.3\.attention\.1\.(\w+)', r'body.\1.body.\2.body.3.conv_du.0.\3'),
        (r'body\.(\d+)\.residual_group\.(\d+)\.rcab\.3\.attention\.3\.(\w+)', r'body.\1.body.\2.body.3.conv_du.2.\3'),
        (r'body\.(\d+)\.conv\.(\w+)', rf'body.\1.body.{blocks}.\2'),
        (r'conv_after_body\.(\w+)', rf'body.{groups}.\1'),
        (r'upsample\.(\d+)\.(\w+)', r'tail.0.\1.\2'),
        (r'conv_last\.(\w+)', r'tail.1.\1'),
    )
    out = {}
    for key, value in model.state_dict().items():
        for pattern, replacement in renames:
            if re.fullmatch(pattern, key):
                out[re.sub(pattern, replacement, key)] = value.clone()
                break
        else:
            raise ValueError(f'{key} has no place in the original RCAN layout')
    channels = model.in_chans
    mean = (model.mean.detach().float().cpu().flatten() * torch.ones(channels)) * model.img_range
    identity = torch.eye(channels).view(channels, channels, 1, 1)
    for prefix, sign in _MEAN_SHIFTS:
        out[f'{prefix}.weight'] = identity.clone()
        out[f'{prefix}.bias'] = sign * mean
    return out


# ---------------------------------------------------------------------------------------------------------------
# registered configurations

_SOURCE = 'https://github.com/yulunzhang/RCAN'
_PAPER = ('arXiv:1807.02758',)

CONFIGS = {f'rcan_x{s}': dict(num_feat=64, num_group=10, num_block=20, squeeze_factor=16, upscale=s, res_scale=1,
                              img_range=255., rgb_mean=RGB_MEAN) for s in (2, 3, 4)}


def _cfg(scale: int) -> dict:
    notes = (f'upscale x{scale}; paper configuration (10 residual groups x 20 RCABs, 64 features, squeeze 16), '
             f'trained on DIV2K with bicubic (BI) downsampling',
             f'Official weights: RCAN_BIX{scale}.pt of the RCAN authors (original layout; download links in the '
             f'README of yulunzhang/RCAN, no direct URL)'
             + (", or the BasicSR conversion RCAN_BIX4-official.pth that BasicSR's test_RCAN.yml loads" if scale == 4
                else '')
             + '; load the file with pretrained_cfg_overlay=dict(file=...) (it goes through checkpoint_filter_fn)')
    return sr_cfg(source=_SOURCE, paper=_PAPER, scale=scale, input_size=(3, 48, 48), license=None, notes=notes)


def _create_rcan(variant: str, pretrained: bool = False, **kwargs) -> RCAN:
    """Build through timm; pretrained weights load through this module's ``checkpoint_filter_fn``."""
    if 'num_in_ch' in kwargs and 'in_chans' not in kwargs:
        kwargs['in_chans'] = kwargs['num_in_ch']  # else timm passes in_chans from the cfg
    return create_sr_model(RCAN, variant, pretrained, filter_fn=checkpoint_filter_fn, **kwargs)


default_cfgs = generate_default_cfgs({f'{name}.div2k': _cfg(cfg['upscale']) for name, cfg in CONFIGS.items()})
register_models(__name__, _create_rcan, ['rcan_x2', 'rcan_x3', 'rcan_x4'], CONFIGS, title='RCAN')
