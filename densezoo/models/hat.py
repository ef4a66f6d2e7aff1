"""HAT: Hybrid Attention Transformer for image super-resolution.

``HAT`` keeps SwinIR's skeleton; its residual groups (``RHAG``) run hybrid attention blocks (``HAB``) and an
overlapping cross-attention block (``OCAB``). It has the official constructor arguments, parameter names and outputs.
Registered: ``hat_s_x{2,3,4}``, ``hat_x{2,3,4}``, ``hat_l_x{2,3,4}``, each also with ``dwa`` / ``mudd`` connections.

Papers: https://arxiv.org/abs/2205.04437, https://arxiv.org/abs/2309.05239 — official code:
https://github.com/XPixelGroup/HAT
Design notes and how to load the official weights: docs/sr-models.md.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from timm.models import generate_default_cfgs

from densezoo.layers.channel_attention import ChannelAttention
from densezoo.layers.window_attention import (LeanMlp, SwinIRBlock, fast_linear, gather_position_bias,
                                              merge_heads, relative_position_index, window_attention, window_merge,
                                              window_partition)
from densezoo.models._common import register_models
from densezoo.models._sr import (WINDOW_SR_STAGES, ConnectedWindowSR, WindowSRTransformer,
                                 check_pixelshuffle_only, connected_sr_cfgs, create_sr_model, map_to_tokens,
                                 register_stream_rule, residual_conv, scale_group_conv, scale_linear_, sr_cfg,
                                 tokens_to_map)
from densezoo.models.connect import StageFamily, register_family

__all__ = ['HAT', 'RHAG', 'HATLayer', 'HAB', 'OCAB', 'CAB', 'overlap_position_index']


def overlap_position_index(window_size: int, overlap_size: int) -> torch.Tensor:
    """(ws², ows²) index of the overlapping cross-attention bias table, with the official values.

    Entry (i, j) encodes the offset of key j (in the ows×ows overlapping window) from query i (in the ws×ws window)
    as ``(dy + ws − ows + 1) · (ws + ows − 1) + (dx + ws − ows + 1)``. The official shift does not make every entry
    non-negative; negative entries read the (ws + ows − 1)² table from its end, as tensor indexing does, which still
    gives each offset its own entry.
    """
    def grid(side):
        rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing='ij')
        return torch.stack((rows.flatten(), cols.flatten()))  # (2, side²)

    offsets = grid(overlap_size)[:, None, :] - grid(window_size)[:, :, None] + (window_size - overlap_size + 1)
    return offsets[0] * (window_size + overlap_size - 1) + offsets[1]


class CAB(nn.Module):
    """Channel attention block: conv3×3 (C → C/compress_ratio), GELU, conv3×3 (→ C), channel attention."""

    def __init__(self, num_feat: int, compress_ratio: int = 3, squeeze_factor: int = 30):
        super().__init__()
        hidden = num_feat // compress_ratio
        self.cab = nn.Sequential(
            nn.Conv2d(num_feat, hidden, 3, 1, 1), nn.GELU(), nn.Conv2d(hidden, num_feat, 3, 1, 1),
            ChannelAttention(num_feat, squeeze_factor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cab(x)


class HAB(SwinIRBlock):
    """Hybrid attention block: (shifted) window attention plus ``conv_scale · CAB`` on the same normalised input,
    then the MLP; both pre-norm residual. Tokens come as (B, H·W, C) with the grid size given to ``forward``."""

    def __init__(self, dim, input_resolution, num_heads, window_size=7, shift_size=0, compress_ratio=3,
                 squeeze_factor=30, conv_scale=0.01, mlp_ratio=4., qkv_bias=True, qk_scale=None, drop=0.,
                 attn_drop=0., drop_path=0., act_layer=nn.GELU, norm_layer=nn.LayerNorm):
        super().__init__(dim, input_resolution, num_heads, window_size=window_size, shift_size=shift_size,
                         mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop, attn_drop=attn_drop,
                         drop_path=drop_path, act_layer=act_layer, norm_layer=norm_layer)
        self.conv_scale = conv_scale
        self.conv_block = CAB(dim, compress_ratio, squeeze_factor)

    def forward(self, x: torch.Tensor, x_size: Tuple[int, int]) -> torch.Tensor:
        normed = self.norm1(x)
        conv = map_to_tokens(self.conv_block(tokens_to_map(normed, x_size)))
        x = x + self.drop_path(self.attend(normed, x_size)) + conv * self.conv_scale
        return x + self.drop_path(self.mlp(self.norm2(x)))


class OCAB(nn.Module):
    """Overlapping cross-attention block (official names).

    Queries come from the ws×ws windows of the normalised tokens; keys and values from overlapping windows of side
    ows = ws + int(overlap_ratio · ws) centred on them (zero padding of (ows − ws) / 2 at the borders, applied after
    the key/value projection). The attention has its own (ws + ows − 1)² relative-position bias table; its output
    projection is added to the input, then an MLP (``mlp_ratio``) follows as a pre-norm residual.
    """

    def __init__(self, dim, input_resolution, window_size, overlap_ratio, num_heads, qkv_bias=True, qk_scale=None,
                 mlp_ratio=2, norm_layer=nn.LayerNorm):
        super().__init__()
        self.dim = dim
        self.input_resolution = tuple(input_resolution)
        self.window_size = window_size
        self.num_heads = num_heads
        self.overlap_win_size = int(window_size * overlap_ratio) + window_size
        extra = self.overlap_win_size - window_size
        if extra % 2:
            raise ValueError(f'overlap_ratio={overlap_ratio} with window_size={window_size} gives overlapping '
                             f'windows of {self.overlap_win_size}, {extra} larger than the window; the difference '
                             f'must be even')
        if dim % num_heads:
            raise ValueError(f'embed_dim={dim} must be divisible by num_heads={num_heads}')
        self.padding = extra // 2
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        table = (window_size + self.overlap_win_size - 1) ** 2
        self.norm1 = norm_layer(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table, num_heads))
        # the official index modulo the table size: the same entries, all non-negative
        self.register_buffer('relative_position_index',
                             overlap_position_index(window_size, self.overlap_win_size) % table, persistent=False)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = norm_layer(dim)
        self.mlp = LeanMlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=.02)

    def position_bias(self) -> torch.Tensor:
        """Additive scores (heads, ws², ows²)."""
        return gather_position_bias(self.relative_position_bias_table, self.relative_position_index)

    def forward(self, x: torch.Tensor, x_size: Tuple[int, int]) -> torch.Tensor:
        height, width = x_size
        batch, tokens, dim = x.shape
        ws, ows, heads = self.window_size, self.overlap_win_size, self.num_heads
        qkv = fast_linear(self.norm1(x), self.qkv.weight, self.qkv.bias).view(batch, height, width, 3 * dim)
        q = window_partition(qkv[..., :dim], ws)  # (B, nW, ws², C)
        kv = qkv[..., dim:]
        if self.padding:
            kv = F.pad(kv, (0, 0, self.padding, self.padding, self.padding, self.padding))
        # overlapping windows (B, nH, nW, 2C, ows, ows) -> (B, nW, ows², 2C), in the order of window_partition
        kv = kv.unfold(1, ows, ws).unfold(2, ows, ws)
        kv = kv.permute(0, 1, 2, 4, 5, 3).reshape(batch, q.shape[1], ows * ows, 2 * dim)
        k, v = kv.view(batch, q.shape[1], ows * ows, 2, heads, -1).permute(3, 0, 1, 4, 2, 5).unbind(0)
        q = q.view(batch, q.shape[1], ws * ws, heads, -1).transpose(2, 3)
        out = window_attention(q, k, v, self.position_bias(), None, self.scale)
        out = window_merge(merge_heads(out), ws, height, width)
        x = fast_linear(out.reshape(batch, tokens, dim), self.proj.weight, self.proj.bias) + x
        return x + self.mlp(self.norm2(x))

    def extra_repr(self) -> str:
        return (f'dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}, '
                f'overlap_win_size={self.overlap_win_size}')


class HATLayer(nn.Module):
    """The attention blocks of one residual group (official ``AttenBlocks``): HABs, alternating unshifted and
    shifted windows, then one OCAB."""

    def __init__(self, dim, input_resolution, depth, num_heads, window_size, compress_ratio, squeeze_factor,
                 conv_scale, overlap_ratio, mlp_ratio=4., qkv_bias=True, qk_scale=None, drop=0., attn_drop=0.,
                 drop_path=0., norm_layer=nn.LayerNorm):
        super().__init__()
        self.blocks = nn.ModuleList([
            HAB(dim, input_resolution, num_heads, window_size=window_size,
                shift_size=0 if i % 2 == 0 else window_size // 2, compress_ratio=compress_ratio,
                squeeze_factor=squeeze_factor, conv_scale=conv_scale, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                qk_scale=qk_scale, drop=drop, attn_drop=attn_drop,
                drop_path=drop_path[i] if isinstance(drop_path, (list, tuple)) else drop_path,
                norm_layer=norm_layer)
            for i in range(depth)])
        self.overlap_attn = OCAB(dim, input_resolution, window_size, overlap_ratio, num_heads, qkv_bias=qkv_bias,
                                 qk_scale=qk_scale, mlp_ratio=mlp_ratio, norm_layer=norm_layer)

    def forward(self, x: torch.Tensor, x_size: Tuple[int, int]) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, x_size)
        return self.overlap_attn(x, x_size)


class RHAG(nn.Module):
    """Residual hybrid attention group: the attention blocks, a conv on the 2-D map, and the group residual.

    Called as ``group(x, x_size)`` on tokens (B, H·W, C); H and W must be multiples of the window.
    """

    def __init__(self, dim, input_resolution, depth, num_heads, window_size, compress_ratio, squeeze_factor,
                 conv_scale, overlap_ratio, mlp_ratio=4., qkv_bias=True, qk_scale=None, drop=0., attn_drop=0.,
                 drop_path=0., norm_layer=nn.LayerNorm, resi_connection='1conv'):
        super().__init__()
        self.residual_group = HATLayer(dim, input_resolution, depth, num_heads, window_size, compress_ratio,
                                       squeeze_factor, conv_scale, overlap_ratio, mlp_ratio, qkv_bias, qk_scale,
                                       drop, attn_drop, drop_path, norm_layer)
        self.conv = residual_conv(dim, resi_connection)

    def forward(self, x: torch.Tensor, x_size: Tuple[int, int]) -> torch.Tensor:
        return map_to_tokens(self.conv(tokens_to_map(self.residual_group(x, x_size), x_size))) + x


class HAT(WindowSRTransformer):
    """HAT with the official constructor (argument names, defaults and meanings).

    Args:
        img_size: Training patch size (LR); it must not be smaller than ``window_size`` (equal: no shifted windows).
        patch_size: Accepted for compatibility; HAT always works on single pixels.
        in_chans: Image channels.
        embed_dim: Feature width.
        depths: Hybrid attention blocks per residual group (RHAG).
        num_heads: Attention heads per residual group (they must divide ``embed_dim``).
        window_size: Attention window side.
        compress_ratio: Channel reduction inside the CAB convs (C → C / compress_ratio).
        squeeze_factor: Channel reduction of the CAB channel attention.
        conv_scale: Weight of the CAB branch beside the window attention.
        overlap_ratio: Extra side of the overlapping key/value windows, as a fraction of the window.
        mlp_ratio: MLP hidden width / embed_dim (HABs and OCABs).
        qkv_bias, qk_scale, drop_rate, attn_drop_rate, drop_path_rate, norm_layer, ape, patch_norm: as in SwinIR.
        use_checkpoint: Gradient checkpointing per residual group (also ``set_grad_checkpointing``).
        upscale: 2, 3, 4 or 8.
        img_range: 1. or 255.
        upsampler: 'pixelshuffle' (the only reconstruction of the official model).
        resi_connection: '1conv' or 'identity'.
    """
    checkpoint_key = 'params_ema'

    def __init__(self, img_size=64, patch_size=1, in_chans=3, embed_dim=96, depths=(6, 6, 6, 6),
                 num_heads=(6, 6, 6, 6), window_size=7, compress_ratio=3, squeeze_factor=30, conv_scale=0.01,
                 overlap_ratio=0.5, mlp_ratio=4., qkv_bias=True, qk_scale=None, drop_rate=0., attn_drop_rate=0.,
                 drop_path_rate=0.1, norm_layer=nn.LayerNorm, ape=False, patch_norm=True, use_checkpoint=False,
                 upscale=2, img_range=1., upsampler='', resi_connection='1conv'):
        check_pixelshuffle_only('HAT', upsampler, resi_connection)
        if len(depths) != len(num_heads):
            raise ValueError(f'depths ({len(depths)} groups) and num_heads ({len(num_heads)} groups) must have the '
                             f'same length')
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                         window_size=window_size, upscale=upscale, img_range=img_range, upsampler=upsampler,
                         resi_connection=resi_connection, norm_layer=norm_layer, patch_norm=patch_norm, ape=ape,
                         drop_rate=drop_rate)
        if min(self.img_size) < window_size:
            raise ValueError(f'img_size={img_size} is smaller than window_size={window_size}; HAT needs '
                             f'img_size >= window_size')
        self.compress_ratio = compress_ratio
        self.squeeze_factor = squeeze_factor
        self.conv_scale = conv_scale
        self.overlap_ratio = overlap_ratio
        self.mlp_ratio = mlp_ratio
        self.grad_checkpointing = use_checkpoint
        rates = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            self.layers.append(RHAG(
                embed_dim, self.patches_resolution, depth, heads, window_size, compress_ratio, squeeze_factor,
                conv_scale, overlap_ratio, mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate,
                rates[sum(depths[:i]):sum(depths[:i + 1])], norm_layer, resi_connection))
        overlap_size = window_size + int(overlap_ratio * window_size)
        # the official top-level indices (its state dict stores them); derived here, so not in the state dict
        self.register_buffer('relative_position_index_SA', relative_position_index(window_size), persistent=False)
        self.register_buffer('relative_position_index_OCA', overlap_position_index(window_size, overlap_size),
                             persistent=False)
        self.finish()

    def official_buffers(self):
        """The official HAT stores only its two top-level position indices (its layers get them as arguments)."""
        return {'relative_position_index_SA': self.relative_position_index_SA,
                'relative_position_index_OCA': self.relative_position_index_OCA}


class ConnectedHAT(ConnectedWindowSR, HAT):
    """HAT whose residual groups run through a connection (``connection``, ``connection_args``, then ``HAT``'s
    arguments)."""


def _scale_hab(block: HAB, factor: float) -> None:
    block.conv_scale *= factor  # the CAB branch (its channel attention is not homogeneous: scaled after it)


def _scale_ocab(block: OCAB, factor: float) -> None:
    scale_linear_(block.proj, factor)
    scale_linear_(block.mlp.fc2, factor)


register_stream_rule(HAB, _scale_hab)  # HAB is a SwinIRBlock: its attention and MLP are scaled as such
register_stream_rule(OCAB, _scale_ocab)
register_stream_rule(RHAG, scale_group_conv)
register_family(StageFamily(name='HAT', connected_models={HAT: ConnectedHAT}, **WINDOW_SR_STAGES))


# ---------------------------------------------------------------------------------------------------------------
# registered configurations

_SOURCE = 'https://github.com/XPixelGroup/HAT'
_WEIGHTS_PAGE = 'https://drive.google.com/drive/folders/1HpmReFfoUqUbnAOQ7rvOeNU3uf_m69w0'
_PAPER = ('arXiv:2205.04437', 'arXiv:2309.05239')

_BASE = dict(img_size=64, window_size=16, overlap_ratio=0.5, conv_scale=0.01, mlp_ratio=2, img_range=1.,
             upsampler='pixelshuffle', resi_connection='1conv')
_HAT_S = dict(_BASE, embed_dim=144, depths=(6,) * 6, num_heads=(6,) * 6, compress_ratio=24, squeeze_factor=24)
_HAT = dict(_BASE, embed_dim=180, depths=(6,) * 6, num_heads=(6,) * 6, compress_ratio=3, squeeze_factor=30)
_HAT_L = dict(_HAT, depths=(6,) * 12, num_heads=(6,) * 12)
CONFIGS = {
    **{f'hat_s_x{s}': dict(_HAT_S, upscale=s) for s in (2, 3, 4)},
    **{f'hat_x{s}': dict(_HAT, upscale=s) for s in (2, 3, 4)},
    **{f'hat_l_x{s}': dict(_HAT_L, upscale=s) for s in (2, 3, 4)},
}


def _note(file: str, training: str) -> str:
    return (f'Official weights {file} ({training}; key params_ema) from the HAT release folder on Google Drive '
            f'({_WEIGHTS_PAGE}, linked from the HAT README); no stable direct URL: download the file and load it '
            f'with pretrained_cfg_overlay=dict(file=...).')


def _cfg(file: str, scale: int, training: str) -> dict:
    return sr_cfg(source=_SOURCE, paper=_PAPER, scale=scale, notes=(_note(file, training),))


def _release_cfgs() -> dict:
    scratch = 'trained on DF2K'
    imagenet = 'pretrained on ImageNet, fine-tuned on DF2K'
    cfgs = {}
    for s in (2, 3, 4):
        cfgs[f'hat_s_x{s}.df2k'] = _cfg(f'HAT-S_SRx{s}.pth', s, scratch)
    for s in (2, 3, 4):
        cfgs[f'hat_x{s}.df2k'] = _cfg(f'HAT_SRx{s}.pth', s, scratch)
        cfgs[f'hat_x{s}.imagenet_df2k'] = _cfg(f'HAT_SRx{s}_ImageNet-pretrain.pth', s, imagenet)
    cfgs['hat_x4.real_gan'] = _cfg('Real_HAT_GAN_SRx4.pth', 4, 'real-world SR, GAN-trained')
    cfgs['hat_x4.real_gan_sharper'] = _cfg('Real_HAT_GAN_SRx4_sharper.pth', 4,
                                           'real-world SR, GAN-trained on sharpened targets')
    for s in (2, 3, 4):
        cfgs[f'hat_l_x{s}.imagenet_df2k'] = _cfg(f'HAT-L_SRx{s}_ImageNet-pretrain.pth', s, imagenet)
    return cfgs


#: registered connection -> options of the registered variants
CONNECTIONS = {'dwa': {}, 'mudd': {}}


def _create_hat(variant: str, pretrained: bool = False, **kwargs) -> HAT:
    return create_sr_model(ConnectedHAT if 'connection' in kwargs else HAT, variant, pretrained, **kwargs)


default_cfgs = generate_default_cfgs({**_release_cfgs(), **connected_sr_cfgs(_release_cfgs(), CONNECTIONS)})
register_models(__name__, _create_hat, [
    'hat_s_x2', 'hat_s_x2_dwa', 'hat_s_x2_mudd',
    'hat_s_x3', 'hat_s_x3_dwa', 'hat_s_x3_mudd',
    'hat_s_x4', 'hat_s_x4_dwa', 'hat_s_x4_mudd',
    'hat_x2', 'hat_x2_dwa', 'hat_x2_mudd',
    'hat_x3', 'hat_x3_dwa', 'hat_x3_mudd',
    'hat_x4', 'hat_x4_dwa', 'hat_x4_mudd',
    'hat_l_x2', 'hat_l_x2_dwa', 'hat_l_x2_mudd',
    'hat_l_x3', 'hat_l_x3_dwa', 'hat_l_x3_mudd',
    'hat_l_x4', 'hat_l_x4_dwa', 'hat_l_x4_mudd',
], CONFIGS, CONNECTIONS, title='HAT')
