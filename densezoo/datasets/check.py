"""Checks of a task's training and validation files before its first step, so that bad data stops a run at once
instead of when a sample is first drawn, hours in, or at the first validation.

Image headers only (``PIL.Image.open`` reads size and mode without decoding pixels): every file opens, SR pairs fit
the scale (and the training crop), segmentation label maps hold class indices (not RGB) at their image's size.
Segmentation label maps are also decoded (they are small) to check that their values are classes or the ignore
index. Unreadable files follow ``corrupt``: 'skip' leaves them out with one warning, 'error' stops naming the file.
Each check logs one line: the files checked and the time taken.
"""
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from densezoo.datasets.folder import DataError, ImageFolderDataset, bit_depth, warn_skipped
from densezoo.datasets.segmentation import LABEL_MODES, SegmentationDataset
from densezoo.datasets.sr import SRPairedDataset

__all__ = ['Header', 'read_header', 'label_values', 'check_image_folders', 'check_sr_pairs', 'check_segmentation']

_logger = logging.getLogger(__name__)
_CHUNK = 256  # files per job of the thread pool
IGNORE_INDEX = 255


@dataclass(frozen=True)
class Header:
    """What an image file's header says: its size (width, height), PIL mode and bits per channel."""
    size: Tuple[int, int]
    mode: str
    bits: int


def read_header(path) -> Header:
    """The header of an image file, without decoding its pixels; raises what PIL raises for unreadable files."""
    with Image.open(path) as img:
        return Header(img.size, img.mode, bit_depth(img))


def label_values(path) -> np.ndarray:
    """The distinct values of a label map (decoding its pixels), sorted."""
    with Image.open(path) as img:
        if img.mode in ('L', 'P'):  # 256-bin histogram of the stored indices, in C
            return np.flatnonzero(img.histogram())
        return np.unique(np.asarray(img))


def _map(function: Callable, items: Sequence, threads: int) -> list:
    """``function`` of each item, in order, with the exception it raised in place of a result; file reads wait on the
    disk (network file systems: long) more than on Python, so a few threads overlap them."""
    def job(chunk):
        results = []
        for item in chunk:
            try:
                results.append(function(item))
            except Exception as err:  # PIL raises many types for broken files
                results.append(err)
        return results

    chunks = [items[i:i + _CHUNK] for i in range(0, len(items), _CHUNK)]
    if threads <= 1 or len(chunks) <= 1:
        return [result for chunk in chunks for result in job(chunk)]
    with ThreadPoolExecutor(threads) as pool:
        return [result for results in pool.map(job, chunks) for result in results]


def _threads() -> int:
    return min(8, os.cpu_count() or 1)


class _Check:
    """The files checked, the unreadable ones (raised or collected by the ``corrupt`` policy) and the time."""

    def __init__(self, corrupt: str):
        self.corrupt = corrupt
        self.files = dict(training=0, validation=0)
        self.labels = 0
        self.deep = 0  # 16-bit files
        self.skipped: List[Path] = []
        self.start = time.perf_counter()

    def unreadable(self, path: Path, err: Exception) -> None:
        if self.corrupt == 'error':
            raise DataError(f'cannot read image {str(path)!r} ({err}); fix or remove it, or set '
                            f'data.corrupt_images=skip')
        self.skipped.append(path)

    def headers(self, split: str, paths: Sequence[Path]) -> Dict[Path, Header]:
        """The headers of the readable files among ``paths``."""
        self.files[split] += len(paths)
        readable = {}
        for path, header in zip(paths, _map(read_header, list(paths), _threads())):
            if isinstance(header, Exception):
                self.unreadable(path, header)
            else:
                readable[path] = header
                self.deep += header.bits == 16
        return readable

    def finish(self, log: bool) -> None:
        skipped = self.skipped
        if skipped:
            warn_skipped(skipped)
        if log:
            details = ['image headers'] + ([f'{self.deep} with 16 bits per channel'] if self.deep else []) + \
                ([f'values of {self.labels} label maps'] if self.labels else []) + \
                ([f'{len(skipped)} unreadable skipped'] if skipped else [])
            _logger.info(f'data check: {self.files["training"]} training and {self.files["validation"]} validation '
                         f'files in {time.perf_counter() - self.start:.2f} s ({", ".join(details)})')


def _keep(samples: list, keep: List[bool], folder) -> list:
    kept = [sample for sample, ok in zip(samples, keep) if ok]
    if not kept:
        raise DataError(f'no readable image in {str(folder)!r}')
    return kept


def check_image_folders(train: ImageFolderDataset, val: ImageFolderDataset, log: bool = True) -> None:
    """Open the header of every training and validation image; unreadable ones follow ``train.corrupt``."""
    check = _Check(train.corrupt)
    for split, dataset in (('training', train), ('validation', val)):
        readable = check.headers(split, [path for path, _ in dataset.samples])
        if len(readable) < len(dataset.samples):
            dataset.samples = _keep(dataset.samples, [path in readable for path, _ in dataset.samples],
                                    dataset.folder)
    check.finish(log)


def _sr_sizes(dataset: SRPairedDataset, index: int, hr: Header, lr: Optional[Header], crop_border: int) -> None:
    (hr_path, lr_path), s = dataset.samples[index], dataset.scale
    hw, hh = hr.size
    if lr is not None:
        lw, lh = lr.size
        if (lw, lh) != (hw // s, hh // s):
            raise DataError(f'LR image {str(lr_path)!r} is {lw}x{lh}, expected {hw // s}x{hh // s} (HR '
                            f'{str(hr_path)!r} {hw}x{hh} / scale {s}); use LR images made at x{s} from these HR '
                            f'images')
    elif min(hw, hh) < s:
        raise DataError(f'HR image {str(hr_path)!r} is {hw}x{hh}, smaller than the scale {s}; remove it')
    lw, lh = hw // s, hh // s
    if dataset.training:
        dataset._check_patch(index, (lh, lw))
    elif min(lw, lh) * s < 11 + 2 * crop_border:
        need = 11 + 2 * crop_border
        raise DataError(f'validation image {str(hr_path)!r} gives a {lw * s}x{lh * s} HR image, too small to score: '
                        f'SSIM needs {need}x{need} pixels (11x11 after cutting {crop_border} from each side, '
                        f'data.val_crop_border); lower data.val_crop_border or remove the image')


def check_sr_pairs(train: SRPairedDataset, val: SRPairedDataset, crop_border: int = 0, log: bool = True) -> None:
    """Open the header of every HR and LR image: LR images must be HR // scale, training images give at least
    ``lr_patch`` LR pixels, validation images leave 11x11 pixels to SSIM after ``crop_border`` is cut from each side.
    Unreadable images follow ``train.corrupt`` (a pair with one is left out)."""
    check = _Check(train.corrupt)
    for split, dataset in (('training', train), ('validation', val)):
        readable = check.headers(split, [path for pair in dataset.samples for path in pair if path is not None])
        keep = []
        for index, (hr, lr) in enumerate(dataset.samples):
            ok = hr in readable and (lr is None or lr in readable)
            if ok:
                _sr_sizes(dataset, index, readable[hr], readable.get(lr), crop_border)
            keep.append(ok)
        if not all(keep):
            dataset.samples = _keep(dataset.samples, keep, dataset.hr_dir)
    check.finish(log)


def _label_problem(values: np.ndarray, num_classes: int, reduce_zero_label: bool) -> Optional[str]:
    """What is wrong with a label map's values, or None."""
    values = values.astype(np.int64)
    low, high = (1, num_classes) if reduce_zero_label else (0, num_classes - 1)
    ignored = values == IGNORE_INDEX
    if reduce_zero_label:
        ignored |= values == 0
    bad = values[~ignored & ((values < low) | (values > high) | (values > IGNORE_INDEX))].tolist()
    if not bad:
        return None
    shown = '[' + ', '.join(map(str, bad[:5])) + (', ...]' if len(bad) > 5 else ']')
    if reduce_zero_label:
        return (f'holds values {shown} outside 1..{num_classes} (classes 0..{num_classes - 1} after '
                f'data.reduce_zero_label; 0 and {IGNORE_INDEX} are ignored); fix the label map, data.num_classes='
                f'{num_classes} or data.reduce_zero_label')
    return (f'holds values {shown} outside the classes 0..{num_classes - 1} that are not the ignore index '
            f'{IGNORE_INDEX}; fix the label map or data.num_classes={num_classes}')


def check_segmentation(train: SegmentationDataset, val: SegmentationDataset, num_classes: int, corrupt: str = 'skip',
                       log: bool = True) -> None:
    """Open the header of every image and label map (a label map holds one class index per pixel, at its image's
    size), then decode every label map and check its values: classes (below ``num_classes``, counted after the
    datasets' ``reduce_zero_label``) or the ignore index 255. Unreadable files follow ``corrupt`` (a pair with one is
    left out)."""
    check = _Check(corrupt)
    for split, dataset in (('training', train), ('validation', val)):
        readable = check.headers(split, [path for pair in dataset.samples for path in pair])
        keep = []
        for image, label in dataset.samples:
            ok = image in readable and label in readable
            if ok:
                mode, size, image_size = readable[label].mode, readable[label].size, readable[image].size
                if mode not in LABEL_MODES:
                    raise DataError(f'label map {str(label)!r} has mode {mode}; expected one class index per pixel '
                                    f'(a grey or palette PNG: L, P, I;16); store class indices, not colours')
                if size != image_size:
                    raise DataError(f'label map {str(label)!r} is {size[0]}x{size[1]} but its image {str(image)!r} '
                                    f'is {image_size[0]}x{image_size[1]}; label maps must have their image\'s size')
            keep.append(ok)
        labels = [label for (_, label), ok in zip(dataset.samples, keep) if ok]
        check.labels += len(labels)
        values = dict(zip(labels, _map(label_values, labels, _threads())))
        for index, (_, label) in enumerate(dataset.samples):
            if not keep[index]:
                continue
            if isinstance(values[label], Exception):
                check.unreadable(label, values[label])
                keep[index] = False
                continue
            problem = _label_problem(values[label], num_classes, dataset.reduce_zero_label)
            if problem:
                raise DataError(f'label map {str(label)!r} {problem}')
        if not all(keep):
            dataset.samples = _keep(dataset.samples, keep, Path(dataset.samples[0][0]).parent)
    check.finish(log)
