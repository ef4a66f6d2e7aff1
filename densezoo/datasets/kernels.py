"""Blur kernels of the real-world degradation pipelines (``densezoo.datasets.degradations``), as BasicSR 1.4.2 makes
them: float64 (K, K), K odd, centred, summing to 1, applied as correlations (``filter2d``).

With q = [x y] S^-1 [x y]^T, S = R diag(sigma_x^2, sigma_y^2) R^T (R the rotation by ``theta``; x the column
offset, y the row offset): ``gaussian_kernel`` exp(-q / 2), ``generalized_gaussian_kernel`` exp(-q^beta / 2),
``plateau_kernel`` 1 / (1 + q^beta); ``sinc_kernel`` is the circular low-pass filter with cut-off ``omega_c``
(radians per pixel); ``random_kernel`` draws one of the six Real-ESRGAN kinds as ``random_mixed_kernels`` does.
Formulas and ranges: docs/degradations.md.
"""
import math
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import special

__all__ = ['KERNEL_KINDS', 'mesh_grid', 'covariance', 'gaussian_kernel', 'generalized_gaussian_kernel',
           'plateau_kernel', 'sinc_kernel', 'random_kernel']

#: the kernel kinds of Real-ESRGAN's ``kernel_list``
KERNEL_KINDS = ('iso', 'aniso', 'generalized_iso', 'generalized_aniso', 'plateau_iso', 'plateau_aniso')


def _check_size(size: int) -> int:
    if int(size) != size or size < 1 or size % 2 == 0:
        raise ValueError(f'kernel size {size} must be a positive odd integer')
    return int(size)


def mesh_grid(size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Column (x) and row (y) offsets from the centre of a (size, size) kernel."""
    half = _check_size(size) // 2
    axis = np.arange(-half, half + 1, dtype=np.float64)
    return np.meshgrid(axis, axis)


def covariance(sigma_x: float, sigma_y: Optional[float] = None, theta: float = 0.) -> np.ndarray:
    """The 2x2 covariance R diag(sigma_x^2, sigma_y^2) R^T; R rotates by ``theta`` radians (isotropic: no
    ``sigma_y``)."""
    if sigma_y is None:
        return np.diag([sigma_x ** 2, sigma_x ** 2]).astype(np.float64)
    cos, sin = math.cos(theta), math.sin(theta)
    rot = np.array([[cos, -sin], [sin, cos]])
    return rot @ np.diag([sigma_x ** 2, sigma_y ** 2]) @ rot.T


def _quadratic(size: int, sigma_x: float, sigma_y: Optional[float], theta: float,
               offset: Tuple[float, float] = (0., 0.)) -> np.ndarray:
    """q = [x y] S^-1 [x y]^T at every kernel pixel, with (x, y) measured from ``offset`` = (dx, dy)."""
    if sigma_x <= 0 or (sigma_y is not None and sigma_y <= 0):
        raise ValueError(f'kernel sigmas ({sigma_x}, {sigma_y}) must be positive')
    xx, yy = mesh_grid(size)
    xx, yy = xx - offset[0], yy - offset[1]
    inv = np.linalg.inv(covariance(sigma_x, sigma_y, theta))
    return inv[0, 0] * xx * xx + (inv[0, 1] + inv[1, 0]) * xx * yy + inv[1, 1] * yy * yy


def _normalised(kernel: np.ndarray) -> np.ndarray:
    return kernel / kernel.sum()


def gaussian_kernel(size: int, sigma_x: float, sigma_y: Optional[float] = None, theta: float = 0.,
                    offset: Tuple[float, float] = (0., 0.)) -> np.ndarray:
    """Sampled (an)isotropic Gaussian exp(-q / 2), normalised; ``offset`` (dx, dy) moves its centre (sub-pixel)."""
    return _normalised(np.exp(-0.5 * _quadratic(size, sigma_x, sigma_y, theta, offset)))


def generalized_gaussian_kernel(size: int, sigma_x: float, sigma_y: Optional[float] = None, theta: float = 0.,
                                beta: float = 1.) -> np.ndarray:
    """Generalised Gaussian exp(-q^beta / 2), normalised (beta = 1: ``gaussian_kernel``)."""
    return _normalised(np.exp(-0.5 * np.power(_quadratic(size, sigma_x, sigma_y, theta), beta)))


def plateau_kernel(size: int, sigma_x: float, sigma_y: Optional[float] = None, theta: float = 0.,
                   beta: float = 1.) -> np.ndarray:
    """Plateau-shaped kernel 1 / (1 + q^beta), normalised."""
    return _normalised(1. / (1. + np.power(_quadratic(size, sigma_x, sigma_y, theta), beta)))


def sinc_kernel(omega_c: float, size: int, pad_to: int = 0) -> np.ndarray:
    """2D sinc (ideal circular low-pass, cut-off ``omega_c`` in radians per pixel) truncated to (size, size):
    omega_c J1(omega_c r) / (2 pi r), omega_c^2 / (4 pi) at r = 0; normalised; zero-padded to ``pad_to``."""
    size = _check_size(size)
    if not 0 < omega_c <= math.pi:
        raise ValueError(f'sinc cut-off omega_c={omega_c} must lie in (0, pi]')
    xx, yy = mesh_grid(size)
    radius = np.hypot(xx, yy)
    with np.errstate(divide='ignore', invalid='ignore'):
        kernel = omega_c * special.j1(omega_c * radius) / (2 * math.pi * radius)
    kernel[size // 2, size // 2] = omega_c ** 2 / (4 * math.pi)
    kernel = _normalised(kernel)
    if pad_to > size:
        pad = (_check_size(pad_to) - size) // 2
        kernel = np.pad(kernel, pad)
    return kernel


def _beta(rng: np.random.Generator, beta_range: Sequence[float]) -> float:
    # BasicSR: below or above 1 with equal chances (the range is expected to contain 1)
    if rng.random() < 0.5:
        return float(rng.uniform(beta_range[0], 1))
    return float(rng.uniform(1, beta_range[1]))


def random_kernel(rng: np.random.Generator, size: int, kernel_list: Sequence[str] = KERNEL_KINDS,
                  kernel_prob: Sequence[float] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03),
                  sigma_range: Sequence[float] = (0.2, 3.), betag_range: Sequence[float] = (0.5, 4.),
                  betap_range: Sequence[float] = (1., 2.),
                  rotation_range: Sequence[float] = (-math.pi, math.pi)) -> Tuple[np.ndarray, str]:
    """A random blur kernel and its kind, as BasicSR's ``random_mixed_kernels`` (without kernel noise).

    The kind is drawn from ``kernel_list`` with ``kernel_prob``; sigma_x (and, anisotropic, sigma_y) uniform in
    ``sigma_range``, the rotation uniform in ``rotation_range``; beta below or above 1 with equal chances, uniform
    in [betag_range[0], 1] or [1, betag_range[1]] (``betap_range`` for plateau kernels).
    """
    kind = str(kernel_list[rng.choice(len(kernel_list), p=np.asarray(kernel_prob, dtype=np.float64))])
    if kind not in KERNEL_KINDS:
        raise ValueError(f'kernel kind {kind!r} is not known; use one of {", ".join(KERNEL_KINDS)}')
    sigma_x = float(rng.uniform(*sigma_range))
    sigma_y, theta = None, 0.
    if kind.endswith('aniso'):
        sigma_y = float(rng.uniform(*sigma_range))
        theta = float(rng.uniform(*rotation_range))
    if kind.startswith('generalized'):
        return generalized_gaussian_kernel(size, sigma_x, sigma_y, theta, _beta(rng, betag_range)), kind
    if kind.startswith('plateau'):
        return plateau_kernel(size, sigma_x, sigma_y, theta, _beta(rng, betap_range)), kind
    return gaussian_kernel(size, sigma_x, sigma_y, theta), kind
