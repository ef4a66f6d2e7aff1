"""NIQE, the no-reference Natural Image Quality Evaluator of Mittal, Soundararajan and Bovik ("Making a 'completely
blind' image quality analyzer", IEEE Signal Processing Letters, 2013); lower is better.

``niqe`` follows BasicSR 1.4.2's ``calculate_niqe(img, crop_border, convert_to='y')``, which reproduces the authors'
MATLAB release: the rounded 0..255 Y channel, MSCN coefficients (7x7 Gaussian, sigma 7/6), 96x96 blocks at full and
half size (MATLAB bicubic ``imresize``), AGGD fits and the distance to the pristine model.
``niqe_pris_params.npz`` holds that model: ``mu_pris_param`` (1x36) and ``cov_pris_param`` (36x36), the
``mu_prisparam`` and ``cov_prisparam`` of the authors' ``modelparameters.mat``, taken unchanged from the copy that
BasicSR 1.4.2 ships as ``basicsr/metrics/niqe_pris_params.npz``.
"""
import math
from functools import lru_cache
from pathlib import Path
from typing import Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from densezoo.imresize import imresize

__all__ = ['niqe', 'niqe_features', 'BLOCK_SIZE']

Image = Union[torch.Tensor, np.ndarray]
BLOCK_SIZE = 96  # the block size of the authors' pristine model
PARAMS_FILE = Path(__file__).with_name('niqe_pris_params.npz')


@lru_cache(maxsize=1)
def _pristine_model() -> Tuple[torch.Tensor, torch.Tensor]:
    with np.load(PARAMS_FILE) as params:
        mu = torch.from_numpy(params['mu_pris_param'].reshape(-1).astype(np.float64))
        cov = torch.from_numpy(params['cov_pris_param'].astype(np.float64))
    return mu, cov


@lru_cache(maxsize=1)
def _shape_grid() -> Tuple[torch.Tensor, ...]:
    """The AGGD shapes searched (0.2, 0.201, ..., 10, spaced as numpy's ``arange`` spaces them), the ratio
    Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a)) that each implies, and Gamma(1/a), Gamma(2/a), Gamma(3/a)."""
    shapes = np.arange(0.2, 10.001, 0.001)
    g1, g2, g3 = (np.array([math.gamma(k / a) for a in shapes]) for k in (1, 2, 3))
    return tuple(torch.from_numpy(v) for v in (shapes, g2 * g2 / (g1 * g3), g1, g2, g3))


def _gaussian_window() -> torch.Tensor:
    """MATLAB's ``fspecial('gaussian', 7, 7 / 6)``."""
    x = torch.arange(7, dtype=torch.float64) - 3
    g = torch.exp(-x * x / (2 * (7 / 6) ** 2))
    window = g[:, None] * g[None, :]
    return window / window.sum()


def _aggd(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Index into the shape grid, left and right scale of the asymmetric generalised Gaussian fitted (by moment
    matching) to each row of ``x`` (N, M) float32. A side without samples gives NaN scales, as in the reference."""
    _, ratio, g1, _, g3 = _shape_grid()
    square = (x * x).double()  # squared in float32, as the reference; summed in float64
    negative, positive = x < 0, x > 0
    left = torch.sqrt((square * negative).sum(1) / negative.sum(1))
    right = torch.sqrt((square * positive).sum(1) / positive.sum(1))
    gamma_hat = left / right
    r_hat = x.double().abs().mean(1) ** 2 / square.mean(1)
    r_norm = r_hat * (gamma_hat ** 3 + 1) * (gamma_hat + 1) / (gamma_hat ** 2 + 1) ** 2
    index = ((ratio[None, :] - r_norm[:, None]) ** 2).argmin(1)
    index = torch.where(torch.isnan(r_norm), torch.zeros_like(index), index)  # numpy's argmin of all-NaN: 0
    scale = torch.sqrt(g1[index] / g3[index])
    return index, left * scale, right * scale


def _block_features(blocks: torch.Tensor) -> torch.Tensor:
    """The 18 features of each MSCN block (N, b, b) float32: the AGGD fit of the coefficients (shape, mean scale),
    and of their products with the horizontal, vertical and two diagonal neighbours (shape, mean, left and right
    scale)."""
    shapes, _, g1, g2, _ = _shape_grid()
    index, left, right = _aggd(blocks.flatten(1))
    features = [shapes[index], (left + right) / 2]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):  # circular, as the reference's np.roll
        products = blocks * torch.roll(blocks, shifts=shift, dims=(1, 2))
        index, left, right = _aggd(products.flatten(1))
        features += [shapes[index], (right - left) * g2[index] / g1[index], left, right]
    return torch.stack(features, dim=1)


def _mscn(img: torch.Tensor) -> torch.Tensor:
    """Mean-subtracted contrast-normalised coefficients of a float32 image, in float32 as the reference computes
    them: the local sums in float64 (replicating the border, scipy's 'nearest') rounded to float32, the rest in
    float32. The precision matters: in flat regions float32 gives coefficients of exactly 0, which the AGGD fits leave
    out of both sides, where float64 would leave rounding noise that they count."""
    window = _gaussian_window()[None, None]
    padded = F.pad(torch.stack([img, img * img]).double()[:, None], (3, 3, 3, 3), mode='replicate')
    mu, second = F.conv2d(padded, window)[:, 0].float()
    sigma = torch.sqrt((second - mu * mu).abs().double()).float()  # torch's float32 sqrt may be 1 ulp off; numpy's not
    return (img - mu) / (sigma + 1)


def _halve(img: torch.Tensor) -> torch.Tensor:
    """MATLAB's ``imresize(img, 0.5)`` (bicubic, antialiased) of a 0..255 image (H, W), in float32."""
    return (imresize(img[None].double() / 255.0, scale=0.5)[0] * 255.0).float()


def niqe_features(y: torch.Tensor) -> torch.Tensor:
    """The 36 features (18 at full size, 18 at half size) of each 96x96 block of a grey image ``y`` (H, W) on 0..255,
    float64 (num_blocks, 36); the rows and columns of blocks that do not fit are cut off at the bottom and right."""
    rows, cols = y.shape[0] // BLOCK_SIZE, y.shape[1] // BLOCK_SIZE
    img = y[:rows * BLOCK_SIZE, :cols * BLOCK_SIZE].float()
    features = []
    for scale in (1, 2):
        size = BLOCK_SIZE // scale
        blocks = _mscn(img).reshape(rows, size, cols, size).permute(2, 0, 1, 3).reshape(-1, size, size)
        features.append(_block_features(blocks))  # blocks column by column, as the reference
        if scale == 1:
            img = _halve(img)
    return torch.cat(features, dim=1)


def _luma(img: Image, y_channel: bool) -> np.ndarray:
    """The grey image (H, W) on 0..255 that NIQE scores, float32 and not yet rounded, computed as BasicSR computes it
    (float32 arithmetic, which decides the rounding of a few colours)."""
    if isinstance(img, torch.Tensor):
        if img.dim() != 3 or img.shape[0] not in (1, 3) or not img.is_floating_point():
            raise ValueError(f'tensors must be float (C, H, W) with 1 or 3 channels in [0, 1], got '
                             f'{img.dtype} {tuple(img.shape)}')
        img = torch.round(img.detach().to('cpu', torch.float64).clamp(0, 1) * 255).to(torch.uint8)
        img = img.permute(1, 2, 0).numpy()
    elif isinstance(img, np.ndarray):
        if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3)):
            raise ValueError(f'numpy images must be uint8 (H, W) or (H, W, C) with 1 or 3 channels, got '
                             f'{img.dtype} {img.shape}')
    else:
        raise TypeError(f'images must be torch tensors or numpy arrays, got {type(img).__name__}')
    if img.ndim == 2 or img.shape[2] == 1:
        return img.reshape(img.shape[:2]).astype(np.float32)
    bgr = np.ascontiguousarray(img[..., ::-1]).astype(np.float32) / np.float32(255)
    if not y_channel:
        import cv2  # BasicSR's convert_to='gray'; OpenCV's float conversion decides the rounding of some colours
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY) * np.float32(255)
    y = np.dot(bgr, [24.966, 128.553, 65.481]) + 16.0  # MATLAB rgb2ycbcr, in BasicSR's order and precision
    return (y / 255.0).astype(np.float32) * np.float32(255)


def niqe(img: Image, crop_border: int = 0, y_channel: bool = True) -> float:
    """NIQE of one image (lower is better).

    Args:
        img: A float torch tensor (C, H, W) in [0, 1], quantised to 8 bits first; or a uint8 numpy array (H, W, C)
            or (H, W). Colour images are RGB (not OpenCV's BGR); C is 1 or 3.
        crop_border: Pixels cut from every side before scoring.
        y_channel: Score MATLAB's Y (of ``rgb2ycbcr``) of a colour image; False: its grey (OpenCV's
            ``COLOR_BGR2GRAY`` luma). A one-channel image is scored as it is.

    The image needs at least two whole 96x96 blocks after cropping (e.g. 96x192); the rest of a row or column of
    blocks is left out.
    """
    if crop_border < 0:
        raise ValueError(f'crop_border={crop_border} must be 0 or more')
    luma = _luma(img, y_channel)
    if crop_border:
        luma = luma[crop_border:-crop_border, crop_border:-crop_border]
    height, width = luma.shape
    if (height // BLOCK_SIZE) * (width // BLOCK_SIZE) < 2:
        raise ValueError(f'NIQE needs at least two {BLOCK_SIZE}x{BLOCK_SIZE} blocks (e.g. {BLOCK_SIZE}x'
                         f'{2 * BLOCK_SIZE} pixels) after cropping, got {height}x{width}')
    features = niqe_features(torch.from_numpy(luma.round()))
    complete = features[~torch.isnan(features).any(dim=1)]
    if complete.shape[0] < 2:
        raise ValueError(f'NIQE is undefined for this {height}x{width} image: fewer than two of its blocks have '
                         f'both negative and positive MSCN coefficients (a flat image?)')
    mu_pris, cov_pris = _pristine_model()
    mu = torch.nanmean(features, dim=0)
    cov = torch.cov(complete.T)
    difference = mu_pris - mu
    inverse = torch.linalg.pinv((cov_pris + cov) / 2, rtol=1e-15)  # numpy's default cut-off, as the reference
    return float(torch.sqrt(difference @ inverse @ difference))
