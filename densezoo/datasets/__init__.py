"""Datasets and transforms for training."""
from densezoo.datasets.folder import (DataError, EpochSampler, ImageFolderDataset, list_classes, preserved_rng,
                                      seeded_rng)
from densezoo.datasets.transforms import build_transform

__all__ = ['DataError', 'EpochSampler', 'ImageFolderDataset', 'list_classes', 'preserved_rng', 'seeded_rng', 'build_transform']
