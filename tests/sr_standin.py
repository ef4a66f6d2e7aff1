"""A tiny super-resolution model registered with timm under test-only names, and tiny SR image folders.

The model has the SR contract of densezoo's models (``forward(lr) -> sr`` in [0, 1], ``upscale``, ``in_chans``):
bilinear upsampling plus a small learned residual (conv, ReLU, conv, pixel shuffle), so it starts close to a
smooth upscaling and learns quickly. ``densezoo_test_sr_x2`` / ``_x3`` take the usual timm arguments and load
``pretrained_cfg_overlay=dict(file=...)`` weights.
"""
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

__all__ = ['StandInSR', 'make_sr_images', 'smooth_image', 'sr_config', 'torchrun_standin']


class StandInSR(nn.Module):
    """Bilinear upsampling + conv(3x3) -> ReLU -> conv(3x3) -> PixelShuffle residual."""

    def __init__(self, upscale: int = 2, in_chans: int = 3, width: int = 16, **kwargs):
        super().__init__()
        self.upscale, self.in_chans = upscale, in_chans
        self.conv1 = nn.Conv2d(in_chans, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, in_chans * upscale ** 2, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = x if self.upscale == 1 else F.interpolate(x, scale_factor=self.upscale, mode='bilinear',
                                                         align_corners=False)
        return base + F.pixel_shuffle(self.conv2(F.relu(self.conv1(x))), self.upscale)


def _cfg(**kwargs):
    return dict(url='', input_size=(3, 16, 16), num_classes=0, mean=(0., 0., 0.), std=(1., 1., 1.), **kwargs)


default_cfgs = generate_default_cfgs({
    'densezoo_test_sr_x2.untrained': _cfg(),
    'densezoo_test_sr_x3.untrained': _cfg(),
    'densezoo_test_sr_denoise.untrained': _cfg(),
})


def _create(variant: str, pretrained: bool, **kwargs) -> StandInSR:
    return build_model_with_cfg(StandInSR, variant, pretrained, **kwargs)


@register_model
def densezoo_test_sr_x2(pretrained: bool = False, **kwargs) -> StandInSR:
    return _create('densezoo_test_sr_x2', pretrained, **dict(dict(upscale=2), **kwargs))


@register_model
def densezoo_test_sr_x3(pretrained: bool = False, **kwargs) -> StandInSR:
    return _create('densezoo_test_sr_x3', pretrained, **dict(dict(upscale=3), **kwargs))


@register_model
def densezoo_test_sr_denoise(pretrained: bool = False, **kwargs) -> StandInSR:
    return _create('densezoo_test_sr_denoise', pretrained, **dict(dict(upscale=1), **kwargs))


def smooth_image(size, seed: int = 0) -> np.ndarray:
    """An (H, W, 3) uint8 image of smooth colour waves with some finer texture (learnable detail)."""
    height, width = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = []
    for _ in range(3):
        fy, fx, phase = rng.uniform(0.05, 0.6, 2).tolist() + [rng.uniform(0, 6.28)]
        wave = np.sin(fy * y + phase) * np.cos(fx * x - phase) + 0.3 * np.sin(0.9 * x + 0.7 * y)
        channels.append(0.5 + 0.35 * wave / 1.3)
    return np.clip(np.round(np.stack(channels, -1) * 255), 0, 255).astype(np.uint8)


def make_sr_images(root: Path, count=(6, 2), size=(40, 48), scale: int = 2, lr: bool = False,
                   lr_name: str = '{stem}x{scale}.png') -> Path:
    """``root/{train,val}/HR/<n>.png`` (and ``LR_bicubic/X{scale}`` by MATLAB-style bicubic with ``lr``)."""
    from densezoo.datasets import imresize
    for split, n in zip(('train', 'val'), count):
        hr_dir = root / split / 'HR'
        hr_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image = smooth_image(size, seed=i + (100 if split == 'val' else 0))
            Image.fromarray(image).save(hr_dir / f'{i:04d}.png')
            if lr:
                lr_dir = root / split / 'LR_bicubic' / f'X{scale}'
                lr_dir.mkdir(parents=True, exist_ok=True)
                Image.fromarray(imresize(image, 1 / scale)).save(lr_dir / lr_name.format(stem=f'{i:04d}', scale=scale))
    return root


def sr_config(root: Path, output: Path, **overrides) -> dict:
    """Plain config values for a few fast SR training steps of the stand-in on ``make_sr_images``' data."""
    config = dict(
        task='sr', name='tiny_sr', output=str(output), seed=0, epochs=3, log_every=1,
        model=dict(name='densezoo_test_sr_x2'),
        data=dict(root=str(root), lr_patch=8, batch_size=4, workers=0, repeat=2),
        optim=dict(name='adam', lr=2e-3, weight_decay=0.0, kwargs=dict(betas=[0.9, 0.99])),
        sched=dict(name='multistep', unit='steps', decay_milestones=[4, 8], decay_rate=0.5),
    )
    for key, value in overrides.items():
        section, _, name = key.rpartition('.')
        (config[section] if section else config)[name] = value
    return config


def torchrun_standin(config: Path, tmp_path: Path, processes: int = 2):
    """``torchrun --nproc_per_node processes tools/train.py config`` with the stand-in models registered (through a
    launcher script in ``tmp_path``); the finished process (``returncode``, ``stderr``)."""
    import os
    import subprocess
    import sys
    root = Path(__file__).resolve().parents[1]
    launcher = tmp_path / 'launch.py'
    launcher.write_text('import runpy, sys\nimport tests.sr_standin  # registers the stand-in\n'
                        f'sys.argv = ["train.py", *sys.argv[1:]]\n'
                        f'runpy.run_path({str(root / "tools" / "train.py")!r}, run_name="__main__")\n')
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(root)}
    return subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node',
                           str(processes), str(launcher), str(config)], capture_output=True, text=True, env=env)
