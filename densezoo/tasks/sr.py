"""Super-resolution and image restoration (``task: sr``): SwinIR, HAT, DRCT, RCAN, RDN or any timm model that maps
a low-resolution image in [0, 1] to the high-resolution one and has an ``upscale`` attribute.

Data: ``<data.root>/<split>/<data.hr_dir>`` HR images, with LR inputs in ``<data.lr_dir>`` or made on the fly
(``data.degradation``: bicubic, noise, jpeg, or the real-world ``bsrgan`` / ``realesrgan``); aligned random crops of
``data.lr_patch`` LR pixels with flips and transposes for training, whole images for validation. Loss: L1 (default),
Charbonnier or MSE, against the HR image or its unsharp-masked version (``sharpen: [pixel]``). Validation: PSNR and
SSIM as the SR protocol scores them (8- or 16-bit values, Y channel, ``upscale`` border pixels cut), and the loss;
means over images, summed exactly over processes. ``comparison.png`` in the run folder shows a crop of the first
validation image at the end: bicubic | model output | HR. Details: docs/data.md, docs/real-sr.md.
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from PIL import Image, ImageDraw
from torch import nn

from densezoo.config import ConfigError, DataConfig, TrainConfig, require
from densezoo.datasets import DataError, SRPairedDataset, imresize, pair_images
from densezoo.datasets.check import check_sr_pairs
from densezoo.datasets.degradations import DEGRADATION_PIPELINES, usm_sharp
from densezoo.datasets.sr import DEGRADATIONS, collate_pairs_and_bits, tensor_to_image
from densezoo.distributed import all_reduce_sums
from densezoo.tasks.base import Task, register_task
from densezoo.metrics.sr import psnr, ssim

__all__ = ['SRTask', 'SRDataConfig', 'SRTrainConfig', 'CharbonnierLoss', 'build_sr_loss', 'comparison_image']


@dataclass
class SRDataConfig(DataConfig):
    """The data section of ``task: sr``: images in <root>/<split>/<hr_dir>, inputs in <root>/<split>/<lr_dir>."""
    hr_dir: str = 'HR'
    lr_dir: Optional[str] = None  # e.g. 'LR_bicubic/X{scale}'; null: made from HR by `degradation`
    upscale: Optional[int] = None  # default: the model's `upscale`
    lr_patch: int = 48  # training crop, in LR pixels (HR crop: lr_patch * upscale)
    repeat: int = 1  # passes over the training images per epoch (few large images: many crops per epoch)
    degradation: str = 'bicubic'  # bicubic (MATLAB imresize), noise, jpeg (both upscale 1), bsrgan, realesrgan
    degradation_options: Dict[str, Any] = field(default_factory=dict)  # bsrgan / realesrgan settings to change
    noise_sigma: float = 25.0  # Gaussian noise of degradation 'noise', on the 0..255 scale
    jpeg_quality: int = 40  # quality of degradation 'jpeg'
    rot90: bool = True  # random vertical flips and transposes (with hflip: all 8 symmetries)
    channels: Optional[int] = None  # 3 or 1; default: the model's `in_chans`
    grey: str = 'L'  # channels 1: 'L' (PIL luma) or 'Y' (MATLAB rgb2ycbcr Y)
    val_y_channel: Optional[bool] = None  # PSNR / SSIM on Y; default: yes for upscale > 1, RGB for upscale 1
    val_crop_border: Optional[int] = None  # pixels cut from each border before scoring; default: upscale


@dataclass
class SRTrainConfig(TrainConfig):
    """A super-resolution run: the loss and the SR data section."""
    loss: Optional[str] = None  # 'l1' (default), 'charbonnier' or 'mse'
    charbonnier_eps: float = 1e-3
    sharpen: List[str] = field(default_factory=list)  # losses whose target is sharpened by unsharp masking: pixel
    data: SRDataConfig = field(default_factory=SRDataConfig)


class CharbonnierLoss(nn.Module):
    """Mean of ``sqrt((x - y)^2 + eps^2)``: a differentiable L1."""

    def __init__(self, eps: float = 1e-3):
        super().__init__()
        self.eps = eps

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.sqrt((prediction - target).pow(2) + self.eps ** 2).mean()


def build_sr_loss(name: Optional[str], eps: float = 1e-3) -> nn.Module:
    """'l1' (default for None), 'charbonnier' or 'mse'."""
    name = name or 'l1'
    if name == 'l1':
        return nn.L1Loss()
    if name == 'charbonnier':
        return CharbonnierLoss(eps)
    if name == 'mse':
        return nn.MSELoss()
    raise ValueError(f'loss={name!r} is not known for super-resolution; use l1, charbonnier or mse')


def comparison_image(panels, labels, crop: int = 192, gap: int = 4) -> Image.Image:
    """Central ``crop`` x ``crop`` crops of same-size images (C, H, W) side by side, each under its label."""
    height, width = panels[0].shape[-2:]
    ch, cw = min(crop, height), min(crop, width)
    top, left = (height - ch) // 2, (width - cw) // 2
    header = 14
    canvas = Image.new('RGB', (len(panels) * cw + (len(panels) - 1) * gap, ch + header), 'white')
    draw = ImageDraw.Draw(canvas)
    for i, (panel, label) in enumerate(zip(panels, labels)):
        x = i * (cw + gap)
        canvas.paste(tensor_to_image(panel[..., top:top + ch, left:left + cw]).convert('RGB'), (x, header))
        draw.text((x + 2, 1), label, fill='black')
    return canvas


@register_task
class SRTask(Task):
    """Super-resolution on HR folders (+ LR folders or on-the-fly degradation)."""
    name = 'sr'
    main_metric = 'psnr'
    log_metrics = ('psnr', 'ssim')
    config_class = SRTrainConfig
    sharpened = ('pixel',)  # the losses whose targets ``sharpen`` may name

    @classmethod
    def check_config(cls, config: SRTrainConfig) -> None:
        data = config.data
        require(config.loss in (None, 'l1', 'charbonnier', 'mse'),
                f"loss={config.loss!r} is not allowed; use l1, charbonnier or mse")
        require(config.charbonnier_eps > 0, f'charbonnier_eps={config.charbonnier_eps} must be positive')
        bad = [str(name) for name in config.sharpen if name not in cls.sharpened]
        require(not bad, f'sharpen={config.sharpen} names {", ".join(bad)}; task {cls.name} can sharpen the targets '
                         f'of: {", ".join(cls.sharpened)}')
        require(data.degradation in DEGRADATIONS,
                f"data.degradation={data.degradation!r} is not allowed; use {', '.join(DEGRADATIONS)}")
        if data.degradation in DEGRADATION_PIPELINES:
            try:
                DEGRADATION_PIPELINES[data.degradation](data.upscale or 4, **data.degradation_options)
            except ValueError as err:
                raise ConfigError(f'data.degradation_options: {err}') from None
        else:
            require(not data.degradation_options,
                    f'data.degradation_options are settings of the real-world degradations '
                    f'({", ".join(DEGRADATION_PIPELINES)}), not of data.degradation={data.degradation!r}')
        require(data.upscale is None or data.upscale >= 1, f'data.upscale={data.upscale} must be at least 1')
        require(data.lr_patch >= 1, f'data.lr_patch={data.lr_patch} must be at least 1')
        require(data.repeat >= 1, f'data.repeat={data.repeat} must be at least 1')
        require(data.channels in (None, 1, 3), f'data.channels={data.channels} is not allowed; use 3, 1 or null')
        require(data.grey in ('L', 'Y'), f"data.grey={data.grey!r} is not allowed; use 'L' or 'Y'")
        require(1 <= data.jpeg_quality <= 100, f'data.jpeg_quality={data.jpeg_quality} must lie between 1 and 100')
        require(data.noise_sigma >= 0, f'data.noise_sigma={data.noise_sigma} must be 0 or more')
        require(data.val_crop_border is None or data.val_crop_border >= 0,
                f'data.val_crop_border={data.val_crop_border} must be 0 or more')
        require(bool(data.hr_dir), "data.hr_dir is empty; name the folder of the HR images (e.g. 'HR')")
        if data.lr_dir is not None:
            try:
                data.lr_dir.format(scale=2)
            except (KeyError, IndexError, ValueError):
                raise ConfigError(f"data.lr_dir={data.lr_dir!r} is not allowed; its only placeholder is {{scale}} "
                                  f"(e.g. 'LR_bicubic/X{{scale}}')") from None
        require(data.lr_dir is not None or data.degradation not in ('noise', 'jpeg') or data.upscale in (None, 1),
                f'data.degradation={data.degradation!r} keeps the image size; it needs data.upscale 1, not '
                f'{data.upscale}')

    def __init__(self, config, dist):
        super().__init__(config, dist)
        data = config.data
        self.train_folder = Path(data.root) / data.train_split
        self.val_folder = Path(data.root) / data.val_split
        for folder in (self.train_folder, self.val_folder):  # found before the model is built
            pair_images(folder / data.hr_dir)
        self.criterion = build_sr_loss(config.loss, config.charbonnier_eps)
        self.scale: Optional[int] = None
        self.crop_border = 0
        self.y_channel = True

    def build_model(self) -> nn.Module:
        return self.create_model()

    def resolve(self, model: nn.Module) -> Tuple[int, int]:
        """The scale and channel count of the data for ``model`` (config values or the model's attributes)."""
        data = self.config.data
        upscale = getattr(model, 'upscale', None)
        if data.upscale is not None and upscale is not None and data.upscale != upscale:
            raise DataError(f'data.upscale={data.upscale} does not match {self.config.model.name}, which upscales '
                            f'x{upscale}; leave data.upscale unset')
        scale = data.upscale or upscale
        if scale is None:
            raise DataError(f'{self.config.model.name} has no upscale attribute; set data.upscale')
        channels = data.channels or getattr(model, 'in_chans', 3)
        return int(scale), int(channels)

    def build_datasets(self, model: nn.Module) -> Tuple[SRPairedDataset, SRPairedDataset]:
        data = self.config.data
        self.scale, channels = self.resolve(model)
        self.crop_border = data.val_crop_border if data.val_crop_border is not None else \
            (self.scale if self.scale > 1 else 0)
        self.y_channel = data.val_y_channel if data.val_y_channel is not None else self.scale > 1

        def make(folder: Path, training: bool) -> SRPairedDataset:
            lr_dir = folder / data.lr_dir.format(scale=self.scale) if data.lr_dir else None
            return SRPairedDataset(
                folder / data.hr_dir, lr_dir, scale=self.scale, lr_patch=data.lr_patch if training else None,
                augment=data.albumentations or None, hflip=data.hflip, rot=data.rot90, channels=channels,
                grey=data.grey, degradation=data.degradation, noise_sigma=data.noise_sigma,
                jpeg_quality=data.jpeg_quality, degradation_options=data.degradation_options,
                corrupt=data.corrupt_images, seed=self.config.seed,
                verify=data.verify_images, repeat=data.repeat if training else 1)

        train, val = make(self.train_folder, True), make(self.val_folder, False)
        check_sr_pairs(train, val, self.crop_border, log=self.dist.is_main)  # before the first step
        return train, val

    def collate_fn(self, training: bool) -> Optional[Callable]:
        return None if training else collate_pairs_and_bits  # whole validation images differ in size

    def training_loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.float()
        return self.criterion(model(inputs).float(), usm_sharp(targets) if self.config.sharpen else targets)

    def _predict(self, model: nn.Module, lr: torch.Tensor, hr_shape, autocast) -> torch.Tensor:
        with autocast():
            sr = model(lr)
        sr = sr.float()
        if sr.shape[-3:] != tuple(hr_shape[-3:]):
            raise ValueError(f'{self.config.model.name} maps a {tuple(lr.shape[-3:])} input to '
                             f'{tuple(sr.shape[-3:])}, expected {tuple(hr_shape[-3:])} (x{self.scale})')
        return sr

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, device: torch.device, autocast) -> Dict[str, float]:
        sums = dict(loss=0., psnr=0., ssim=0., count=0.)
        for lrs, hrs, depths in loader:
            for lr, hr, bits in zip(lrs, hrs, depths):  # scored at the HR image's bit depth
                lr, hr = lr[None].to(device), hr[None].to(device)
                sr = self._predict(model, lr, hr.shape, autocast)
                sums['loss'] += self.criterion(sr, hr).item()
                sums['psnr'] += psnr(sr[0], hr[0], self.crop_border, self.y_channel, bits)
                sums['ssim'] += ssim(sr[0], hr[0], self.crop_border, self.y_channel, bits)
                sums['count'] += 1
        sums = all_reduce_sums(sums, self.dist)
        count = max(sums['count'], 1.)
        return dict(loss=sums['loss'] / count, psnr=sums['psnr'] / count, ssim=sums['ssim'] / count,
                    count=int(sums['count']))

    @torch.no_grad()
    def finish(self, model: nn.Module, val_set, run_dir: Path, device: torch.device, autocast) -> Dict[str, Any]:
        """Write ``comparison.png`` (bicubic | model | ground truth) for the first validation image."""
        if len(val_set) == 0:
            return {}
        sample = val_set[0]
        lr, hr = sample
        sr = self._predict(model, lr[None].to(device), hr[None].shape, autocast)[0].cpu()
        baseline = imresize(lr, self.scale).clamp(0, 1) if self.scale > 1 else lr.clamp(0, 1)
        bits = getattr(sample, 'bits', 8)
        scores = {key: float(psnr(img, hr, self.crop_border, self.y_channel, bits))
                  for key, img in (('baseline', baseline), ('model', sr))}
        first = 'bicubic' if self.scale > 1 else 'input'
        image = comparison_image(
            [baseline, sr, hr], [f'{first} {scores["baseline"]:.2f} dB', f'model {scores["model"]:.2f} dB', 'HR'])
        path = Path(run_dir) / 'comparison.png'
        image.save(path)
        return dict(comparison=path, comparison_image=val_set.name(0), baseline_name=first,
                    baseline_psnr=scores['baseline'], model_psnr=scores['model'])
