"""Inference helpers for super-resolution models: x8 self-ensemble, tiled inference of large images, float16.

The first two take any module mapping a (B, C, H, W) low-resolution batch to a (B, C', H * s, W * s) one, and
compose: ``self_ensemble(model, lr, forward=functools.partial(tiled_forward, tile=256, overlap=32))``.
``half_precision`` gives a float16 copy of a model whose residual stream is scaled down by a power of two when its
float32 peak would not fit float16 (exact: docs/sr-models.md).
"""
import copy
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

__all__ = ['self_ensemble', 'tiled_forward', 'tile_starts', 'DIHEDRAL', 'activation_peaks', 'half_precision',
           'HalfPrecision']

#: the 8 symmetries of the square as (transpose, flip height, flip width), applied in that order
DIHEDRAL: Tuple[Tuple[bool, bool, bool], ...] = tuple(
    (t, fh, fw) for t in (False, True) for fh in (False, True) for fw in (False, True))


def _apply(x: torch.Tensor, transpose: bool, flip_h: bool, flip_w: bool) -> torch.Tensor:
    if transpose:
        x = x.transpose(-2, -1)
    dims = [d for d, on in ((-2, flip_h), (-1, flip_w)) if on]
    return x.flip(dims) if dims else x


def _invert(y: torch.Tensor, transpose: bool, flip_h: bool, flip_w: bool) -> torch.Tensor:
    dims = [d for d, on in ((-2, flip_h), (-1, flip_w)) if on]
    if dims:
        y = y.flip(dims)
    return y.transpose(-2, -1) if transpose else y


def self_ensemble(model: nn.Module, lr: torch.Tensor,
                  forward: Optional[Callable[[nn.Module, torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """The x8 geometric self-ensemble (EDSR's "+" models): the mean of the outputs for the 8 flips / transposes
    of ``lr``, each mapped back. ``forward(model, x)`` runs the model (default ``model(x)``)."""
    run = forward or (lambda m, x: m(x))
    total = None
    for t in DIHEDRAL:
        out = _invert(run(model, _apply(lr, *t)), *t).to(torch.float32)
        total = out if total is None else total + out
    return (total / len(DIHEDRAL)).to(lr.dtype)


def tile_starts(length: int, tile: int, overlap: int) -> List[int]:
    """Start positions of tiles of ``tile`` pixels covering ``length`` with at least ``overlap`` pixels shared
    between neighbours; the last tile ends at the border."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def tiled_forward(model: nn.Module, lr: torch.Tensor, tile: int = 256, overlap: int = 32) -> torch.Tensor:
    """The model's output for ``lr`` (B, C, H, W), computed tile by tile to bound memory.

    Tiles of ``tile`` x ``tile`` LR pixels overlap by at least ``overlap`` pixels. Each tile's output is used except
    a margin of ``overlap // 2`` LR pixels along its edges inside the image (where it lacks context), and the
    remaining overlaps are averaged. If the model's receptive field reaches at most ``overlap // 2`` pixels from
    the centre (a field of ``overlap + 1`` pixels fits in the overlap) and it treats every position alike (a
    convolutional network), the result equals the whole-image output up to float rounding. Window-attention
    models see other windows in a tile, so their tiled output differs slightly (make ``tile`` a multiple of the
    window size and ``overlap`` generous).
    """
    if tile < 1 or overlap < 0:
        raise ValueError(f'tile={tile} and overlap={overlap} are not allowed; tile must be positive and overlap 0 '
                         f'or more')
    if overlap >= tile:
        raise ValueError(f'tile={tile} must be larger than overlap={overlap}')
    if lr.dim() != 4:
        raise ValueError(f'lr must be a batch (B, C, H, W), got shape {tuple(lr.shape)}')
    height, width = lr.shape[-2:]
    if height <= tile and width <= tile:
        return model(lr)
    margin = overlap // 2
    out = weight = None
    scale = None
    for top in tile_starts(height, tile, overlap):
        for left in tile_starts(width, tile, overlap):
            patch = lr[..., top:top + tile, left:left + tile]
            result = model(patch)
            ph, pw = patch.shape[-2:]
            if scale is None:
                scale = result.shape[-2] // ph
                if result.shape[-2] != ph * scale or result.shape[-1] != pw * scale or scale < 1:
                    raise ValueError(f'the model maps a {ph}x{pw} tile to {result.shape[-2]}x{result.shape[-1]}, '
                                     f'not to a whole multiple of it')
                out = result.new_zeros(*result.shape[:2], height * scale, width * scale, dtype=torch.float32)
                weight = result.new_zeros(1, 1, height * scale, width * scale, dtype=torch.float32)
            # LR rows / columns of this tile that are used: all but the margin along inner edges
            y0 = top + (margin if top > 0 else 0)
            y1 = top + ph - (margin if top + ph < height else 0)
            x0 = left + (margin if left > 0 else 0)
            x1 = left + pw - (margin if left + pw < width else 0)
            piece = result[..., (y0 - top) * scale:(y1 - top) * scale, (x0 - left) * scale:(x1 - left) * scale]
            out[..., y0 * scale:y1 * scale, x0 * scale:x1 * scale] += piece.float()
            weight[..., y0 * scale:y1 * scale, x0 * scale:x1 * scale] += 1
    return (out / weight).to(lr.dtype)


# ---------------------------------------------------------------------------------------------------------------
# float16

@torch.no_grad()
def activation_peaks(model: nn.Module, x: torch.Tensor) -> Dict[str, float]:
    """The largest absolute value each module of ``model`` outputs on ``x`` (module name -> value)."""
    peaks: Dict[str, float] = {}
    hooks = []

    def record(name):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.is_floating_point() and output.numel():
                value = output.detach().float().abs().max().item()
                if name not in peaks or not value <= peaks[name]:  # NaN is kept: it is reported
                    peaks[name] = value
        return hook

    for name, module in model.named_modules():
        if module is not model:
            hooks.append(module.register_forward_hook(record(name)))
    try:
        model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return peaks


def _largest(peaks: Dict[str, float]) -> Tuple[float, str]:
    name = max(peaks, key=lambda key: (not math.isfinite(peaks[key]), peaks[key]), default='')
    return peaks.get(name, 0.0), name


@dataclass
class HalfPrecision:
    """A float16 copy of a model, and how its values sit in float16's range (largest finite 65504)."""
    model: nn.Module
    shift: int  # the residual stream runs multiplied by 2 ** -shift
    peak: float  # largest |module output| of the unscaled model on the calibration input (float32)
    peak_module: str
    scaled_peak: float  # the same for the copy that runs in float16 (after scaling its stream)
    scaled_module: str
    margin: float  # float16's largest value / scaled_peak: > 1 means nothing overflows

    def __str__(self) -> str:
        return (f'float16: peak {self.peak:.4g} ({self.peak_module}); stream scaled by 2^-{self.shift}: peak '
                f'{self.scaled_peak:.4g} ({self.scaled_module}), margin {self.margin:.3g}x')


def half_precision(model: nn.Module, sample: torch.Tensor, headroom: float = 16.,
                   dtype: torch.dtype = torch.float16) -> HalfPrecision:
    """A ``dtype`` copy of ``model`` calibrated on ``sample`` (an input batch, run in float32).

    Window SR transformers (SwinIR, DRCT, HAT) keep a residual stream that trained weights make large; when the
    largest value any module outputs, times ``headroom``, would exceed the format, the copy's stream is scaled by
    the smallest power of two that would make it fit (``scale_stream_``, exact). If values outside the stream are
    still too large, a one-line ``ValueError`` names the module.
    """
    top = torch.finfo(dtype).max
    reference = model.float().eval()
    peak, peak_module = _largest(activation_peaks(reference, sample.float()))
    if not math.isfinite(peak):
        raise ValueError(f'{peak_module} gives non-finite values in float32 on the calibration input')
    shift = max(0, math.ceil(math.log2(peak * headroom / top))) if peak else 0
    copied = copy.deepcopy(reference)
    scaled, scaled_module = peak, peak_module
    if shift:
        if not hasattr(copied, 'scale_stream_'):
            raise ValueError(f'{type(model).__name__}: {peak_module} outputs values up to {peak:.4g}, more than '
                             f'{str(dtype).split(".")[-1]} holds with headroom {headroom:g}; use bfloat16 or float32')
        copied.scale_stream_(2.0 ** -shift)
        scaled, scaled_module = _largest(activation_peaks(copied, sample.float()))
        if scaled * headroom > top:
            raise ValueError(f'{scaled_module} outputs values up to {scaled:.4g} outside the residual stream, more '
                             f'than {str(dtype).split(".")[-1]} holds with headroom {headroom:g}; use bfloat16 or '
                             f'float32')
    return HalfPrecision(copied.to(dtype), shift, peak, peak_module, scaled, scaled_module, top / max(scaled, 1e-30))
