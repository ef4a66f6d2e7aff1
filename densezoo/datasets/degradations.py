"""Real-world degradation pipelines for training blind super-resolution: HR image in, LR image out.

* ``RealESRGANDegradation``: Real-ESRGAN's second-order degradation (Wang et al., ICCVW 2021) with the settings of
  ``train_realesrnet_x4plus.yml``, as BasicSR 1.4.2's ``RealESRGANDataset`` and ``RealESRGANModel.feed_data``.
* ``BSRGANDegradation``: BSRGAN's shuffled degradation (Zhang et al., ICCV 2021), KAIR's ``degradation_bsrgan``
  without camera noise.

Both take an HR image float32 (H, W, C) in [0, 1] (H, W multiples of the scale) and a ``numpy.random.Generator``,
their only source of randomness (same image and generator state: bit-identical LR). Primitives: ``filter2d``,
``usm_sharp``, noise, ``jpeg``; stages, ranges and differences from the references: docs/degradations.md.
"""
import math
from typing import Any, Callable, Dict, Optional, Tuple, Union

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from densezoo.datasets.kernels import (KERNEL_KINDS, gaussian_kernel, generalized_gaussian_kernel, plateau_kernel,
                                       random_kernel, sinc_kernel)
from densezoo.imresize import imresize

__all__ = ['RealESRGANDegradation', 'BSRGANDegradation', 'DEGRADATION_PIPELINES', 'filter2d', 'usm_sharp',
           'add_gaussian_noise', 'add_poisson_noise', 'jpeg', 'gaussian_kernel', 'generalized_gaussian_kernel',
           'plateau_kernel', 'sinc_kernel', 'random_kernel']

Image = Union[np.ndarray, torch.Tensor]
_GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale, as BasicSR's grey Poisson noise uses
_RESIZE_MODES = ('area', 'bilinear', 'bicubic')  # Real-ESRGAN: torch's F.interpolate
_CV2_MODES = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA)  # BSRGAN: cv2.resize


# ------------------------------------------------------------------ primitives

def _reflect_pad(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """Mirror (N, C, H, W) by ``ph`` rows and ``pw`` columns without repeating the edge, for any image size."""
    if ph < x.shape[-2] and pw < x.shape[-1]:
        return F.pad(x, (pw, pw, ph, ph), mode='reflect')
    for dim, pad in ((-2, ph), (-1, pw)):
        n = x.shape[dim]
        idx = torch.arange(-pad, n + pad, device=x.device)
        if n == 1:
            idx = torch.zeros_like(idx)
        else:
            idx = idx.remainder(2 * (n - 1))
            idx = torch.where(idx >= n, 2 * (n - 1) - idx, idx)
        x = x.index_select(dim, idx)
    return x


def filter2d(img: Image, kernel: Union[np.ndarray, torch.Tensor]) -> Image:
    """Correlate every channel with an odd (K, K) kernel, borders mirrored (cv2's BORDER_REFLECT_101, BasicSR's
    ``filter2D``). numpy (H, W, C) images go through ``cv2.filter2D``; tensors (..., C, H, W) through
    ``F.conv2d``."""
    k = kernel.shape[-1]
    if kernel.ndim != 2 or kernel.shape[0] != k or k % 2 == 0:
        raise ValueError(f'kernel of shape {tuple(kernel.shape)} must be square with an odd size')
    if isinstance(img, np.ndarray):
        weights = np.asarray(kernel, dtype=np.float32)
        out = cv2.filter2D(np.ascontiguousarray(img, dtype=np.float32), -1, weights,
                           borderType=cv2.BORDER_REFLECT_101)
        return out.reshape(img.shape)
    weights = torch.as_tensor(kernel, dtype=img.dtype, device=img.device).view(1, 1, k, k)
    flat = img.reshape(-1, 1, *img.shape[-2:])
    return F.conv2d(_reflect_pad(flat, k // 2, k // 2), weights).view(img.shape)


def usm_sharp(img: Image, weight: float = 0.5, radius: int = 50, threshold: float = 10) -> Image:
    """Unsharp masking (BasicSR's ``USMSharp``) of tensors (B, C, H, W) or (C, H, W), or of a numpy image
    (H, W, C), in [0, 1].

    blur = Gaussian of size ``radius`` (made odd; sigma as cv2.getGaussianKernel(size, 0)), residual = img - blur;
    sharp = clip(img + weight * residual); the mask (|residual| * 255 > threshold) blurred the same way blends
    sharp over img. Any image size works (borders mirrored, repeatedly for images smaller than the kernel).
    """
    size = radius + 1 if radius % 2 == 0 else radius
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    taps = np.exp(-np.arange(-(size // 2), size // 2 + 1, dtype=np.float64) ** 2 / (2 * sigma * sigma))
    taps = taps / taps.sum()
    half = size // 2
    if isinstance(img, np.ndarray):
        taps32 = taps.astype(np.float32)

        def blur(x: np.ndarray) -> np.ndarray:  # separable, as the 2D kernel outer(taps, taps)
            x = np.ascontiguousarray(x, dtype=np.float32)
            return cv2.sepFilter2D(x, -1, taps32, taps32, borderType=cv2.BORDER_REFLECT_101).reshape(x.shape)

        residual = img - blur(img)
        soft_mask = blur((np.abs(residual) * 255 > threshold).astype(np.float32))
        sharp = np.clip(img + weight * residual, 0, 1)
        return soft_mask * sharp + (1 - soft_mask) * img
    weights = torch.as_tensor(taps, dtype=img.dtype, device=img.device)

    def blur(x: torch.Tensor) -> torch.Tensor:  # separable, as the 2D kernel outer(taps, taps)
        flat = x.reshape(-1, 1, *x.shape[-2:])
        flat = F.conv2d(_reflect_pad(flat, 0, half), weights.view(1, 1, 1, size))
        flat = F.conv2d(_reflect_pad(flat, half, 0), weights.view(1, 1, size, 1))
        return flat.view(x.shape)

    residual = img - blur(img)
    soft_mask = blur((residual.abs() * 255 > threshold).to(img.dtype))
    sharp = torch.clamp(img + weight * residual, 0, 1)
    return soft_mask * sharp + (1 - soft_mask) * img


def add_gaussian_noise(img: np.ndarray, rng: np.random.Generator, sigma: float, gray: bool = False,
                       clip: bool = True) -> np.ndarray:
    """``img`` (H, W, C) plus N(0, (sigma / 255)^2) noise (sigma on the 0..255 scale); ``gray``: one noise plane
    shared by all channels."""
    h, w, c = img.shape
    noise = rng.standard_normal((h, w, 1) if gray else (h, w, c), dtype=np.float32) * np.float32(sigma / 255)
    out = img + noise
    return np.clip(out, 0, 1) if clip else out


def add_poisson_noise(img: np.ndarray, rng: np.random.Generator, scale: float = 1., gray: bool = False,
                      clip: bool = True) -> np.ndarray:
    """Shot noise as BasicSR makes it: x = the image rounded to 8-bit levels (grey: its luma), n = the number of
    distinct levels in x, vals = 2 ** ceil(log2(n)); noise = Poisson(x * vals) / vals - x, added times ``scale``
    (so its variance is scale^2 x / vals)."""
    base = img
    if gray and img.shape[-1] == 3:
        base = (_GREY_WEIGHTS[0] * img[..., 0] + _GREY_WEIGHTS[1] * img[..., 1] + _GREY_WEIGHTS[2] * img[..., 2])
        base = base[..., None]
    levels = np.clip(np.round(base.astype(np.float64) * 255), 0, 255)
    distinct = np.count_nonzero(np.bincount(levels.astype(np.uint8).ravel(), minlength=256))
    vals = 2. ** math.ceil(math.log2(distinct))
    rounded = levels / 255
    noise = (rng.poisson(rounded * vals) / vals - rounded).astype(np.float32)
    out = img + noise * np.float32(scale)
    return np.clip(out, 0, 1) if clip else out


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """JPEG-compress (libjpeg through cv2, 4:2:0 chroma) and decode ``img`` (H, W, C) at ``quality`` (1..100);
    the result is float32 on 8-bit levels."""
    if not 1 <= quality <= 100:
        raise ValueError(f'JPEG quality {quality} must lie between 1 and 100')
    pixels = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    pixels = pixels[..., 0] if pixels.shape[-1] == 1 else pixels[..., ::-1]  # cv2 takes BGR
    ok, data = cv2.imencode('.jpg', np.ascontiguousarray(pixels), [cv2.IMWRITE_JPEG_QUALITY, int(round(quality))])
    if not ok:
        raise RuntimeError('JPEG encoding failed')
    out = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    out = out[..., None] if out.ndim == 2 else out[..., ::-1]
    return out.astype(np.float32) / 255


# ------------------------------------------------------------------ options

def _fail(key: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f'degradation option {key}={value!r} is not allowed: {allowed}')


def _number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and math.isfinite(x)


def _prob(key: str, v: Any) -> float:
    if not _number(v) or not 0 <= v <= 1:
        raise _fail(key, v, 'use a probability between 0 and 1')
    return float(v)


def _probs(n: Optional[int]) -> Callable[[str, Any], Tuple[float, ...]]:
    def check(key: str, v: Any) -> Tuple[float, ...]:
        what = 'probabilities' if n is None else f'{n} probabilities'
        if (not isinstance(v, (list, tuple)) or not v or (n is not None and len(v) != n)
                or not all(_number(p) and p >= 0 for p in v) or abs(sum(v) - 1) > 1e-6):
            raise _fail(key, v, f'use a list of {what}, each 0 or more, summing to 1')
        return tuple(float(p) for p in v)
    return check


def _range(low: float = -math.inf, above: bool = False, high: float = math.inf, contains: Optional[float] = None,
           integer: bool = False, odd: bool = False) -> Callable[[str, Any], Tuple[float, float]]:
    def check(key: str, v: Any) -> Tuple[float, float]:
        parts = ['[lo, hi] with lo <= hi']
        if low > -math.inf:
            parts.append(f'lo {">" if above else ">="} {low:g}')
        if high < math.inf:
            parts.append(f'hi <= {high:g}')
        if contains is not None:
            parts.append(f'lo <= {contains:g} <= hi')
        if integer or odd:
            parts.append('odd integers' if odd else 'integers')
        ok = isinstance(v, (list, tuple)) and len(v) == 2 and all(_number(x) for x in v)
        ok = ok and v[0] <= v[1] and (v[0] > low if above else v[0] >= low) and v[1] <= high
        ok = ok and (contains is None or v[0] <= contains <= v[1])
        ok = ok and (not (integer or odd) or all(float(x).is_integer() for x in v))
        ok = ok and (not odd or all(int(x) % 2 == 1 for x in v))
        if not ok:
            raise _fail(key, v, 'use ' + ', '.join(parts))
        return (int(v[0]), int(v[1])) if integer or odd else (float(v[0]), float(v[1]))
    return check


def _kinds(key: str, v: Any) -> Tuple[str, ...]:
    if not isinstance(v, (list, tuple)) or not v or not all(k in KERNEL_KINDS for k in v):
        raise _fail(key, v, f'use a list of kernel kinds from {", ".join(KERNEL_KINDS)}')
    return tuple(v)


def _flag(key: str, v: Any) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise _fail(key, v, 'use true or false')
    return bool(v)


def _parse(name: str, spec: Dict[str, Tuple[Any, Callable]], options: Dict[str, Any]) -> Dict[str, Any]:
    for key, value in options.items():
        if key not in spec:
            raise ValueError(f'degradation option {key}={value!r} is not known for {name!r}; '
                             f'use one of {", ".join(spec)}')
    values = {key: check(key, options.get(key, default)) for key, (default, check) in spec.items()}
    for suffix in ('', '2'):
        kinds, probs = values.get('kernel_list' + suffix), values.get('kernel_prob' + suffix)
        if kinds is not None and len(kinds) != len(probs):
            raise _fail('kernel_prob' + suffix, list(probs),
                        f'give one probability per kernel_list{suffix} entry ({len(kinds)})')
    return values


def _check_scale(scale: Any) -> int:
    if not _number(scale) or int(scale) != scale or scale < 1:
        raise ValueError(f'degradation scale={scale!r} is not allowed: use a positive integer')
    return int(scale)


def _check_input(hr: np.ndarray, scale: int) -> np.ndarray:
    if not isinstance(hr, np.ndarray) or hr.ndim != 3 or hr.shape[-1] not in (1, 3):
        raise ValueError(f'the HR image must be a numpy array (H, W, C) with C = 3 or 1, got '
                         f'{getattr(hr, "shape", type(hr).__name__)}')
    h, w = hr.shape[:2]
    if h % scale or w % scale or min(h, w) < scale:
        raise ValueError(f'the HR image size {h}x{w} must be a positive multiple of the scale {scale}')
    return np.array(hr, dtype=np.float32)


def _quality(rng: np.random.Generator, quality_range: Tuple[int, int]) -> int:
    return int(rng.integers(quality_range[0], quality_range[1] + 1))


def _odd_size(rng: np.random.Generator, size_range: Tuple[int, int]) -> int:
    return 2 * int(rng.integers(size_range[0] // 2, size_range[1] // 2 + 1)) + 1


# ------------------------------------------------------------------ Real-ESRGAN

def _interpolate(img: np.ndarray, mode: str, size: Tuple[int, int], factor: Optional[float] = None) -> np.ndarray:
    """torch's F.interpolate of (H, W, C): by ``factor`` (as BasicSR's first resize) or to ``size``."""
    x = torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()
    corners = None if mode == 'area' else False
    if factor is not None and min(size) >= 1:
        x = F.interpolate(x, scale_factor=factor, mode=mode, align_corners=corners)
    else:
        x = F.interpolate(x, size=(max(1, size[0]), max(1, size[1])), mode=mode, align_corners=corners)
    return np.ascontiguousarray(x[0].permute(1, 2, 0).numpy())


def _resize_factor(rng: np.random.Generator, probs: Tuple[float, ...], factor_range: Tuple[float, float]) -> float:
    kind = rng.choice(3, p=probs)  # up, down, keep
    if kind == 0:
        return float(rng.uniform(1, factor_range[1]))
    if kind == 1:
        return float(rng.uniform(factor_range[0], 1))
    return 1.


_KERNEL_PROB = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)


def _realesrgan_spec() -> Dict[str, Tuple[Any, Callable]]:
    spec = {'gt_usm': (True, _flag), 'kernel_size_range': ((7, 21), _range(low=3, odd=True))}
    for suffix, sigma, resize_prob, resize_range, noise, poisson in (
            ('', (0.2, 3), (0.2, 0.7, 0.1), (0.15, 1.5), (1, 30), (0.05, 3)),
            ('2', (0.2, 1.5), (0.3, 0.4, 0.3), (0.3, 1.2), (1, 25), (0.05, 2.5))):
        if suffix:
            spec['second_blur_prob'] = (0.8, _prob)
        spec.update({
            'kernel_list' + suffix: (KERNEL_KINDS, _kinds),
            'kernel_prob' + suffix: (_KERNEL_PROB, _probs(None)),
            'sinc_prob' + suffix: (0.1, _prob),
            'blur_sigma' + suffix: (sigma, _range(low=0, above=True)),
            'betag_range' + suffix: ((0.5, 4), _range(low=0, above=True, contains=1)),
            'betap_range' + suffix: ((1, 2), _range(low=0, above=True, contains=1)),
            'resize_prob' + suffix: (resize_prob, _probs(3)),
            'resize_range' + suffix: (resize_range, _range(low=0, above=True, contains=1)),
            'gaussian_noise_prob' + suffix: (0.5, _prob),
            'noise_range' + suffix: (noise, _range(low=0)),
            'poisson_scale_range' + suffix: (poisson, _range(low=0)),
            'gray_noise_prob' + suffix: (0.4, _prob),
            'jpeg_range' + suffix: ((30, 95), _range(low=1, high=100, integer=True)),
        })
    spec['final_sinc_prob'] = (0.8, _prob)
    return spec


class _Pipeline:
    """What both pipelines share: the scale and the options, checked against the pipeline's spec."""
    name = ''

    def __init__(self, scale: int = 4, **options):
        self.scale = _check_scale(scale)
        self.options = _parse(self.name, self._spec(), options)

    @staticmethod
    def _spec() -> Dict[str, Tuple[Any, Callable]]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f'{type(self).__name__}(scale={self.scale})'


class RealESRGANDegradation(_Pipeline):
    """Real-ESRGAN's second-order degradation of one HR image (stages and defaults: docs/degradations.md).

    Options are the keys of ``train_realesrnet_x4plus.yml`` (``kernel_list``, ``sinc_prob``, ``resize_prob2``,
    ``jpeg_range2``, ...) plus ``kernel_size_range`` (odd sizes, BasicSR's fixed 7..21) and ``gt_usm`` (degrade
    the unsharp-masked HR image, as BasicSR does when it sharpens the targets); a bad key or value raises
    ValueError.
    """
    name = 'realesrgan'
    _spec = staticmethod(_realesrgan_spec)

    def blur_kernel(self, rng: np.random.Generator, suffix: str = '') -> np.ndarray:
        """A kernel of the first (``suffix`` '') or second ('2') blur: a sinc filter with probability
        ``sinc_prob``, else ``random_kernel``; odd size uniform in ``kernel_size_range``."""
        o = self.options
        size = _odd_size(rng, o['kernel_size_range'])
        if rng.random() < o['sinc_prob' + suffix]:
            omega_c = rng.uniform(math.pi / 3 if size < 13 else math.pi / 5, math.pi)
            return sinc_kernel(omega_c, size)
        return random_kernel(rng, size, o['kernel_list' + suffix], o['kernel_prob' + suffix],
                             o['blur_sigma' + suffix], o['betag_range' + suffix], o['betap_range' + suffix])[0]

    def _noise(self, img: np.ndarray, rng: np.random.Generator, suffix: str) -> np.ndarray:
        o = self.options
        gaussian = rng.random() < o['gaussian_noise_prob' + suffix]
        strength = rng.uniform(*o[('noise_range' if gaussian else 'poisson_scale_range') + suffix])
        gray = bool(rng.random() < o['gray_noise_prob' + suffix])
        if gaussian:
            return add_gaussian_noise(img, rng, strength, gray)
        return add_poisson_noise(img, rng, strength, gray)

    def __call__(self, hr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """HR float32 (H, W, C) in [0, 1] -> LR float32 (H / scale, W / scale, C) on 8-bit levels."""
        img, o, s = _check_input(hr, self.scale), self.options, self.scale
        h, w = img.shape[:2]
        if o['gt_usm']:
            img = usm_sharp(img)
        # first degradation: blur, random resize, noise, JPEG
        img = filter2d(img, self.blur_kernel(rng))
        factor = _resize_factor(rng, o['resize_prob'], o['resize_range'])
        mode = _RESIZE_MODES[rng.integers(3)]
        img = _interpolate(img, mode, (int(img.shape[0] * factor), int(img.shape[1] * factor)), factor)
        img = jpeg(self._noise(img, rng, ''), _quality(rng, o['jpeg_range']))
        # second degradation: blur (sometimes), resize relative to the LR size, noise
        if rng.random() < o['second_blur_prob']:
            img = filter2d(img, self.blur_kernel(rng, '2'))
        factor = _resize_factor(rng, o['resize_prob2'], o['resize_range2'])
        mode = _RESIZE_MODES[rng.integers(3)]
        img = _interpolate(img, mode, (int(h / s * factor), int(w / s * factor)))
        img = self._noise(img, rng, '2')
        # final: [resize to the LR size + sinc filter] and JPEG, in random order
        final = None
        if rng.random() < o['final_sinc_prob']:
            size = _odd_size(rng, o['kernel_size_range'])
            final = sinc_kernel(rng.uniform(math.pi / 3, math.pi), size)
        resize_first = rng.random() < 0.5
        mode = _RESIZE_MODES[rng.integers(3)]
        quality = _quality(rng, o['jpeg_range2'])
        if not resize_first:
            img = jpeg(img, quality)
        img = _interpolate(img, mode, (h // s, w // s))
        if final is not None:
            img = filter2d(img, final)
        if resize_first:
            img = jpeg(img, quality)
        return (np.clip(np.round(img * 255), 0, 255) / 255).astype(np.float32)


# ------------------------------------------------------------------ BSRGAN

def _cv2_resize(img: np.ndarray, size: Tuple[int, int], interpolation: int) -> np.ndarray:
    out = cv2.resize(img, (max(1, size[1]), max(1, size[0])), interpolation=interpolation)
    return np.clip(out.reshape(*out.shape[:2], img.shape[-1]), 0, 1)


def _bsrgan_spec() -> Dict[str, Tuple[Any, Callable]]:
    return {
        'scale2_prob': (0.25, _prob),
        'kernel_size_range': ((7, 25), _range(low=3, odd=True)),
        'aniso_prob': (0.5, _prob),
        'blur_nearest_prob': (0.25, _prob),
        'noise_range': ((2, 25), _range(low=0, integer=True)),
        'noise_type_prob': ((0.4, 0.4, 0.2), _probs(3)),
        'jpeg_prob': (0.9, _prob),
        'jpeg_range': ((30, 95), _range(low=1, high=100, integer=True)),
    }


class BSRGANDegradation(_Pipeline):
    """BSRGAN's shuffled degradation of one HR image, as KAIR's ``degradation_bsrgan`` with ``isp_model=None``.

    Options: ``scale2_prob`` (x4 only: halve the image first), ``kernel_size_range`` (odd, 7..25),
    ``aniso_prob`` (anisotropic vs isotropic blur), ``blur_nearest_prob`` (blur + nearest vs resizing in the
    first downsampling), ``noise_range`` (integer sigmas, 0..255 scale), ``noise_type_prob`` (colour, grey,
    channel-correlated), ``jpeg_prob`` (JPEG among the shuffled stages; a final JPEG always follows) and
    ``jpeg_range``. Stages and ranges: docs/degradations.md.
    """
    name = 'bsrgan'
    _spec = staticmethod(_bsrgan_spec)

    def blur_kernel(self, rng: np.random.Generator, sf: int) -> np.ndarray:
        """KAIR's ``add_blur`` kernel for the current factor ``sf``: anisotropic Gaussian with covariance
        eigenvalues uniform in [0, 4 + sf] and angle in [0, pi), or isotropic with sigma uniform in
        [0, 2 + 0.2 sf]."""
        size = _odd_size(rng, self.options['kernel_size_range'])
        if rng.random() < self.options['aniso_prob']:
            l1, l2 = rng.uniform(0, 4 + sf, size=2)
            theta = rng.uniform(0, math.pi)
            # a draw of 0 (a singular covariance) becomes a 1e-3 sigma: a delta kernel in effect
            return gaussian_kernel(size, max(math.sqrt(l1), 1e-3), max(math.sqrt(l2), 1e-3), theta)
        return gaussian_kernel(size, max(rng.uniform(0, 2 + 0.2 * sf), 1e-3))

    def _noise(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        lo, hi = self.options['noise_range']
        level = int(rng.integers(lo, hi + 1))
        kind = rng.choice(3, p=self.options['noise_type_prob'])
        if kind < 2:  # colour or grey
            return add_gaussian_noise(img, rng, level, gray=kind == 1)
        # channel-correlated: covariance |L^2 U^T D U|, L = the top noise level, D diagonal, U orthonormal
        diag = np.diag(rng.random(3))
        basis = np.linalg.svd(rng.random((3, 3)))[0]
        cov = np.abs((hi / 255) ** 2 * basis.T @ diag @ basis)
        h, w, c = img.shape
        if c == 1:  # grey images: the marginal of one channel
            noise = rng.standard_normal((h, w, 1)) * math.sqrt(cov[0, 0])
        else:
            values, vectors = np.linalg.eigh(cov)
            noise = rng.standard_normal((h * w, 3)) @ (vectors * np.sqrt(np.clip(values, 0, None))).T
        return np.clip(img + noise.reshape(h, w, c).astype(np.float32), 0, 1)

    def __call__(self, hr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """HR float32 (H, W, C) in [0, 1] -> LR float32 (H / scale, W / scale, C) on 8-bit levels."""
        img, o, sf = _check_input(hr, self.scale), self.options, self.scale
        if sf == 4 and rng.random() < o['scale2_prob']:  # halve first, then degrade by 2
            h, w = img.shape[:2]
            if rng.random() < 0.5:
                img = _cv2_resize(img, (h // 2, w // 2), _CV2_MODES[rng.integers(3)])
            else:
                img = np.clip(imresize(img, 0.5), 0, 1)  # MATLAB's bicubic with antialiasing
            sf = 2
        # stages 0, 1: blur; 2: first downsampling; 3: downsampling to the LR size; 4: noise; 5: JPEG
        order = list(rng.permutation(6))
        i2, i3 = order.index(2), order.index(3)
        if i2 > i3:  # the LR size is reached last
            order[i2], order[i3] = 3, 2
        size_before = img.shape[:2]
        for stage in order:
            if stage in (0, 1):
                img = filter2d(img, self.blur_kernel(rng, sf))
            elif stage == 2:
                size_before = img.shape[:2]
                if rng.random() < o['blur_nearest_prob']:
                    # blur with a kernel shifted by (sf - 1) / 2 so that taking every sf-th pixel is centred
                    shift = (sf - 1) / 2
                    kernel = gaussian_kernel(25, rng.uniform(0.1, 0.6 * sf), offset=(shift, shift))
                    img = np.clip(filter2d(img, kernel)[0::sf, 0::sf], 0, 1)
                else:
                    factor = rng.uniform(1, 2 * sf)
                    size = (int(img.shape[0] / factor), int(img.shape[1] / factor))
                    img = _cv2_resize(img, size, _CV2_MODES[rng.integers(3)])
            elif stage == 3:
                size = (int(size_before[0] / sf), int(size_before[1] / sf))
                img = _cv2_resize(img, size, _CV2_MODES[rng.integers(3)])
            elif stage == 4:
                img = self._noise(img, rng)
            elif rng.random() < o['jpeg_prob']:
                img = jpeg(img, _quality(rng, o['jpeg_range']))
        return jpeg(img, _quality(rng, o['jpeg_range']))


DEGRADATION_PIPELINES = {'realesrgan': RealESRGANDegradation, 'bsrgan': BSRGANDegradation}
