"""Datasets and transforms for training."""
from densezoo.datasets.folder import (DataError, EpochSampler, ImageFolderDataset, list_classes, preserved_rng,
                                      seeded_rng)
from densezoo.imresize import imresize
from densezoo.datasets.sr import SRPairedDataset, collate_pairs, degrade, load_image, pair_images
from densezoo.datasets.transforms import build_transform

__all__ = ['DataError', 'EpochSampler', 'ImageFolderDataset', 'list_classes', 'preserved_rng', 'seeded_rng',
           'build_transform', 'imresize', 'SRPairedDataset', 'collate_pairs', 'degrade', 'load_image', 'pair_images']
