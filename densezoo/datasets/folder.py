"""Image-folder datasets for training: checked up front, deterministic per sample, explicit about bad files.

* Layout: ``<root>/<class>/<image>`` (ImageNet style). A missing folder, a class folder without images and a
  validation class unknown to training are one-line ``DataError``s.
* Unreadable images: ``corrupt='skip'`` warns (naming the file) and uses the next image instead; ``'error'``
  stops with the file's name. ``verify=True`` opens every image once before training.
* 16-bit images (grey and RGB PNGs) are read at their depth (``read_image``) and brought to 8 bits by rounding
  ``value / 257`` (``open_rgb``), not saturated as by PIL's ``convert('RGB')``.
* Augmentation randomness is seeded per sample from (seed, epoch, index), so a sample looks the same whichever
  worker loads it and whenever: a resumed run sees exactly the batches of an uninterrupted one.
"""
import contextlib
import os
import random
import warnings
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler, get_worker_info

from timm.data.readers.img_extensions import get_img_extensions, is_img_extension

__all__ = ['DataError', 'ImageFolderDataset', 'EpochSampler', 'seeded_rng', 'preserved_rng', 'list_classes',
           'bit_depth', 'read_image', 'open_rgb', 'to_uint8', 'warn_skipped']

#: PIL modes of 16-bit grey images ('I;16' from PNG; 'I' holds 32-bit integers, read as 16-bit values)
GREY16_MODES = ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I')


class DataError(ValueError):
    """A dataset that cannot be used; the message names the folder or file and the fix."""


@contextlib.contextmanager
def preserved_rng():
    """Restore the states of torch's CPU generator, numpy's global RNG and ``random`` after the block."""
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(np_state)
        random.setstate(py_state)


@contextlib.contextmanager
def seeded_rng(seed: int, restore: bool = True):
    """Seed torch, numpy and ``random`` for the block; with ``restore``, put their previous states back after it."""
    with preserved_rng() if restore else contextlib.nullcontext():
        # the CPU generator only: torch.manual_seed also queues a CUDA seeding call (with a stack trace) each time
        torch.random.default_generator.manual_seed(seed)
        np.random.seed(seed % 2 ** 32)
        random.seed(seed)
        yield


def bit_depth(img: Image.Image) -> int:
    """16 for an opened, not yet decoded image of 16 bits per channel, else 8.

    PIL reads 16-bit RGB(A) PNGs as 8-bit 'RGB' images; their raw mode (e.g. 'RGB;16B') still tells the depth.
    """
    if img.mode in GREY16_MODES:
        return 16
    for tile in img.tile:
        args = tile[3]
        rawmode = args[0] if isinstance(args, tuple) and args else args
        if isinstance(rawmode, str) and ';16' in rawmode:
            return 16
    return 8


def _read_16bit(path: Path, img: Image.Image) -> np.ndarray:
    if img.mode in GREY16_MODES:
        return np.clip(np.asarray(img), 0, 65535).astype(np.uint16)
    import cv2  # PIL cannot hold 16-bit colour
    pixels = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise OSError('OpenCV cannot decode this 16-bit image')
    if pixels.ndim == 3 and pixels.shape[2] >= 3:
        pixels = cv2.cvtColor(pixels[..., :3], cv2.COLOR_BGR2RGB)
    elif pixels.ndim == 3:  # grey and alpha
        pixels = pixels[..., 0]
    if pixels.dtype == np.uint8:
        return pixels.astype(np.uint16) * 257
    return pixels.astype(np.uint16)


def read_image(path, mode: str = 'RGB') -> Tuple[Union[Image.Image, np.ndarray], int]:
    """An image file and its bit depth: 8-bit images as a ``PIL.Image`` converted to ``mode``, 16-bit ones as a
    uint16 array, (H, W) for grey or (H, W, 3) RGB (alpha dropped; colour through OpenCV, as PIL cannot hold it)."""
    path = Path(path)
    with Image.open(path) as img:
        if bit_depth(img) == 16:
            return _read_16bit(path, img), 16
        return img.convert(mode), 8


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """uint16 values as the nearest 8-bit ones, ``round(value / 257)`` (65535 -> 255)."""
    return np.round(pixels.astype(np.float32) / 257).astype(np.uint8)


def open_rgb(path) -> Image.Image:
    """An image file as an 8-bit RGB ``PIL.Image``; 16-bit images are rounded to 8 bits (``to_uint8``)."""
    image, bits = read_image(path)
    if bits == 8:
        return image.convert('RGB')
    pixels = to_uint8(image)
    return Image.fromarray(np.repeat(pixels[..., None], 3, axis=-1) if pixels.ndim == 2 else pixels)


def warn_skipped(paths, what: str = 'image') -> None:
    """One warning for the unreadable files left out: how many, and the first five."""
    shown = ', '.join(map(str, paths[:5])) + (' ...' if len(paths) > 5 else '')
    warnings.warn(f'skipping {len(paths)} unreadable {what}{"" if len(paths) == 1 else "s"}: {shown}')


def _is_image(name: str) -> bool:
    return is_img_extension(os.path.splitext(name)[1].lower())


def list_classes(folder: Path) -> Dict[str, List[Path]]:
    """Class name -> sorted image paths, for a folder of class sub-folders; raises ``DataError`` if unusable."""
    if not folder.is_dir():
        raise DataError(f'data folder {str(folder)!r} does not exist; expected <root>/<split>/<class>/<image> '
                        f'(set data.root and the split names)')
    classes = {}
    for entry in sorted(p for p in folder.iterdir() if p.is_dir()):
        images = sorted(p for p in entry.rglob('*') if p.is_file() and _is_image(p.name))
        if not images:
            raise DataError(f'class folder {str(entry)!r} has no images ({" ".join(get_img_extensions())}); '
                            f'add images or remove the folder')
        classes[entry.name] = images
    if not classes:
        raise DataError(f'data folder {str(folder)!r} has no class sub-folders; expected <class>/<image> inside it')
    return classes


class ImageFolderDataset(Dataset):
    """``(image, class index)`` pairs from ``<folder>/<class>/<image>``.

    Args:
        folder: The split folder.
        transform: Called on the RGB ``PIL.Image``; returns the model input.
        class_to_idx: Class indices to use (the training split's, for validation); default: sorted class names.
        corrupt: 'skip' or 'error' for images that cannot be read.
        seed: Base seed of the per-sample augmentation randomness. The global RNG states are put back after each
            sample unless ``restore_rng`` is switched off (the training engine restores them once per batch).
        verify: Open every image once now.
        classes: The folder's ``list_classes`` result, if already known.
    """

    def __init__(
            self,
            folder,
            transform: Optional[Callable] = None,
            class_to_idx: Optional[Dict[str, int]] = None,
            corrupt: str = 'skip',
            seed: int = 0,
            verify: bool = False,
            classes: Optional[Dict[str, List[Path]]] = None,
    ):
        self.folder = Path(folder)
        classes = classes if classes is not None else list_classes(self.folder)
        if class_to_idx is None:
            class_to_idx = {name: i for i, name in enumerate(classes)}
        unknown = sorted(set(classes) - set(class_to_idx))
        if unknown:
            raise DataError(f'class folder {str(self.folder / unknown[0])!r} is not a training class; '
                            f'use the same class folders in every split')
        self.class_to_idx = class_to_idx
        self.samples: List[Tuple[Path, int]] = [
            (path, class_to_idx[name]) for name, paths in classes.items() for path in paths]
        self.transform = transform
        self.corrupt = corrupt
        self.seed = seed
        self.epoch = 0
        self.restore_rng = True
        if verify:
            self._verify()

    @property
    def classes(self) -> List[str]:
        return sorted(self.class_to_idx, key=self.class_to_idx.get)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation randomness of ``epoch`` (call before iterating a loader of this epoch)."""
        self.epoch = epoch

    def _verify(self) -> None:
        bad = []
        for path, _ in self.samples:
            try:
                with Image.open(path) as img:
                    img.verify()
            except Exception as err:  # PIL raises many types for broken files
                if self.corrupt == 'error':
                    raise DataError(f'cannot read image {str(path)!r} ({err}); fix or remove it, or set '
                                    f'data.corrupt_images=skip') from None
                bad.append(path)
        if bad:
            warn_skipped(bad)
            self.samples = [s for s in self.samples if s[0] not in set(bad)]

    def load(self, index: int) -> Tuple[Image.Image, int]:
        """The RGB image and label at ``index``, applying the corrupt-image policy."""
        for offset in range(len(self.samples)):
            path, label = self.samples[(index + offset) % len(self.samples)]
            try:
                return open_rgb(path), label
            except Exception as err:
                if self.corrupt == 'error':
                    raise DataError(f'cannot read image {str(path)!r} ({err}); fix or remove it, or set '
                                    f'data.corrupt_images=skip') from None
                warnings.warn(f'skipping unreadable image {str(path)!r} ({err})')
        raise DataError(f'no readable image in {str(self.folder)!r}')

    def __getitem__(self, index: int):
        image, label = self.load(index)
        if self.transform is not None:
            # worker processes only ever make samples: their RNG states need no restoring
            restore = self.restore_rng and get_worker_info() is None
            with seeded_rng(hash((self.seed, self.epoch, index)) % 2 ** 62, restore=restore):
                image = self.transform(image)
        return image, label

    def __len__(self) -> int:
        return len(self.samples)


class EpochSampler(Sampler[int]):
    """Indices of one epoch for one process: a seeded permutation (or the plain order), split across processes.

    Training pads the permutation so every process gets as many indices; evaluation (``pad=False``) gives each
    index to exactly one process, so summed metrics are exact. ``set_start(n)`` skips the first ``n`` indices of
    this process, to resume in the middle of an epoch.
    """

    def __init__(self, size: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1,
                 pad: bool = True):
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.start = 0

    def set_start(self, start: int) -> None:
        self.start = start

    def _indices(self) -> List[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        if self.pad and self.world_size > 1:
            total = -(-self.size // self.world_size) * self.world_size
            order += order[:total - self.size]
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start:])

    def __len__(self) -> int:
        return max(len(self._indices()) - self.start, 0)
