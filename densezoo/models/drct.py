"""DRCT: Dense-residual-connected Transformer for super-resolution (dense connections inside each group).

``DRCT`` runs residual dense groups (``RDG``) of five Swin layers, each layer reading the concatenation of the group
input and the growth features of the layers before it; official checkpoints and outputs match.

Paper: https://arxiv.org/abs/2404.00722 — official code: https://github.com/ming053l/DRCT
Design notes: docs/sr-models.md.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from timm.models import generate_default_cfgs

from densezoo.layers.window_attention import SwinIRBlock, fast_linear
from densezoo.models._common import register_models
from densezoo.models._sr import (WINDOW_SR_STAGES, ConnectedWindowSR, WindowSRTransformer,
                                 check_pixelshuffle_only, connected_sr_cfgs, create_sr_model, register_stream_rule,
                                 scale_linear_, sr_cfg)
from densezoo.models.connect import StageFamily, register_family

__all__ = ['DRCT', 'RDG']

#: Swin layers in every residual dense group (fixed in the official model)
LAYERS_PER_GROUP = 5


class RDG(nn.Module):
    """Residual dense group: five Swin layers densely connected through 1×1 adjust convs (official names).

    Takes and returns tokens (B, H·W, C) in the unshifted window order of its layers (``to_window_order``).
    """

    def __init__(self, dim, input_resolution, num_heads, window_size, mlp_ratio, qkv_bias, qk_scale, drop,
                 attn_drop, drop_path, norm_layer, gc, res_scale=0.2):
        super().__init__()
        self.dim = dim
        self.gc = gc
        self.res_scale = res_scale
        for k in range(LAYERS_PER_GROUP):
            width = dim + k * gc
            heads = num_heads if k == 0 else num_heads - width % num_heads
            block = SwinIRBlock(width, input_resolution, heads, window_size=window_size,
                                shift_size=window_size // 2 if k % 2 else 0,
                                mlp_ratio=mlp_ratio if k < 3 else 1, qkv_bias=qkv_bias, qk_scale=qk_scale,
                                drop=drop, attn_drop=attn_drop, drop_path=drop_path, norm_layer=norm_layer)
            self.add_module(f'swin{k + 1}', block)
            self.add_module(f'adjust{k + 1}', nn.Conv2d(width, gc if k < LAYERS_PER_GROUP - 1 else dim, 1))

    def _adjust(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """1×1 adjust conv on tokens (a linear map over channels), LeakyReLU(0.2) on the growth layers."""
        conv = getattr(self, f'adjust{k + 1}')
        x = fast_linear(x, conv.weight.flatten(1), conv.bias)
        return F.leaky_relu(x, 0.2) if k < LAYERS_PER_GROUP - 1 else x

    def forward(self, x: torch.Tensor, x_size: Tuple[int, int]) -> torch.Tensor:
        if torch.is_grad_enabled():
            # autograd keeps each layer's input, so the concatenations are separate tensors here
            features = x
            for k in range(LAYERS_PER_GROUP - 1):
                grown = self._adjust(k, getattr(self, f'swin{k + 1}')(features, x_size, windowed=True))
                features = torch.cat((features, grown), dim=-1)
        else:
            # inference: one buffer, each growth feature written once
            batch, tokens, dim = x.shape
            features = x.new_empty(batch, tokens, dim + (LAYERS_PER_GROUP - 1) * self.gc)
            features[..., :dim] = x
            for k in range(LAYERS_PER_GROUP - 1):
                width = dim + k * self.gc
                grown = self._adjust(k, getattr(self, f'swin{k + 1}')(features[..., :width], x_size, windowed=True))
                features[..., width:width + self.gc] = grown
        last = LAYERS_PER_GROUP - 1
        out = self._adjust(last, getattr(self, f'swin{last + 1}')(features, x_size, windowed=True))
        return torch.add(x, out, alpha=self.res_scale)


class DRCT(WindowSRTransformer):
    """DRCT with the official constructor (names, defaults, meanings; see the module docstring for the quirks).

    Only ``upsampler='pixelshuffle'`` reconstructs an image in the official model; other values raise here.
    ``resi_connection`` is '1conv' or 'identity'.
    """
    checkpoint_key = 'params_ema'

    def __init__(self, img_size=64, patch_size=1, in_chans=3, embed_dim=96, depths=(6, 6, 6, 6),
                 num_heads=(6, 6, 6, 6), window_size=7, compress_ratio=3, squeeze_factor=30, conv_scale=0.01,
                 overlap_ratio=0.5, mlp_ratio=4., qkv_bias=True, qk_scale=None, drop_rate=0., attn_drop_rate=0.,
                 drop_path_rate=0.1, norm_layer=nn.LayerNorm, ape=False, patch_norm=True, use_checkpoint=False,
                 upscale=2, img_range=1., upsampler='', resi_connection='1conv', gc=32):
        check_pixelshuffle_only('DRCT', upsampler, resi_connection)
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                         window_size=window_size, upscale=upscale, img_range=img_range, upsampler=upsampler,
                         resi_connection=resi_connection, norm_layer=norm_layer, patch_norm=patch_norm, ape=ape,
                         drop_rate=drop_rate)
        self.mlp_ratio = mlp_ratio
        self.gc = gc
        self.grad_checkpointing = use_checkpoint
        rates = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()
        if len(num_heads) < len(depths):
            raise ValueError(f'num_heads gives {len(num_heads)} values for {len(depths)} groups (len(depths)); give '
                             f'one per group')
        for i, heads in enumerate(num_heads[:len(depths)]):
            self.layers.append(RDG(embed_dim, self.patches_resolution, heads, window_size, mlp_ratio, qkv_bias,
                                   qk_scale, drop_rate, attn_drop_rate, rates[sum(depths[:i])], norm_layer, gc))
        if len(self.layers):
            self.body_window_size = self.layers[0].swin1.window_size  # the groups take tokens in window order
        self.finish()


class ConnectedDRCT(ConnectedWindowSR, DRCT):
    """DRCT whose residual groups run through a connection (``connection``, ``connection_args``, then ``DRCT``'s
    arguments)."""


def _scale_rdg(group: RDG, factor: float) -> None:
    # the adjust convs read the (scaled) dense features; LeakyReLU keeps the scale
    for k in range(LAYERS_PER_GROUP):
        scale_linear_(getattr(group, f'adjust{k + 1}'), factor, weight=False)


register_stream_rule(RDG, _scale_rdg)
register_family(StageFamily(name='DRCT', connected_models={DRCT: ConnectedDRCT}, **WINDOW_SR_STAGES))


_SOURCE = 'https://github.com/ming053l/DRCT'
_PAPER = ('arXiv:2404.00722',)
_BASE = dict(img_size=64, window_size=16, compress_ratio=3, squeeze_factor=30, conv_scale=0.01, overlap_ratio=0.5,
             img_range=1., embed_dim=180, mlp_ratio=2, upsampler='pixelshuffle', resi_connection='1conv', gc=32)
CONFIGS = {
    **{f'drct_x{s}': dict(_BASE, upscale=s, depths=(6,) * 6, num_heads=(6,) * 6) for s in (2, 3, 4)},
    **{f'drct_l_x{s}': dict(_BASE, upscale=s, depths=(6,) * 12, num_heads=(6,) * 12) for s in (2, 3, 4)},
}


def _release_cfgs() -> dict:
    note = ('Official weights (DRCT_SRx{s}.pth / DRCT-L_SRx{s}.pth, key params_ema) are linked from the DRCT '
            'README (Google Drive); load them with pretrained_cfg_overlay=dict(file=...).')
    cfgs = {}
    for s in (2, 3, 4):
        for arch in (f'drct_x{s}', f'drct_l_x{s}'):
            cfgs[f'{arch}.df2k'] = sr_cfg(source=_SOURCE, paper=_PAPER, scale=s, license='mit',
                                          notes=(note.format(s=s),))
    return cfgs


#: registered connection -> options of the registered variants
CONNECTIONS = {'dwa': {}, 'mudd': {}}


def _create_drct(variant: str, pretrained: bool = False, **kwargs) -> DRCT:
    return create_sr_model(ConnectedDRCT if 'connection' in kwargs else DRCT, variant, pretrained, **kwargs)


default_cfgs = generate_default_cfgs({**_release_cfgs(), **connected_sr_cfgs(_release_cfgs(), CONNECTIONS)})
register_models(__name__, _create_drct, [
    'drct_x2', 'drct_x2_dwa', 'drct_x2_mudd',
    'drct_x3', 'drct_x3_dwa', 'drct_x3_mudd',
    'drct_x4', 'drct_x4_dwa', 'drct_x4_mudd',
    'drct_l_x2', 'drct_l_x2_dwa', 'drct_l_x2_mudd',
    'drct_l_x3', 'drct_l_x3_dwa', 'drct_l_x3_mudd',
    'drct_l_x4', 'drct_l_x4_dwa', 'drct_l_x4_mudd',
], CONFIGS, CONNECTIONS, title='DRCT')
