"""Image transforms for training and evaluation: timm's pipeline, or albumentations."""
import os
from typing import Any, Callable, Dict, List, Sequence

import numpy as np
import torch

from timm.data import create_transform

__all__ = ['build_transform', 'seed_albumentations']


def seed_albumentations(pipeline) -> None:
    """Seed an albumentations ``Compose`` and each of its transforms from torch's RNG.

    ``Compose.set_random_seed`` gives every transform the same seed, so transforms with the same probability would
    all fire together or not at all; each gets its own seed here.
    """
    def draw() -> int:
        return int(torch.randint(0, 2 ** 31 - 1, ()))

    pipeline.set_random_seed(draw())
    for transform in getattr(pipeline, 'transforms', ()):
        if hasattr(transform, 'transforms'):
            seed_albumentations(transform)
        elif hasattr(transform, 'set_random_seed'):
            transform.set_random_seed(draw())


class AlbumentationsTransform:
    """Apply an albumentations pipeline to a PIL image and return a CHW float tensor.

    albumentations draws from its own generators, seeded from the OS unless told otherwise; each call seeds them from
    torch's RNG, so the result is as reproducible as timm's transforms under the dataset's per-sample seeding.
    """

    def __init__(self, pipeline):
        self.pipeline = pipeline

    def __call__(self, image):
        seed_albumentations(self.pipeline)
        return self.pipeline(image=np.asarray(image))['image']

    def __repr__(self) -> str:
        return f'AlbumentationsTransform({self.pipeline})'


def albumentations_steps(steps: Sequence[Dict[str, Any]]) -> list:
    """albumentations transforms from config steps such as ``{name: HorizontalFlip, p: 0.5}``; a one-line
    ``ValueError`` names a step that is not an albumentations transform."""
    os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')  # no update check over the network
    import albumentations as A
    transforms = []
    for step in steps:
        step = dict(step)
        name = step.pop('name', None)
        if not name or not hasattr(A, name):
            raise ValueError(f'data.albumentations step {name!r} is not an albumentations transform; '
                             f'use e.g. {{name: HorizontalFlip, p: 0.5}}')
        transforms.append(getattr(A, name)(**step))
    return transforms


def _albumentations(size: int, training: bool, options: Dict[str, Any], steps: List[Dict[str, Any]],
                    mean: Sequence[float], std: Sequence[float]) -> Callable:
    os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')  # no update check over the network
    import albumentations as A
    from albumentations.pytorch import ToTensorV2
    if training and steps:
        transforms = albumentations_steps(steps)
    elif training:
        transforms = [A.RandomResizedCrop(size=(size, size), scale=tuple(options['scale']),
                                          ratio=tuple(options['ratio']))]
        if options['hflip'] > 0:
            transforms.append(A.HorizontalFlip(p=options['hflip']))
        if options['color_jitter'] > 0:
            jitter = options['color_jitter']
            transforms.append(A.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=0, p=0.8))
    else:
        crop = int(round(size / options['crop_pct']))
        transforms = [A.SmallestMaxSize(max_size=crop), A.CenterCrop(height=size, width=size)]
    transforms += [A.Normalize(mean=tuple(mean), std=tuple(std)), ToTensorV2()]
    return AlbumentationsTransform(A.Compose(transforms))


def build_transform(data, resolved: Dict[str, Any], training: bool) -> Callable:
    """The transform for ``data`` (the classification task's data section) with the model's resolved data settings.

    ``resolved`` holds ``input_size``, ``interpolation``, ``mean``, ``std`` and ``crop_pct`` (timm's
    ``resolve_data_config`` with the config's overrides applied).
    """
    size = resolved['input_size'][-1]
    options = dict(scale=data.scale, ratio=data.ratio, hflip=data.hflip, color_jitter=data.color_jitter,
                   crop_pct=resolved['crop_pct'])
    if data.pipeline == 'albumentations':
        return _albumentations(size, training, options, data.albumentations, resolved['mean'], resolved['std'])
    if training:
        return create_transform(
            resolved['input_size'], is_training=True, scale=data.scale, ratio=data.ratio, hflip=data.hflip,
            color_jitter=data.color_jitter, auto_augment=data.auto_augment, interpolation=resolved['interpolation'],
            mean=resolved['mean'], std=resolved['std'], re_prob=data.re_prob)
    return create_transform(
        resolved['input_size'], is_training=False, interpolation=resolved['interpolation'], mean=resolved['mean'],
        std=resolved['std'], crop_pct=resolved['crop_pct'])
