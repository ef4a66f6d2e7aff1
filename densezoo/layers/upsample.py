"""Super-resolution reconstruction heads shared by SwinIR, DRCT, HAT, RCAN and RDN.

Module and parameter names follow the official implementations (``conv_before_upsample``, ``upsample``,
``conv_up1``, ``conv_hr``, ``conv_last``, ...), so official checkpoints load without renaming:

- ``pixelshuffle`` (classical SR): conv → LeakyReLU, then conv + PixelShuffle(2) per factor 2 (or one
  conv + PixelShuffle(3)), then a conv to the image channels;
- ``pixelshuffledirect`` (lightweight SR): one conv to scale²·channels + PixelShuffle;
- ``nearest+conv`` (real-world SR): nearest ×2 + conv per factor 2, LeakyReLU(0.2), conv_hr, conv_last;
- ``''`` (denoising, JPEG artifact removal): a conv to the image channels, added to the input.
"""
import math
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['UPSAMPLERS', 'check_upscale', 'PixelShuffleUpsample', 'PixelShuffleDirect', 'DenseUpsample',
           'SRReconstruction']

#: upsampler name -> scales it supports (described for error messages)
UPSAMPLERS: Dict[str, str] = {
    'pixelshuffle': '3 or a power of 2 (2, 4, 8, ...)',
    'pixelshuffledirect': 'any integer >= 1',
    'nearest+conv': '2 or 4',
    '': 'any (denoising and JPEG artifact removal keep the size; the output scale is 1)',
}


def _power_of_two(scale: int) -> bool:
    return scale >= 2 and scale & (scale - 1) == 0


def check_upscale(upsampler: str, upscale: int) -> None:
    """Raise a one-line ``ValueError`` when ``upsampler`` cannot produce ``upscale``."""
    if upsampler not in UPSAMPLERS:
        raise ValueError(f'upsampler={upsampler!r} is not known; choose one of '
                         + ', '.join(repr(name) for name in UPSAMPLERS))
    ok = {'pixelshuffle': _power_of_two(upscale) or upscale == 3,
          'pixelshuffledirect': upscale >= 1,
          'nearest+conv': upscale in (2, 4),
          '': True}[upsampler]
    if not ok:
        raise ValueError(f'upscale={upscale} is not supported by upsampler={upsampler!r}; it supports '
                         f'{UPSAMPLERS[upsampler]}')


class PixelShuffleUpsample(nn.Sequential):
    """conv(num_feat → 4·num_feat) + PixelShuffle(2) per factor 2, or conv(→ 9·num_feat) + PixelShuffle(3)."""

    def __init__(self, scale: int, num_feat: int):
        check_upscale('pixelshuffle', scale)
        layers = []
        if scale == 3:
            layers += [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
        else:
            for _ in range(int(math.log2(scale))):
                layers += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
        super().__init__(*layers)


class PixelShuffleDirect(nn.Sequential):
    """One conv(num_feat → scale²·out_chans) + PixelShuffle(scale): the lightweight SwinIR upsampler."""

    def __init__(self, scale: int, num_feat: int, out_chans: int):
        check_upscale('pixelshuffledirect', scale)
        super().__init__(nn.Conv2d(num_feat, scale * scale * out_chans, 3, 1, 1), nn.PixelShuffle(scale))


class DenseUpsample(nn.Sequential):
    """RDN's upsampler: conv(in → growth·r²) + PixelShuffle(r) (×4: twice with r = 2), then conv(growth → out)."""

    def __init__(self, scale: int, in_feat: int, growth: int, out_chans: int):
        if scale not in (2, 3, 4):
            raise ValueError(f'upscale={scale} is not supported by the RDN upsampler; it supports 2, 3 or 4')
        if scale == 4:
            layers = [nn.Conv2d(in_feat, growth * 4, 3, 1, 1), nn.PixelShuffle(2),
                      nn.Conv2d(growth, growth * 4, 3, 1, 1), nn.PixelShuffle(2)]
        else:
            layers = [nn.Conv2d(in_feat, growth * scale * scale, 3, 1, 1), nn.PixelShuffle(scale)]
        super().__init__(*layers, nn.Conv2d(growth, out_chans, 3, 1, 1))


class SRReconstruction:
    """Mixin for SwinIR-style models: builds the reconstruction modules on the model and runs them.

    ``add_reconstruction`` creates the official modules as attributes of the model (so their names match the
    official checkpoints); ``reconstruct`` maps the deep features plus the shallow-feature skip to the image.
    """
    upsampler: str
    upscale: int

    def add_reconstruction(self, upsampler: str, upscale: int, embed_dim: int, out_chans: int,
                           num_feat: int = 64) -> None:
        check_upscale(upsampler, upscale)
        self.upsampler = upsampler
        self.upscale = upscale = 1 if upsampler == '' else upscale  # '' ignores upscale, as the official models do
        if upsampler in ('pixelshuffle', 'nearest+conv'):
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU())
        if upsampler == 'pixelshuffle':
            self.upsample = PixelShuffleUpsample(upscale, num_feat)
            self.conv_last = nn.Conv2d(num_feat, out_chans, 3, 1, 1)
        elif upsampler == 'pixelshuffledirect':
            self.upsample = PixelShuffleDirect(upscale, embed_dim, out_chans)
        elif upsampler == 'nearest+conv':
            self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            if upscale == 4:
                self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_last = nn.Conv2d(num_feat, out_chans, 3, 1, 1)
            self.lrelu = nn.LeakyReLU(negative_slope=0.2)
        else:
            self.conv_last = nn.Conv2d(embed_dim, out_chans, 3, 1, 1)

    def reconstruct(self, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Image from ``features`` (deep features + shallow skip, B×C×H×W) and the normalised input ``image``."""
        if self.upsampler == 'pixelshuffle':
            return self.conv_last(self.upsample(self.conv_before_upsample(features)))
        if self.upsampler == 'pixelshuffledirect':
            return self.upsample(features)
        if self.upsampler == 'nearest+conv':
            x = self.conv_before_upsample(features)
            x = self.lrelu(self.conv_up1(F.interpolate(x, scale_factor=2, mode='nearest')))
            if self.upscale == 4:
                x = self.lrelu(self.conv_up2(F.interpolate(x, scale_factor=2, mode='nearest')))
            return self.conv_last(self.lrelu(self.conv_hr(x)))
        return image + self.conv_last(features)
