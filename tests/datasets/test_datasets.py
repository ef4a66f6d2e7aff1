"""Image folders, per-sample seeding, the epoch sampler and both transform pipelines."""
import random

import numpy as np
import pytest
import torch

from densezoo.datasets import EpochSampler, ImageFolderDataset, build_transform, preserved_rng
from densezoo.tasks.classification import ClassificationDataConfig
from tests.engine.conftest import make_dataset

RESOLVED = dict(input_size=(3, 16, 16), interpolation='bilinear', mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0)


@pytest.mark.parametrize('pipeline', ['timm', 'albumentations'])
def test_samples_depend_only_on_seed_epoch_and_index(tmp_path, pipeline):
    root = make_dataset(tmp_path / 'data')
    data = ClassificationDataConfig(root=str(root), pipeline=pipeline, scale=(0.3, 1.0), hflip=0.5,
                                    color_jitter=0.4)
    dataset = ImageFolderDataset(root / 'train', build_transform(data, RESOLVED, training=True), seed=3)
    assert dataset.classes == ['blue', 'green', 'red'] and len(dataset) == 36
    first = dataset[5][0]
    torch.manual_seed(123)  # the caller's RNG state does not matter ...
    assert torch.equal(dataset[5][0], first)
    dataset.set_epoch(1)  # ... but the epoch does
    assert not torch.equal(dataset[5][0], first)
    assert first.shape == (3, 16, 16) and dataset[5][1] == 0


def test_the_callers_rng_state_is_left_alone(tmp_path):
    root = make_dataset(tmp_path / 'data')
    data = ClassificationDataConfig(root=str(root), hflip=0.5)
    dataset = ImageFolderDataset(root / 'train', build_transform(data, RESOLVED, training=True))
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    expected = (torch.rand(1), np.random.rand(), random.random())
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    dataset[0]
    assert (torch.rand(1), np.random.rand(), random.random()) == expected
    dataset.restore_rng = False  # the engine restores once per batch instead
    torch.manual_seed(0)
    with preserved_rng():
        dataset[0]
    assert torch.equal(torch.rand(1), expected[0])


def test_epoch_sampler_shuffles_per_epoch_splits_and_resumes():
    sampler = EpochSampler(10, shuffle=True, seed=1)
    order = list(sampler)
    assert sorted(order) == list(range(10)) and order == list(EpochSampler(10, shuffle=True, seed=1))
    sampler.set_epoch(1)
    epoch_one = list(sampler)
    assert epoch_one != order and sorted(epoch_one) == list(range(10))
    sampler.set_start(4)  # resuming after four samples of epoch 1
    assert list(sampler) == epoch_one[4:] and len(sampler) == 6
    ranks = [list(EpochSampler(11, shuffle=True, seed=2, rank=r, world_size=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 6 and set(ranks[0]) | set(ranks[1]) == set(range(11))
    val = [list(EpochSampler(11, shuffle=False, rank=r, world_size=2, pad=False)) for r in range(2)]
    assert sorted(val[0] + val[1]) == list(range(11))  # every image exactly once: exact summed metrics
