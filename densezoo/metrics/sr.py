"""Super-resolution metrics as the SR literature reports them (SwinIR, HAT, DRCT, RCAN, RDN; BasicSR's scripts).

``psnr`` and ``ssim`` score images quantised to 8-bit values (``bits=16``: 16-bit values, for 16-bit data),
optionally on MATLAB's Y channel (``rgb_to_y``) and with ``crop_border`` pixels cut from every side, in float64; a
batch gives one value per image.

Protocol details: docs/data.md.
"""
import math
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ['rgb_to_y', 'quantize', 'psnr', 'ssim', 'gaussian_window']

Image = Union[torch.Tensor, np.ndarray]
Y_WEIGHTS = (65.481, 128.553, 24.966)  # MATLAB rgb2ycbcr, for R, G, B in [0, 1]; Y in 16..235


def _as_tensor(img: Image) -> torch.Tensor:
    if isinstance(img, np.ndarray):
        scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(img.dtype, 1.0)
        t = torch.from_numpy(np.asarray(img, dtype=np.float64) / scale)
        return t[None] if t.dim() == 2 else t.permute(2, 0, 1)
    if not isinstance(img, torch.Tensor):
        raise TypeError(f'images must be torch tensors or numpy arrays, got {type(img).__name__}')
    return img


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """Y of MATLAB's ``rgb2ycbcr`` for RGB in [0, 1] (channels at dim -3), as a value in [16/255, 235/255]."""
    if img.shape[-3] != 3:
        raise ValueError(f'rgb_to_y needs 3 channels at dim -3, got shape {tuple(img.shape)}')
    r, g, b = img.unbind(dim=-3)
    y = 16.0 + Y_WEIGHTS[0] * r + Y_WEIGHTS[1] * g + Y_WEIGHTS[2] * b
    return (y / 255.0).unsqueeze(-3)


def _peak(bits: int) -> float:
    if bits not in (8, 16):
        raise ValueError(f'bits={bits} is not allowed; use 8 or 16')
    return float(2 ** bits - 1)


def quantize(img: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Integer values of ``bits`` bits (0..255 or 0..65535, float64) of an image in [0, 1]: clamped, then
    ``round(x * peak)``."""
    return torch.round(img.detach().to(torch.float64).clamp(0, 1) * _peak(bits))


def _prepare(sr: Image, hr: Image, crop_border: int, y_channel: bool, bits: int) -> torch.Tensor:
    sr, hr = _as_tensor(sr), _as_tensor(hr)
    if sr.shape != hr.shape:
        raise ValueError(f'the images differ in shape: {tuple(sr.shape)} and {tuple(hr.shape)}')
    if sr.dim() not in (3, 4):
        raise ValueError(f'images must be (C, H, W) or (B, C, H, W), got shape {tuple(sr.shape)}')
    if crop_border < 0:
        raise ValueError(f'crop_border={crop_border} must be 0 or more')
    peak = _peak(bits)
    pair = torch.stack([quantize(sr, bits), quantize(hr, bits)])  # (2, [B,] C, H, W) on 0..peak
    if crop_border:
        if min(pair.shape[-2:]) <= 2 * crop_border:
            raise ValueError(f'images of {pair.shape[-2]}x{pair.shape[-1]} pixels are too small for '
                             f'crop_border={crop_border}')
        pair = pair[..., crop_border:-crop_border, crop_border:-crop_border]
    if y_channel and pair.shape[-3] == 3:
        pair = rgb_to_y(pair / peak) * peak
    return pair


def _per_image(values: torch.Tensor, batched: bool):
    return values if batched else float(values)


def psnr(sr: Image, hr: Image, crop_border: int = 0, y_channel: bool = True, bits: int = 8):
    """PSNR in dB of images quantised to ``bits`` (8 or 16) bits, peak ``2 ** bits - 1`` (a float; a float64 tensor
    of B values for a batch)."""
    pair = _prepare(sr, hr, crop_border, y_channel, bits)
    batched = pair.dim() == 5
    mse = (pair[0] - pair[1]).pow(2).flatten(start_dim=1 if batched else 0).mean(dim=-1)
    value = torch.where(mse == 0, torch.full_like(mse, math.inf), 10 * torch.log10(_peak(bits) ** 2 / mse))
    return _per_image(value, batched)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """The normalised 2-D Gaussian window (size, size) of SSIM, float64."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(sr: Image, hr: Image, crop_border: int = 0, y_channel: bool = True, bits: int = 8):
    """SSIM of images quantised to ``bits`` (8 or 16) bits, data range ``2 ** bits - 1`` (a float; a float64
    tensor of B values for a batch)."""
    pair = _prepare(sr, hr, crop_border, y_channel, bits)
    batched = pair.dim() == 5
    if not batched:
        pair = pair[:, None]
    a, b = pair[0], pair[1]  # (B, C, H, W) on 0..peak
    if min(a.shape[-2:]) < 11:
        raise ValueError(f'SSIM needs images of at least 11x11 pixels (after cropping), got '
                         f'{a.shape[-2]}x{a.shape[-1]}')
    channels = a.shape[1]
    window = gaussian_window().to(a.device)[None, None].expand(channels, 1, 11, 11)

    def blur(x):
        return F.conv2d(x, window, groups=channels)  # 'valid': no padding

    peak = _peak(bits)
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    value = ssim_map.mean(dim=(2, 3)).mean(dim=1)
    return _per_image(value, batched)
