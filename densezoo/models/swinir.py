"""SwinIR: image restoration with residual groups of Swin Transformer layers (residual-in-residual).

``SwinIR`` takes the official constructor arguments with their official names and meanings, has the official
parameter names and counts, and reproduces the official outputs. Registered: classical, lightweight and real-world
SR, denoising and JPEG artifact removal (``swinir_classical_x2``, ``swinir_light_x4``, ...), and ``dwa`` / ``mudd``
connections across the residual groups.

Paper: https://arxiv.org/abs/2108.10257 — official code: https://github.com/JingyunLiang/SwinIR
Design notes: docs/sr-models.md.
"""
from typing import Tuple

import torch
from torch import nn

from timm.models import generate_default_cfgs

from densezoo.layers.window_attention import SwinIRBlock
from densezoo.models._common import register_models
from densezoo.models._sr import (WINDOW_SR_STAGES, ConnectedWindowSR, WindowSRTransformer, connected_sr_cfgs,
                                 create_sr_model, map_to_tokens, register_stream_rule, residual_conv,
                                 scale_group_conv, sr_cfg, tokens_to_map)
from densezoo.models.connect import StageFamily, register_family

__all__ = ['SwinIR', 'RSTB', 'SwinIRLayer']


class SwinIRLayer(nn.Module):
    """A sequence of Swin layers, alternating unshifted and shifted windows (official ``BasicLayer``)."""

    def __init__(self, dim, input_resolution, depth, num_heads, window_size, mlp_ratio=4., qkv_bias=True,
                 qk_scale=None, drop=0., attn_drop=0., drop_path=0., norm_layer=nn.LayerNorm):
        super().__init__()
        self.blocks = nn.ModuleList([
            SwinIRBlock(dim, input_resolution, num_heads, window_size=window_size,
                        shift_size=0 if i % 2 == 0 else window_size // 2, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                        qk_scale=qk_scale, drop=drop, attn_drop=attn_drop,
                        drop_path=drop_path[i] if isinstance(drop_path, (list, tuple)) else drop_path,
                        norm_layer=norm_layer)
            for i in range(depth)])

    def forward(self, x: torch.Tensor, x_size: Tuple[int, int]) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, x_size)
        return x


class RSTB(nn.Module):
    """Residual Swin Transformer Block: Swin layers, a conv on the 2-D map, and the group's residual."""

    def __init__(self, dim, input_resolution, depth, num_heads, window_size, mlp_ratio=4., qkv_bias=True,
                 qk_scale=None, drop=0., attn_drop=0., drop_path=0., norm_layer=nn.LayerNorm,
                 resi_connection='1conv'):
        super().__init__()
        self.residual_group = SwinIRLayer(dim, input_resolution, depth, num_heads, window_size, mlp_ratio,
                                          qkv_bias, qk_scale, drop, attn_drop, drop_path, norm_layer)
        self.conv = residual_conv(dim, resi_connection)

    def forward(self, x: torch.Tensor, x_size: Tuple[int, int]) -> torch.Tensor:
        return map_to_tokens(self.conv(tokens_to_map(self.residual_group(x, x_size), x_size))) + x


class SwinIR(WindowSRTransformer):
    """SwinIR with the official constructor (argument names, defaults and meanings).

    Args:
        img_size: Training patch size (LR); only the shift / window of tiny models depend on it.
        patch_size: Accepted for compatibility; SwinIR always works on single pixels.
        in_chans: Image channels.
        embed_dim: Feature width.
        depths: Swin layers per residual group (RSTB).
        num_heads: Attention heads per residual group.
        window_size: Attention window side.
        mlp_ratio: MLP hidden width / embed_dim.
        qkv_bias, qk_scale, drop_rate, attn_drop_rate, drop_path_rate, norm_layer, ape, patch_norm: as in Swin.
        use_checkpoint: Gradient checkpointing (also ``set_grad_checkpointing``).
        upscale: 2/3/4/8 for SR, 1 for denoising and JPEG artifact removal.
        img_range: 1. or 255.
        upsampler: 'pixelshuffle', 'pixelshuffledirect', 'nearest+conv' or '' (same-size restoration).
        resi_connection: '1conv' or '3conv'.
    """

    def __init__(self, img_size=64, patch_size=1, in_chans=3, embed_dim=96, depths=(6, 6, 6, 6),
                 num_heads=(6, 6, 6, 6), window_size=7, mlp_ratio=4., qkv_bias=True, qk_scale=None, drop_rate=0.,
                 attn_drop_rate=0., drop_path_rate=0.1, norm_layer=nn.LayerNorm, ape=False, patch_norm=True,
                 use_checkpoint=False, upscale=2, img_range=1., upsampler='', resi_connection='1conv'):
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                         window_size=window_size, upscale=upscale, img_range=img_range, upsampler=upsampler,
                         resi_connection=resi_connection, norm_layer=norm_layer, patch_norm=patch_norm, ape=ape,
                         drop_rate=drop_rate)
        if len(depths) != len(num_heads):
            raise ValueError(f'depths ({len(depths)} groups) and num_heads ({len(num_heads)} groups) must have the '
                             f'same length')
        self.mlp_ratio = mlp_ratio
        self.grad_checkpointing = use_checkpoint
        rates = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            self.layers.append(RSTB(
                embed_dim, self.patches_resolution, depth, heads, window_size, mlp_ratio, qkv_bias, qk_scale,
                drop_rate, attn_drop_rate, rates[sum(depths[:i]):sum(depths[:i + 1])], norm_layer, resi_connection))
        self.finish()
        self.checkpoint_key = 'params_ema' if upsampler == 'nearest+conv' else 'params'


class ConnectedSwinIR(ConnectedWindowSR, SwinIR):
    """SwinIR whose residual groups run through a connection (``connection``, ``connection_args``, then ``SwinIR``'s
    arguments)."""


register_stream_rule(RSTB, scale_group_conv)
register_family(StageFamily(name='SwinIR', connected_models={SwinIR: ConnectedSwinIR}, **WINDOW_SR_STAGES))


# ---------------------------------------------------------------------------------------------------------------
# configurations and registration

_RELEASE = 'https://github.com/JingyunLiang/SwinIR/releases/download/v0.0/'
_SOURCE = 'https://github.com/JingyunLiang/SwinIR'
_PAPER = ('arXiv:2108.10257',)

_M = dict(window_size=8, img_range=1., depths=(6,) * 6, embed_dim=180, num_heads=(6,) * 6, mlp_ratio=2,
          resi_connection='1conv')
CONFIGS = {
    **{f'swinir_classical_x{s}': dict(_M, upscale=s, img_size=64, upsampler='pixelshuffle') for s in (2, 3, 4, 8)},
    **{f'swinir_light_x{s}': dict(upscale=s, img_size=64, window_size=8, img_range=1., depths=(6,) * 4,
                                  embed_dim=60, num_heads=(6,) * 4, mlp_ratio=2, upsampler='pixelshuffledirect',
                                  resi_connection='1conv') for s in (2, 3, 4)},
    'swinir_real_x4': dict(_M, upscale=4, img_size=64, upsampler='nearest+conv'),
    'swinir_real_l_x4': dict(_M, upscale=4, img_size=64, depths=(6,) * 9, embed_dim=240, num_heads=(8,) * 9,
                             upsampler='nearest+conv', resi_connection='3conv'),
    'swinir_denoise_gray': dict(_M, upscale=1, in_chans=1, img_size=128, upsampler=''),
    'swinir_denoise_color': dict(_M, upscale=1, in_chans=3, img_size=128, upsampler=''),
    'swinir_jpeg': dict(_M, upscale=1, in_chans=1, img_size=126, window_size=7, img_range=255., upsampler=''),
    'swinir_jpeg_color': dict(_M, upscale=1, in_chans=3, img_size=126, window_size=7, img_range=255., upsampler=''),
}


def _cfg(file: str, scale: int, in_chans: int = 3, size: int = 64, **kwargs) -> dict:
    return sr_cfg(url=_RELEASE + file, source=_SOURCE, paper=_PAPER, scale=scale,
                  input_size=(in_chans, size, size), **kwargs)


def _release_cfgs() -> dict:
    cfgs = {}
    for s in (2, 3, 4, 8):
        cfgs[f'swinir_classical_x{s}.df2k_s64w8'] = _cfg(f'001_classicalSR_DF2K_s64w8_SwinIR-M_x{s}.pth', s)
        cfgs[f'swinir_classical_x{s}.div2k_s48w8'] = _cfg(f'001_classicalSR_DIV2K_s48w8_SwinIR-M_x{s}.pth', s,
                                                          size=48)
    for s in (2, 3, 4):
        cfgs[f'swinir_light_x{s}.div2k_s64w8'] = _cfg(f'002_lightweightSR_DIV2K_s64w8_SwinIR-S_x{s}.pth', s)
    cfgs['swinir_real_x4.bsrgan_dfo_gan'] = _cfg('003_realSR_BSRGAN_DFO_s64w8_SwinIR-M_x4_GAN.pth', 4)
    cfgs['swinir_real_l_x4.bsrgan_dfowmfc_gan'] = _cfg('003_realSR_BSRGAN_DFOWMFC_s64w8_SwinIR-L_x4_GAN.pth', 4)
    for noise in (15, 25, 50):
        cfgs[f'swinir_denoise_gray.noise{noise}'] = _cfg(f'004_grayDN_DFWB_s128w8_SwinIR-M_noise{noise}.pth', 1,
                                                         in_chans=1, size=128)
        cfgs[f'swinir_denoise_color.noise{noise}'] = _cfg(f'005_colorDN_DFWB_s128w8_SwinIR-M_noise{noise}.pth', 1,
                                                          size=128)
    for quality in (10, 20, 30, 40):
        cfgs[f'swinir_jpeg.q{quality}'] = _cfg(f'006_CAR_DFWB_s126w7_SwinIR-M_jpeg{quality}.pth', 1, in_chans=1,
                                               size=126)
        cfgs[f'swinir_jpeg_color.q{quality}'] = _cfg(f'006_colorCAR_DFWB_s126w7_SwinIR-M_jpeg{quality}.pth', 1,
                                                     size=126)
    return cfgs


#: registered connection -> options of the registered variants
CONNECTIONS = {'dwa': {}, 'mudd': {}}


def _create_swinir(variant: str, pretrained: bool = False, **kwargs) -> SwinIR:
    return create_sr_model(ConnectedSwinIR if 'connection' in kwargs else SwinIR, variant, pretrained, **kwargs)


default_cfgs = generate_default_cfgs({**_release_cfgs(), **connected_sr_cfgs(_release_cfgs(), CONNECTIONS)})
register_models(__name__, _create_swinir, [
    'swinir_classical_x2', 'swinir_classical_x2_dwa', 'swinir_classical_x2_mudd',
    'swinir_classical_x3', 'swinir_classical_x3_dwa', 'swinir_classical_x3_mudd',
    'swinir_classical_x4', 'swinir_classical_x4_dwa', 'swinir_classical_x4_mudd',
    'swinir_classical_x8', 'swinir_classical_x8_dwa', 'swinir_classical_x8_mudd',
    'swinir_light_x2', 'swinir_light_x2_dwa', 'swinir_light_x2_mudd',
    'swinir_light_x3', 'swinir_light_x3_dwa', 'swinir_light_x3_mudd',
    'swinir_light_x4', 'swinir_light_x4_dwa', 'swinir_light_x4_mudd',
    'swinir_real_x4', 'swinir_real_x4_dwa', 'swinir_real_x4_mudd',
    'swinir_real_l_x4', 'swinir_real_l_x4_dwa', 'swinir_real_l_x4_mudd',
    'swinir_denoise_gray', 'swinir_denoise_gray_dwa', 'swinir_denoise_gray_mudd',
    'swinir_denoise_color', 'swinir_denoise_color_dwa', 'swinir_denoise_color_mudd',
    'swinir_jpeg', 'swinir_jpeg_dwa', 'swinir_jpeg_mudd',
    'swinir_jpeg_color', 'swinir_jpeg_color_dwa', 'swinir_jpeg_color_mudd',
], CONFIGS, CONNECTIONS, title='SwinIR')
