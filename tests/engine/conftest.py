"""A tiny learnable image-folder dataset and a tiny training config for the engine tests, and the checks of
interrupted runs: waiting for a run to log its steps, comparing weights, the steps a log holds."""
import copy
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

COLOURS = {'red': (200, 40, 40), 'green': (40, 200, 40), 'blue': (40, 40, 200)}


def make_dataset(root: Path, per_class=(12, 4), size: int = 16, seed: int = 0) -> Path:
    """``root/{train,val}/<colour>/<n>.png``: noisy squares of three colours (easy to learn)."""
    rng = np.random.default_rng(seed)
    for split, count in zip(('train', 'val'), per_class):
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(count):
                pixels = np.clip(np.array(colour) + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f'{n}.png')
    return root


TINY_MODEL = dict(name='swin_tiny_patch4_window7_224_dwa',
                  kwargs=dict(img_size=16, patch_size=2, window_size=4, embed_dim=8, depths=[2, 2],
                              num_heads=[1, 2]))


def tiny_config(root: Path, output: Path, **overrides) -> dict:
    """Plain config values for a few fast steps on ``make_dataset``'s data."""
    config = dict(
        task='classification', name='tiny', output=str(output), seed=0, epochs=2, log_every=1,
        model=copy.deepcopy(TINY_MODEL),  # callers change the nested kwargs: never TINY_MODEL's own
        data=dict(root=str(root), img_size=16, batch_size=6, workers=0, hflip=0.0, color_jitter=0.0,
                  scale=[0.8, 1.0], crop_pct=1.0, label_smoothing=0.0),
        optim=dict(name='adamw', lr=3e-3, weight_decay=0.01),
        sched=dict(name='cosine', warmup_epochs=0),
    )
    for key, value in overrides.items():
        section, _, name = key.rpartition('.')
        (config[section] if section else config)[name] = value
    return config


def write_config(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture
def dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / 'data')


def wait_for_steps(proc, runs: Path, steps: int, timeout: float = 120) -> None:
    """Wait until the run that ``proc`` started under ``runs`` has logged ``steps`` training records (or ends)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        logs = list(runs.glob('*/log.jsonl'))
        if logs and logs[0].read_text().count('"kind": "train"') >= steps:
            return
        time.sleep(0.01)


def logged_steps(run: Path) -> list:
    """The steps of a run's training log records, in order."""
    return [record['step'] for record in map(json.loads, (run / 'log.jsonl').read_text().splitlines())
            if record['kind'] == 'train']


def assert_same_weights(a: Path, b: Path, names=('model.safetensors', 'ema.safetensors')) -> None:
    """The weights files ``names`` of checkpoint folders ``a`` and ``b`` hold equal tensors, bit for bit."""
    for name in names:
        x, y = load_file(str(a / name)), load_file(str(b / name))
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), f'{name}: {key}'
