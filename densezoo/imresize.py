"""MATLAB-compatible bicubic resizing (``imresize(img, scale)`` with its default 'bicubic' method).

The benchmark low-resolution images of super-resolution (Set5, Set14, B100, Urban100, Manga109, DIV2K's
``LR_bicubic``) were made with MATLAB's ``imresize``; training and evaluating against them needs the same kernel.
Entry points: ``imresize``, ``cubic_kernel``, ``resize_weights``, ``output_size``.

Design notes and the agreement with a reference implementation: docs/data.md.
"""
import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = ['imresize', 'cubic_kernel', 'resize_weights', 'output_size']

Size = Tuple[int, int]


def cubic_kernel(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's 'bicubic'), zero outside [-2, 2]."""
    ax = x.abs()
    ax2, ax3 = ax * ax, ax * ax * ax
    inner = 1.5 * ax3 - 2.5 * ax2 + 1
    outer = -0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2
    return torch.where(ax <= 1, inner, torch.where(ax <= 2, outer, torch.zeros_like(ax)))


def output_size(size: Size, scale: Optional[Union[float, Sequence[float]]] = None,
                out_size: Optional[Size] = None) -> Tuple[Size, Tuple[float, float]]:
    """Output size and per-dimension scales of resizing ``size`` (H, W), as MATLAB computes them."""
    if (scale is None) == (out_size is None):
        raise ValueError('give exactly one of scale and out_size')
    if out_size is not None:
        out = (int(out_size[0]), int(out_size[1]))
        if min(out) < 1:
            raise ValueError(f'out_size {tuple(out_size)} must be positive')
        return out, (out[0] / size[0], out[1] / size[1])
    scales = (float(scale), float(scale)) if np.isscalar(scale) else (float(scale[0]), float(scale[1]))
    if min(scales) <= 0:
        raise ValueError(f'scale {scale} must be positive')
    # ceil as MATLAB does; the small tolerance keeps e.g. 0.1 * 30 (= 3.0000000000000004) at 3
    out = tuple(max(1, math.ceil(s * n - 1e-9)) for s, n in zip(scales, size))
    return out, scales


def resize_weights(in_length: int, out_length: int, scale: float, antialias: bool = True,
                   dtype: torch.dtype = torch.float64, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Input indices (out_length, P) and weights (out_length, P) of each output pixel along one dimension.

    Indices are 0-based and already mirrored into [0, in_length); each row of weights sums to 1.
    """
    width = 4.0
    stretch = antialias and scale < 1
    if stretch:
        width = width / scale
    x = torch.arange(1, out_length + 1, dtype=torch.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)  # 1-based input coordinate sampled by output pixel x
    left = torch.floor(u - width / 2)
    taps = math.ceil(width) + 2
    indices = left[:, None] + torch.arange(taps, dtype=torch.float64)[None, :]  # 1-based, may lie outside
    distance = u[:, None] - indices
    weights = scale * cubic_kernel(distance * scale) if stretch else cubic_kernel(distance)
    weights = weights / weights.sum(dim=1, keepdim=True)
    # symmetric padding: 1-based index i maps into the period [1..n, n..1] of length 2n
    zero_based = indices.long() - 1
    period = zero_based.remainder(2 * in_length)
    mirrored = torch.where(period < in_length, period, 2 * in_length - 1 - period)
    keep = weights.abs().sum(dim=0) > 0  # columns that never contribute are dropped (as MATLAB does)
    return mirrored[:, keep].to(device), weights[:, keep].to(dtype=dtype, device=device)


def _resize_dim(img: torch.Tensor, dim: int, out_length: int, scale: float, antialias: bool) -> torch.Tensor:
    indices, weights = resize_weights(img.shape[dim], out_length, scale, antialias, img.dtype, img.device)
    shape = [1] * img.dim()
    shape[dim] = out_length
    out = None
    for k in range(indices.shape[1]):
        term = img.index_select(dim, indices[:, k]) * weights[:, k].reshape(shape)
        out = term if out is None else out + term
    return out


def _resize_chw(img: torch.Tensor, out: Size, scales: Tuple[float, float], antialias: bool) -> torch.Tensor:
    """Resize the last two dimensions of ``img``."""
    dims = (img.dim() - 2, img.dim() - 1)
    order = sorted(range(2), key=lambda i: scales[i])  # stable: rows first when the scales are equal
    for i in order:
        if img.shape[dims[i]] != out[i] or scales[i] != 1:
            img = _resize_dim(img, dims[i], out[i], scales[i], antialias)
    return img


def imresize(img, scale: Optional[Union[float, Sequence[float]]] = None, out_size: Optional[Size] = None,
             antialias: bool = True):
    """Resize like MATLAB's ``imresize(img, scale)`` / ``imresize(img, [h w])`` with bicubic interpolation.

    Args:
        img: A torch tensor (C, H, W) or (B, C, H, W) or (H, W), float; or a numpy array (H, W, C) or (H, W),
            float or uint8.
        scale: One factor for both dimensions, or (scale_h, scale_w); the output is ``ceil(scale * size)``.
        out_size: (H, W) of the output instead of ``scale``.
        antialias: Stretch the kernel when downscaling (MATLAB's default).

    Returns:
        The resized image, of the input's type, layout and dtype (uint8 rounded and clipped, float neither).
    """
    if isinstance(img, np.ndarray):
        if img.ndim not in (2, 3):
            raise ValueError(f'numpy images must be (H, W) or (H, W, C), got shape {img.shape}')
        as_uint8 = img.dtype == np.uint8
        tensor = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float64))
        tensor = tensor[None] if img.ndim == 2 else tensor.permute(2, 0, 1)
        size = tuple(tensor.shape[-2:])
        out, scales = output_size(size, scale, out_size)
        result = _resize_chw(tensor, out, scales, antialias)
        result = result[0] if img.ndim == 2 else result.permute(1, 2, 0)
        array = result.numpy()
        if as_uint8:
            return np.clip(np.round(array), 0, 255).astype(np.uint8)
        return array.astype(img.dtype if np.issubdtype(img.dtype, np.floating) else np.float64)
    if not isinstance(img, torch.Tensor):
        raise TypeError(f'imresize takes a torch tensor or a numpy array, got {type(img).__name__}')
    if img.dim() not in (2, 3, 4):
        raise ValueError(f'tensors must be (H, W), (C, H, W) or (B, C, H, W), got shape {tuple(img.shape)}')
    if not img.is_floating_point():
        raise TypeError(f'tensors must be floating point, got {img.dtype}')
    size = tuple(img.shape[-2:])
    out, scales = output_size(size, scale, out_size)
    work = img.double() if img.device.type == 'cpu' else img
    return _resize_chw(work, out, scales, antialias).to(img.dtype)
