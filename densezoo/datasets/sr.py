"""Super-resolution (and restoration) datasets: HR / LR image pairs, or HR images degraded on the fly.

``SRPairedDataset`` yields ``(lr, hr)`` float32 tensors (C, h, w) and (C, h * scale, w * scale) in [0, 1], from
paired HR / LR folders or from HR images degraded by bicubic downscaling, Gaussian noise, JPEG compression or a
real-world pipeline (``bsrgan``, ``realesrgan``: ``densezoo.datasets.degradations``);
``pair_images``, ``load_image`` and ``degrade`` are its pieces. 16-bit images keep their depth (values / 65535;
8-bit ones / 255), and each sample (``SRPair``) carries its HR image's depth, at which validation scores it.

Design notes: docs/data.md.
"""
import io
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, get_worker_info

from densezoo.datasets.degradations import DEGRADATION_PIPELINES
from densezoo.datasets.folder import DataError, _is_image, read_image, seeded_rng, warn_skipped
from densezoo.imresize import imresize
from densezoo.datasets.transforms import seed_albumentations

__all__ = ['SRPairedDataset', 'SRPair', 'list_images', 'pair_images', 'load_image', 'load_image_bits',
           'tensor_to_image', 'degrade', 'collate_pairs', 'collate_pairs_and_bits', 'DEGRADATIONS',
           'SR_AUGMENTATIONS']

DEGRADATIONS = ('bicubic', 'noise', 'jpeg', *DEGRADATION_PIPELINES)
#: albumentations transforms that keep LR and HR aligned (symmetries of the square)
SR_AUGMENTATIONS = ('HorizontalFlip', 'VerticalFlip', 'Transpose', 'RandomRotate90', 'D4', 'SquareSymmetry')
_MARGIN = 4  # LR pixels around a crop that bicubic downscaling of the crop needs (the kernel reaches 3)
_REAL_WORLD_MARGIN = 32  # HR pixels around a crop degraded by a real-world pipeline: more than blur and resizing reach
_Y_WEIGHTS = (65.481, 128.553, 24.966)  # MATLAB rgb2ycbcr, for R, G, B in [0, 1]; Y in 16..235


def list_images(folder: Path) -> List[Path]:
    """The image files directly inside ``folder``, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and _is_image(p.name))


def _check_folder(folder: Path, kind: str) -> List[Path]:
    if not folder.is_dir():
        raise DataError(f'{kind} folder {str(folder)!r} does not exist')
    images = list_images(folder)
    if not images:
        raise DataError(f'{kind} folder {str(folder)!r} has no images (.png .jpg .jpeg)')
    return images


def pair_images(hr_dir, lr_dir=None, scale: int = 1) -> List[Tuple[Path, Optional[Path]]]:
    """(HR, LR) paths matched by stem; the LR stem may end in ``x{scale}`` (``0001.png`` <-> ``0001x2.png``).

    Without ``lr_dir`` the LR paths are None. Raises a one-line ``DataError`` for missing or empty folders and for
    the first image that has no partner.
    """
    hr_dir = Path(hr_dir)
    hr_images = _check_folder(hr_dir, 'HR')
    if lr_dir is None:
        return [(path, None) for path in hr_images]
    lr_dir = Path(lr_dir)
    lr_images = _check_folder(lr_dir, 'LR')
    lr_by_stem: Dict[str, Path] = {}
    suffix = f'x{scale}'
    for path in lr_images:
        stem = path.stem
        key = stem[:-len(suffix)] if stem.lower().endswith(suffix) and len(stem) > len(suffix) else stem
        lr_by_stem.setdefault(key, path)
        lr_by_stem.setdefault(stem, path)
    pairs, used = [], set()
    for path in hr_images:
        partner = lr_by_stem.get(path.stem)
        if partner is None:
            raise DataError(f'HR image {path.name!r} has no LR partner ({path.stem}.* or {path.stem}{suffix}.*); '
                            f'HR folder {str(hr_dir)!r}, LR folder {str(lr_dir)!r}')
        pairs.append((path, partner))
        used.add(partner)
    for path in lr_images:
        if path not in used:
            raise DataError(f'LR image {path.name!r} has no HR partner; LR folder {str(lr_dir)!r}, '
                            f'HR folder {str(hr_dir)!r}')
    return pairs


def _load_16bit(pixels: np.ndarray, channels: int, grey: str) -> np.ndarray:
    rgb = pixels.astype(np.float64) / 65535
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=-1)
    if channels == 3:
        return rgb.astype(np.float32)
    if grey == 'L':  # PIL's luma weights, rounded to 16-bit levels as PIL rounds to 8-bit ones
        value = rgb @ np.array([0.299, 0.587, 0.114])
    else:
        value = (16 + rgb @ np.array(_Y_WEIGHTS)) / 255
    return (np.round(value * 65535) / 65535).astype(np.float32)[..., None]


def load_image_bits(path: Path, channels: int = 3, grey: str = 'L') -> Tuple[np.ndarray, int]:
    """``load_image`` and the file's bit depth (8 or 16)."""
    image, bits = read_image(path, 'RGB' if channels == 3 or grey == 'Y' else 'L')
    if bits == 16:
        return _load_16bit(image, channels, grey), 16
    if channels == 3:
        return np.asarray(image, dtype=np.float32) / 255, 8
    if grey == 'L':
        return np.asarray(image, dtype=np.float32)[..., None] / 255, 8
    rgb = np.asarray(image, dtype=np.float64)
    y = 16 + (_Y_WEIGHTS[0] * rgb[..., 0] + _Y_WEIGHTS[1] * rgb[..., 1] + _Y_WEIGHTS[2] * rgb[..., 2]) / 255
    return (np.round(y) / 255).astype(np.float32)[..., None], 8


def load_image(path: Path, channels: int = 3, grey: str = 'L') -> np.ndarray:
    """An image file as float32 (H, W, C) in [0, 1]: 8-bit values / 255, 16-bit ones / 65535; 1 channel: PIL's
    'L' luma or MATLAB's Y (``grey``), rounded to levels of the file's depth."""
    return load_image_bits(path, channels, grey)[0]


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


def tensor_to_image(img: torch.Tensor) -> Image.Image:
    """An image tensor (C, H, W) in [0, 1] as an 8-bit PIL image (grey for one channel)."""
    pixels = (img.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy().transpose(1, 2, 0)
    return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)


def degrade(hr: np.ndarray, kind: str = 'bicubic', scale: int = 1, noise_sigma: float = 25.0,
            jpeg_quality: int = 40, bits: int = 8) -> np.ndarray:
    """The LR input for an HR image (H, W, C) float in [0, 1]. Noise draws from torch's global RNG.

    Bicubic: MATLAB's ``imresize`` of the integer image (as it was made for the released LR images): the HR values
    are taken as levels of ``bits`` bits (8 or 16) and the result is rounded to such levels.
    """
    if kind == 'bicubic':
        if scale == 1:
            return hr.copy()
        peak = 2 ** bits - 1
        lr = imresize(np.round(hr.astype(np.float64) * peak), 1 / scale)
        return (np.clip(np.round(lr), 0, peak) / peak).astype(np.float32)
    if kind == 'noise':
        noise = torch.randn(hr.shape, dtype=torch.float32).numpy() * (noise_sigma / 255)
        return (hr + noise).astype(np.float32)
    if kind == 'jpeg':
        pixels = _to_uint8(hr)
        image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
        buffer = io.BytesIO()
        image.save(buffer, format='JPEG', quality=int(jpeg_quality))
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            out = np.asarray(decoded, dtype=np.float32) / 255
        return out[..., None] if out.ndim == 2 else out
    raise ValueError(f'degradation {kind!r} is not known; use one of {", ".join(DEGRADATIONS)}')


class SRPair(tuple):
    """An ``(lr, hr)`` sample that also carries the bit depth of its HR image (``bits``: 8 or 16) for scoring."""

    def __new__(cls, lr: torch.Tensor, hr: torch.Tensor, bits: int = 8):
        pair = super().__new__(cls, (lr, hr))
        pair.bits = bits
        return pair

    def __reduce__(self):
        return type(self), (self[0], self[1], self.bits)


def collate_pairs(batch: Sequence[Tuple[torch.Tensor, torch.Tensor]]):
    """Collate whole images of different sizes: a tuple of LR tensors and a tuple of HR tensors."""
    lrs, hrs = zip(*batch)
    return tuple(lrs), tuple(hrs)


def collate_pairs_and_bits(batch: Sequence[SRPair]):
    """``collate_pairs`` and a tuple of the HR images' bit depths (8 for samples without one)."""
    return (*collate_pairs(batch), tuple(getattr(sample, 'bits', 8) for sample in batch))


def _augmentation(steps: Optional[Sequence[Dict[str, Any]]], hflip: float, rot: bool):
    os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')  # no update check over the network
    import albumentations as A
    transforms = []
    if steps:
        for step in steps:
            step = dict(step)
            name = step.pop('name', None)
            if name not in SR_AUGMENTATIONS:
                raise DataError(f'data.albumentations step {name!r} cannot be used for super-resolution; only '
                                f'{", ".join(SR_AUGMENTATIONS)} keep LR and HR aligned')
            transforms.append(getattr(A, name)(**step))
    else:  # BasicSR's augmentation: horizontal flip, vertical flip, transpose, each with probability 1/2
        if hflip > 0:
            transforms.append(A.HorizontalFlip(p=hflip))
        if rot:
            transforms += [A.VerticalFlip(p=0.5), A.Transpose(p=0.5)]
    if not transforms:
        return None
    return A.Compose(transforms, additional_targets={'hr': 'image'}, is_check_shapes=False)


class SRPairedDataset(Dataset):
    """``(lr, hr)`` image pairs for super-resolution and restoration.

    Args:
        hr_dir: Folder of the high-resolution (ground-truth) images.
        lr_dir: Folder of the matching low-resolution inputs; None makes them from HR by ``degradation``.
        scale: The upscaling factor (1 for denoising / JPEG artefact removal).
        lr_patch: Training crop size in LR pixels (the HR crop is ``lr_patch * scale``); None gives whole images.
        augment: albumentations steps (``[{name: HorizontalFlip, p: 0.5}, ...]``, symmetries only) for training;
            None gives BasicSR's flips and transposes (``hflip``, ``rot``).
        hflip: Probability of a horizontal flip (default augmentation).
        rot: Random vertical flips and transposes (default augmentation; with ``hflip`` all 8 symmetries).
        channels: 3 (RGB) or 1 (grey, see ``grey``).
        grey: 'L' (PIL's luma) or 'Y' (MATLAB's studio-range Y) for ``channels=1``.
        degradation: 'bicubic', 'noise', 'jpeg', or a real-world pipeline: 'bsrgan' or 'realesrgan' (without
            ``lr_dir``).
        noise_sigma: Standard deviation of the Gaussian noise, on the 0..255 scale.
        jpeg_quality: JPEG quality of the compressed input.
        degradation_options: Settings of a real-world pipeline that differ from its published ones.
        corrupt: 'skip' or 'error' for images that cannot be read.
        seed: Base seed of the per-sample randomness.
        verify: Open every image once now.
        repeat: Passes over the images per epoch (each with its own random crops); BasicSR's
            ``dataset_enlarge_ratio``.
    """

    def __init__(
            self,
            hr_dir,
            lr_dir=None,
            scale: int = 4,
            lr_patch: Optional[int] = None,
            augment: Optional[Sequence[Dict[str, Any]]] = None,
            hflip: float = 0.5,
            rot: bool = True,
            channels: int = 3,
            grey: str = 'L',
            degradation: str = 'bicubic',
            noise_sigma: float = 25.0,
            jpeg_quality: int = 40,
            degradation_options: Optional[Dict[str, Any]] = None,
            corrupt: str = 'skip',
            seed: int = 0,
            verify: bool = False,
            repeat: int = 1,
    ):
        if int(scale) != scale or scale < 1:
            raise DataError(f'scale={scale} must be a positive integer')
        if channels not in (1, 3):
            raise DataError(f'channels={channels} is not allowed; use 3 (RGB) or 1 (grey)')
        if grey not in ('L', 'Y'):
            raise DataError(f"grey={grey!r} is not allowed; use 'L' or 'Y'")
        if degradation not in DEGRADATIONS:
            raise DataError(f'degradation={degradation!r} is not known; use one of {", ".join(DEGRADATIONS)}')
        if degradation in ('noise', 'jpeg') and scale != 1:
            raise DataError(f'degradation={degradation!r} keeps the size: it needs scale 1, not {scale}')
        self.real_world = None
        if degradation in DEGRADATION_PIPELINES:
            try:
                self.real_world = DEGRADATION_PIPELINES[degradation](int(scale), **(degradation_options or {}))
            except ValueError as err:
                raise DataError(f'data.degradation_options: {err}') from None
        elif degradation_options:
            raise DataError(f'degradation_options are settings of the real-world pipelines '
                            f'({", ".join(DEGRADATION_PIPELINES)}), not of degradation={degradation!r}')
        if lr_patch is not None and lr_patch < 1:
            raise DataError(f'lr_patch={lr_patch} must be a positive number of pixels')
        if repeat < 1:
            raise DataError(f'repeat={repeat} must be at least 1')
        self.hr_dir = Path(hr_dir)
        self.lr_dir = Path(lr_dir) if lr_dir is not None else None
        self.samples = pair_images(self.hr_dir, self.lr_dir, int(scale))
        self.scale = int(scale)
        self.lr_patch = lr_patch
        self.channels, self.grey = channels, grey
        self.degradation, self.noise_sigma, self.jpeg_quality = degradation, noise_sigma, jpeg_quality
        self.corrupt = corrupt
        self.seed = seed
        self.repeat = repeat
        self.epoch = 0
        self.restore_rng = True
        self.pipeline = _augmentation(augment, hflip, rot) if lr_patch is not None else None
        if verify:
            self._verify()

    @property
    def training(self) -> bool:
        return self.lr_patch is not None

    def set_epoch(self, epoch: int) -> None:
        """Select the randomness of ``epoch`` (call before iterating a loader of this epoch)."""
        self.epoch = epoch

    def name(self, index: int) -> str:
        """The stem of the HR image of sample ``index``."""
        return self.samples[index % len(self.samples)][0].stem

    def __len__(self) -> int:
        return len(self.samples) * self.repeat

    # ------------------------------------------------------------------------------------------------------------
    def _unreadable(self, path: Path, err: Exception) -> DataError:
        return DataError(f'cannot read image {str(path)!r} ({err}); fix or remove it, or set '
                         f'data.corrupt_images=skip')

    def _verify(self) -> None:
        bad = []
        for pair in self.samples:
            for path in pair:
                if path is None:
                    continue
                try:
                    with Image.open(path) as img:
                        img.verify()
                except Exception as err:  # PIL raises many types for broken files
                    if self.corrupt == 'error':
                        raise self._unreadable(path, err) from None
                    bad.append(pair)
                    break
        if bad:
            warn_skipped([pair[0] for pair in bad], 'image pair')
            self.samples = [s for s in self.samples if s not in bad]
            if not self.samples:
                raise DataError(f'no readable image in {str(self.hr_dir)!r}')

    def load(self, index: int) -> Tuple[int, np.ndarray, Optional[np.ndarray], int]:
        """The index actually used, its HR and LR images (LR None without an LR folder) and the HR image's bit depth,
        applying the corrupt policy."""
        for offset in range(len(self.samples)):
            used = (index + offset) % len(self.samples)
            hr_path, lr_path = self.samples[used]
            path = hr_path
            try:
                hr, bits = load_image_bits(hr_path, self.channels, self.grey)
                path = lr_path
                lr = load_image(lr_path, self.channels, self.grey) if lr_path is not None else None
                return used, hr, lr, bits
            except Exception as err:
                if self.corrupt == 'error':
                    raise self._unreadable(path, err) from None
                warnings.warn(f'skipping unreadable image {str(path)!r} ({err})')
        raise DataError(f'no readable image in {str(self.hr_dir)!r}')

    def _check_sizes(self, index: int, hr: np.ndarray, lr: np.ndarray) -> None:
        (hh, hw), (lh, lw), s = hr.shape[:2], lr.shape[:2], self.scale
        if not (lh * s <= hh < (lh + 1) * s and lw * s <= hw < (lw + 1) * s):
            hr_path, lr_path = self.samples[index]
            raise DataError(f'LR image {str(lr_path)!r} is {lw}x{lh} but its HR image {hr_path.name!r} is {hw}x{hh}, '
                            f'not x{s} of it')

    def _check_patch(self, index: int, lr_size: Tuple[int, int]) -> None:
        if min(lr_size) < self.lr_patch:
            raise DataError(f'image {str(self.samples[index][0])!r} gives a {lr_size[1]}x{lr_size[0]} LR image, '
                            f'smaller than lr_patch={self.lr_patch}; lower the patch size or remove the image')

    def _degrade(self, hr: np.ndarray, bits: int) -> np.ndarray:
        if self.real_world is not None:  # its randomness from the sample's seeded torch RNG
            return self.real_world(hr, np.random.default_rng(int(torch.randint(0, 2 ** 62, ()))))
        return degrade(hr, self.degradation, self.scale, self.noise_sigma, self.jpeg_quality, bits)

    def _training_pair(self, index: int, hr: np.ndarray, lr: Optional[np.ndarray], bits: int):
        s, p = self.scale, self.lr_patch
        if lr is not None:
            self._check_sizes(index, hr, lr)
            lh, lw = lr.shape[:2]
        else:
            lh, lw = hr.shape[0] // s, hr.shape[1] // s
        self._check_patch(index, (lh, lw))
        top = int(torch.randint(0, lh - p + 1, ()))
        left = int(torch.randint(0, lw - p + 1, ()))
        hr_patch = hr[top * s:(top + p) * s, left * s:(left + p) * s]
        if lr is not None:
            lr_patch = lr[top:top + p, left:left + p]
        elif self.degradation == 'bicubic' and s > 1 or self.real_world is not None:
            # degrade the crop and a margin around it (clipped at the image border): for bicubic, the same LR
            # pixels as downscaling the whole image, whose border is mirrored in the same place; for the real-world
            # pipelines, blur and resizing see the image around the crop, as in a larger crop
            margin = _MARGIN if self.real_world is None else -(-_REAL_WORLD_MARGIN // s)
            y0, x0 = max(top - margin, 0), max(left - margin, 0)
            y1, x1 = min(top + p + margin, lh), min(left + p + margin, lw)
            region = self._degrade(hr[y0 * s:y1 * s, x0 * s:x1 * s], bits)
            lr_patch = region[top - y0:top - y0 + p, left - x0:left - x0 + p]
        else:
            lr_patch = self._degrade(hr_patch, bits)
        if self.pipeline is not None:
            seed_albumentations(self.pipeline)
            out = self.pipeline(image=lr_patch, hr=hr_patch)
            lr_patch, hr_patch = out['image'], out['hr']
        return lr_patch, hr_patch

    def _whole_pair(self, index: int, hr: np.ndarray, lr: Optional[np.ndarray], bits: int):
        s = self.scale
        if lr is not None:
            self._check_sizes(index, hr, lr)
            return lr, hr[:lr.shape[0] * s, :lr.shape[1] * s]
        hr = hr[:hr.shape[0] - hr.shape[0] % s, :hr.shape[1] - hr.shape[1] % s]
        if min(hr.shape[:2]) == 0:
            raise DataError(f'image {str(self.samples[index][0])!r} is smaller than the scale {s}')
        return self._degrade(hr, bits), hr

    def __getitem__(self, index: int) -> SRPair:
        used, hr, lr, bits = self.load(index % len(self.samples))
        # worker processes only ever make samples: their RNG states need no restoring
        restore = self.restore_rng and get_worker_info() is None
        with seeded_rng(hash((self.seed, self.epoch, index)) % 2 ** 62, restore=restore):
            if self.training:
                lr, hr = self._training_pair(used, hr, lr, bits)
            else:
                lr, hr = self._whole_pair(used, hr, lr, bits)

        def tensor(img: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32).transpose(2, 0, 1).copy())

        return SRPair(tensor(lr), tensor(hr), bits)
