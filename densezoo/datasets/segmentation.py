"""Semantic segmentation datasets in ADE20K's layout: ``<root>/images/<split>/<name>.jpg|png`` with label maps
``<root>/annotations/<split>/<name>.png`` (one class index per pixel, 255 = ignore), paired by file stem.

Entry points: ``SegmentationDataset``, ``build_seg_pipeline`` (mmseg's ADE20K recipe by default),
``pair_segmentation_files`` and ``collate_segmentation``.

Design notes: docs/data.md.
"""
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, get_worker_info

from densezoo.datasets.folder import DataError, _is_image, open_rgb, seeded_rng
from densezoo.datasets.transforms import albumentations_steps, seed_albumentations

NEAREST_EXACT = 6  # cv2.INTER_NEAREST_EXACT: pixel centres map to pixel centres (cv2.INTER_NEAREST shifts them)
#: PIL modes of label maps: one class index per pixel (grey or palette, 8 or 16 bits)
LABEL_MODES = ('L', 'P', 'I', 'I;16', 'I;16B', 'I;16L')

__all__ = ['SegmentationDataset', 'pair_segmentation_files', 'build_seg_pipeline', 'collate_segmentation',
           'LABEL_MODES']


def pair_segmentation_files(root, split: str) -> List[Tuple[Path, Path]]:
    """(image, label map) paths of ``<root>/images/<split>`` and ``<root>/annotations/<split>``, matched by stem."""
    image_dir, label_dir = Path(root) / 'images' / split, Path(root) / 'annotations' / split
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise DataError(f'data folder {str(folder)!r} does not exist; expected <root>/images/<split> and '
                            f'<root>/annotations/<split> (ADE20K layout)')
    images = {p.stem: p for p in sorted(image_dir.iterdir()) if p.is_file() and _is_image(p.name)}
    labels = {p.stem: p for p in sorted(label_dir.iterdir()) if p.is_file() and p.suffix.lower() == '.png'}
    if not images:
        raise DataError(f'image folder {str(image_dir)!r} has no images')
    missing = sorted(set(images) - set(labels))
    if missing:
        raise DataError(f'image {str(images[missing[0]])!r} has no label map {missing[0]}.png in '
                        f'{str(label_dir)!r} ({len(missing)} images without labels)')
    return [(images[stem], labels[stem]) for stem in sorted(images)]


def build_seg_pipeline(training: bool, crop_size: Optional[int], resize_short: Optional[int] = None,
                       ratio_range: Sequence[float] = (0.5, 2.0), hflip: float = 0.5, color_jitter: float = 0.0,
                       steps: Sequence[Dict[str, Any]] = (), mean: Sequence[float] = (0.485, 0.456, 0.406),
                       std: Sequence[float] = (0.229, 0.224, 0.225)):
    """An albumentations ``Compose`` over ``image`` and ``mask``. Training: ``steps`` (albumentations transforms by
    name, e.g. ``{name: HorizontalFlip, p: 0.5}``) if given, else the mmseg-style recipe described in the module
    docstring; evaluation: the short-side resize (image only when used through ``SegmentationDataset``). Both end
    with normalisation and conversion to tensors."""
    os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')  # no update check over the network
    import albumentations as A
    from albumentations.pytorch import ToTensorV2
    transforms = []
    if training and steps:
        transforms = albumentations_steps(steps)
    elif training:
        if resize_short:
            transforms.append(A.SmallestMaxSize(max_size=resize_short, mask_interpolation=NEAREST_EXACT))
        low, high = ratio_range
        if (low, high) != (1.0, 1.0):
            transforms.append(A.RandomScale(scale_limit=(low - 1, high - 1), mask_interpolation=NEAREST_EXACT, p=1.0))
        if crop_size:
            transforms += [A.PadIfNeeded(crop_size, crop_size, position='top_left', border_mode=0, fill=0,
                                         fill_mask=255),
                           A.RandomCrop(crop_size, crop_size)]
        if hflip > 0:
            transforms.append(A.HorizontalFlip(p=hflip))
        if color_jitter > 0:
            transforms.append(A.ColorJitter(brightness=color_jitter, contrast=color_jitter,
                                            saturation=color_jitter, hue=0, p=0.8))
    elif resize_short:
        transforms.append(A.SmallestMaxSize(max_size=resize_short))
    transforms += [A.Normalize(mean=tuple(mean), std=tuple(std)), ToTensorV2()]
    return A.Compose(transforms)


def collate_segmentation(batch):
    """Evaluation batches of different sizes: a tuple of images and a tuple of label maps."""
    images, labels = zip(*batch)
    return tuple(images), tuple(labels)


class SegmentationDataset(Dataset):
    """``(image, labels)`` samples: a normalised float tensor (3, H, W) and an int64 label map (H, W).

    Args:
        root: Dataset root (``images/`` and ``annotations/`` inside).
        split: Split folder name (e.g. 'training', 'validation').
        pipeline: ``build_seg_pipeline`` result.
        training: Apply ``pipeline`` to image and labels together; otherwise to the image only (labels keep their
            size).
        reduce_zero_label: Label 0 becomes 255 (ignored) and the others move down by one.
        seed: Base seed of the per-sample randomness.
    """

    def __init__(self, root, split: str, pipeline, training: bool, reduce_zero_label: bool = False,
                 seed: int = 0):
        self.samples = pair_segmentation_files(root, split)
        self.pipeline = pipeline
        self.training = training
        self.reduce_zero_label = reduce_zero_label
        self.seed = seed
        self.epoch = 0
        self.restore_rng = True

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation randomness of ``epoch``."""
        self.epoch = epoch

    def name(self, index: int) -> str:
        return self.samples[index][0].name

    def load(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        image_path, label_path = self.samples[index]
        image = np.asarray(open_rgb(image_path))  # 16-bit images rounded to 8 bits
        with Image.open(label_path) as lab:
            if lab.mode not in LABEL_MODES:
                raise DataError(f'label map {str(label_path)!r} has mode {lab.mode}; expected one class index per '
                                f'pixel (a grey or palette PNG)')
            labels = np.asarray(lab).astype(np.int64)
        if labels.shape != image.shape[:2]:
            raise DataError(f'label map {str(label_path)!r} is {labels.shape[1]}x{labels.shape[0]} but its image is '
                            f'{image.shape[1]}x{image.shape[0]}')
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise DataError(f'label map {str(label_path)!r} holds values outside 0..255; store class indices '
                            f'(255 = ignore)')
        if self.reduce_zero_label:
            labels = np.where((labels == 0) | (labels == 255), 255, labels - 1)
        return image, labels

    def __getitem__(self, index: int):
        image, labels = self.load(index)
        restore = self.restore_rng and get_worker_info() is None
        with seeded_rng(hash((self.seed, self.epoch, index)) % 2 ** 62, restore=restore):
            seed_albumentations(self.pipeline)
            if self.training:
                out = self.pipeline(image=image, mask=labels.astype(np.uint8))
                return out['image'], torch.as_tensor(np.asarray(out['mask']), dtype=torch.int64)
            return self.pipeline(image=image)['image'], torch.from_numpy(labels)

    def __len__(self) -> int:
        return len(self.samples)
