"""Super-resolution with a GAN (``task: sr_gan``): the generator (any ``task: sr`` model) learns from a pixel loss, a
perceptual loss on VGG19 features and the loss of a U-Net discriminator with spectral normalisation, as Real-ESRGAN
and the real-world SwinIR / HAT / DRCT recipes train.

Each optimizer step first updates the generator (the discriminator frozen), then the discriminator on the ground
truth and the generator's detached output (BasicSR's ``RealESRGANModel`` order). The engine's EMA, schedule, AMP and
checkpoints cover the generator; this task builds the discriminator, its optimizer (``gan.optim``, with the run's
``sched``) and its scaler, and the engine saves and resumes them with the generator. ``sharpen`` names the losses
whose targets are sharpened by unsharp masking (Real-ESRGAN: pixel and perceptual). Recipes: ``configs/sr/*real*``;
the two-stage procedure (PSNR first, then the GAN from its weights): docs/real-sr.md.
"""
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from densezoo.checkpoint_io import check_weights_file, load_weights_file
from densezoo.config import ConfigError, OptimConfig, check_optim, require
from densezoo.datasets.degradations import usm_sharp
from densezoo.losses import GAN_TYPES, VGG19_LAYERS, GANLoss, PerceptualLoss
from densezoo.losses.perceptual import CRITERIA
from densezoo.models.discriminator import UNetDiscriminatorSN
from densezoo.tasks.base import register_task
from densezoo.tasks.sr import SRTask, SRTrainConfig

__all__ = ['SRGANTask', 'SRGANTrainConfig', 'PerceptualConfig', 'GANConfig', 'DiscriminatorOptimConfig']

_logger = logging.getLogger(__name__)

#: Real-ESRGAN's perceptual layers and weights (VGG19, before the ReLU)
REAL_ESRGAN_LAYERS = {'conv1_2': 0.1, 'conv2_2': 0.1, 'conv3_4': 1.0, 'conv4_4': 1.0, 'conv5_4': 1.0}


@dataclass
class PerceptualConfig:
    """The perceptual loss: VGG19 features of output and target compared layer by layer (weight 0: off)."""
    weights_file: Optional[str] = None  # torchvision's VGG19 weights (vgg19-dcbe5e4b.pth); never downloaded
    layer_weights: Dict[str, float] = field(default_factory=lambda: dict(REAL_ESRGAN_LAYERS))
    weight: float = 1.0
    style_weight: float = 0.0  # Gram-matrix (style) loss
    criterion: str = 'l1'  # 'l1', 'l2' or 'fro'
    use_input_norm: bool = True  # ImageNet mean / std before the VGG
    range_norm: bool = False  # inputs in [-1, 1] mapped to [0, 1] first


@dataclass
class DiscriminatorOptimConfig(OptimConfig):
    """The discriminator's optimizer (Real-ESRGAN's: Adam, 1e-4, betas 0.9 / 0.99, no weight decay)."""
    name: str = 'adam'
    lr: float = 1e-4
    weight_decay: float = 0.0
    kwargs: Dict[str, Any] = field(default_factory=lambda: dict(betas=[0.9, 0.99]))


@dataclass
class GANConfig:
    """The discriminator (Real-ESRGAN's U-Net with spectral normalisation), its loss and its optimizer."""
    type: str = 'vanilla'  # 'vanilla', 'lsgan', 'wgan', 'wgan_softplus' or 'hinge'
    weight: float = 0.1  # of the generator's GAN loss
    real_label: float = 1.0
    fake_label: float = 0.0
    num_feat: int = 64
    skip_connection: bool = True
    pretrained_file: Optional[str] = None  # discriminator weights to start from (BasicSR's 'params' files load)
    optim: DiscriminatorOptimConfig = field(default_factory=DiscriminatorOptimConfig)


@dataclass
class SRGANTrainConfig(SRTrainConfig):
    """A GAN super-resolution run: the SR keys plus the loss weights, the perceptual loss and the discriminator."""
    pixel_weight: float = 1.0  # of the pixel loss (``loss``: l1, charbonnier or mse)
    perceptual: PerceptualConfig = field(default_factory=PerceptualConfig)
    gan: GANConfig = field(default_factory=GANConfig)


def _check_patch(lr_patch: int, upscale: int) -> None:
    """The HR crop (``lr_patch * upscale``) is a size the U-Net discriminator takes, else a one-line
    ``ConfigError``."""
    hr_patch = lr_patch * upscale
    require(hr_patch % 8 == 0, f'data.lr_patch={lr_patch} x upscale {upscale} = {hr_patch} HR pixels; the U-Net '
                               f'discriminator needs a multiple of 8')


def _load_discriminator(discriminator: nn.Module, path: str) -> None:
    """Load discriminator weights from a file: densezoo's, or BasicSR's (under 'params'); weights of another
    discriminator are a one-line ``ConfigError``."""
    check_weights_file(path)
    state = load_weights_file(path)
    if isinstance(state, dict) and isinstance(state.get('params'), dict):
        state = state['params']
    own = discriminator.state_dict()
    wrong = [key for key in own if key not in state or tuple(state[key].shape) != tuple(own[key].shape)]
    if wrong or set(state) - set(own):
        first = wrong[0] if wrong else sorted(set(state) - set(own))[0]
        raise ConfigError(f'gan.pretrained_file={path!r} does not fit the discriminator (gan.num_feat '
                          f'{discriminator.conv0.out_channels}, {discriminator.num_in_ch} channels): first differing '
                          f'tensor {first}; set gan.num_feat / gan.skip_connection as the file was trained, or null')
    discriminator.load_state_dict(state)


@register_task
class SRGANTask(SRTask):
    """Super-resolution trained with pixel, perceptual and adversarial losses."""
    name = 'sr_gan'
    config_class = SRGANTrainConfig
    sharpened = ('pixel', 'perceptual', 'gan')  # Real-ESRGAN sharpens the first two

    @classmethod
    def check_config(cls, config: SRGANTrainConfig) -> None:
        super().check_config(config)
        gan, perceptual = config.gan, config.perceptual
        require(config.pixel_weight >= 0, f'pixel_weight={config.pixel_weight} must be 0 or more')
        require(gan.type in GAN_TYPES, f'gan.type={gan.type!r} is not allowed; use {", ".join(GAN_TYPES)}')
        require(gan.weight > 0, f'gan.weight={gan.weight} must be positive (Real-ESRGAN: 0.1); for training '
                                f'without a discriminator use task: sr')
        require(gan.num_feat >= 1, f'gan.num_feat={gan.num_feat} must be at least 1')
        check_optim(gan.optim, 'gan.optim')
        require(perceptual.weight >= 0 and perceptual.style_weight >= 0,
                f'perceptual.weight={perceptual.weight} and perceptual.style_weight={perceptual.style_weight} must be '
                f'0 or more')
        require(perceptual.criterion in CRITERIA,
                f"perceptual.criterion={perceptual.criterion!r} is not allowed; use {', '.join(CRITERIA)}")
        if perceptual.weight or perceptual.style_weight:
            require(bool(perceptual.layer_weights), 'perceptual.layer_weights is empty; name VGG19 layers, e.g. '
                                                    '{conv5_4: 1.0}, or set perceptual.weight 0')
            bad = [str(name) for name in perceptual.layer_weights if name not in VGG19_LAYERS]
            require(not bad, f'perceptual.layer_weights names {", ".join(bad)}, not VGG19 layers; use conv1_1 .. '
                             f'conv5_4, relu1_1 .. relu5_4 or pool1 .. pool5 (e.g. conv5_4)')
            require(perceptual.weights_file is not None,
                    "perceptual.weights_file is not set; give the path of torchvision's VGG19 weights "
                    "(vgg19-dcbe5e4b.pth, from https://download.pytorch.org/models/vgg19-dcbe5e4b.pth), or set "
                    "perceptual.weight 0 and perceptual.style_weight 0")
        if config.data.upscale is not None:
            _check_patch(config.data.lr_patch, config.data.upscale)

    def __init__(self, config: SRGANTrainConfig, dist):
        super().__init__(config, dist)
        perceptual, gan = config.perceptual, config.gan
        # the weights files are found before the model is built (a recipe names them; they may not be there yet)
        if (perceptual.weight or perceptual.style_weight) and not Path(perceptual.weights_file).is_file():
            raise ConfigError(f'perceptual.weights_file={perceptual.weights_file!r} does not exist; download '
                              f"torchvision's VGG19 weights (https://download.pytorch.org/models/vgg19-dcbe5e4b.pth) "
                              f'and give their path')
        if gan.pretrained_file is not None and not Path(gan.pretrained_file).is_file():
            raise ConfigError(f'gan.pretrained_file={gan.pretrained_file!r} does not exist; give the discriminator '
                              f'weights file, or null to start it from scratch')
        if not (config.model.pretrained or config.model.pretrained_file) and dist.is_main:
            _logger.warning('the GAN stage starts from an untrained generator; the published recipes start from the '
                            'PSNR stage: set model.pretrained_file to its weights (checkpoints/best/ema.safetensors)')
        self.discriminator: Optional[nn.Module] = None
        self._pending: List = []  # (gan target, detached output) of each micro-batch since the last step
        self._sums: Dict[str, float] = {}

    def build_model(self) -> nn.Module:
        model = super().build_model()  # data.upscale unset: the model's scale
        _check_patch(self.config.data.lr_patch, getattr(model, 'upscale', 1))
        return model

    def build_training(self, model: nn.Module, device: torch.device, make_optimizer: Callable,
                       make_scheduler: Callable) -> None:
        cfg, gan = self.config, self.config.gan
        perceptual = cfg.perceptual
        self.pixel_weight = cfg.pixel_weight
        self.perceptual = None
        if perceptual.weight or perceptual.style_weight:
            self.perceptual = PerceptualLoss(
                layer_weights=dict(perceptual.layer_weights), use_input_norm=perceptual.use_input_norm,
                range_norm=perceptual.range_norm, perceptual_weight=perceptual.weight,
                style_weight=perceptual.style_weight, criterion=perceptual.criterion,
                weights_file=perceptual.weights_file).to(device)
        self.gan_loss = GANLoss(gan.type, real_label_val=gan.real_label, fake_label_val=gan.fake_label,
                                loss_weight=gan.weight)
        channels = getattr(model, 'out_chans', None) or getattr(model, 'in_chans', 3)
        self.discriminator = UNetDiscriminatorSN(channels, num_feat=gan.num_feat,
                                                 skip_connection=gan.skip_connection).to(device)
        if gan.pretrained_file:
            _load_discriminator(self.discriminator, gan.pretrained_file)
        self.discriminator.train()
        self.d_optimizer = make_optimizer(self.discriminator, gan.optim)
        self.d_scheduler = make_scheduler(self.d_optimizer, cfg.sched)
        self.d_scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == 'fp16')
        self._d_train = self.discriminator
        if self.dist.enabled:
            self._d_train = DistributedDataParallel(
                self.discriminator, device_ids=[device.index] if device.type == 'cuda' else None)
        self.discriminator.requires_grad_(False)  # trainable only inside its own step

    def networks(self) -> Dict[str, nn.Module]:
        return {'discriminator': self.discriminator} if self.discriminator is not None else {}

    def training_state(self) -> Dict[str, Any]:
        return dict(d_optimizer=self.d_optimizer.state_dict(), d_scheduler=self.d_scheduler.state_dict(),
                    d_scaler=self.d_scaler.state_dict())

    def load_training_state(self, state: Dict[str, Any], step: int) -> None:
        if 'd_optimizer' not in state:
            raise ConfigError('the checkpoint holds no discriminator state (it was written by task: sr); start the '
                              'GAN stage as a new run with model.pretrained_file set to its weights')
        self.d_optimizer.load_state_dict(state['d_optimizer'])
        self.d_scheduler.load_state_dict(state['d_scheduler'])
        self.d_scaler.load_state_dict(state['d_scaler'])
        self.d_scheduler.step_update(num_updates=step)

    def _add(self, **values: torch.Tensor) -> None:
        for key, value in values.items():
            self._sums[key] = self._sums.get(key, 0.) + float(value)

    def training_loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        output = model(inputs).float()
        target = targets.float()
        sharp = usm_sharp(target) if self.config.sharpen else target
        pick = {name: sharp if name in self.config.sharpen else target for name in self.sharpened}
        pixel = self.criterion(output, pick['pixel'])
        total = self.pixel_weight * pixel
        self._add(l_pix=pixel.detach())
        if self.perceptual is not None:
            percep, style = self.perceptual(output, pick['perceptual'])
            for key, term in (('l_percep', percep), ('l_style', style)):
                if term is not None:
                    total = total + term
                    self._add(**{key: term.detach()})
        fake = self.discriminator(output)
        adversarial = self.gan_loss(fake, True, is_disc=False)
        self._add(l_g_gan=adversarial.detach())
        self._pending.append((pick['gan'], output.detach()))
        return total + adversarial

    def after_step(self, step: int, autocast) -> Dict[str, float]:
        """The discriminator's step on the micro-batches of the generator's step just taken."""
        self.discriminator.requires_grad_(True)
        count = len(self._pending)
        for real, fake in self._pending:
            with autocast():
                real_logits = self._d_train(real)
            loss_real = self.gan_loss(real_logits.float(), True, is_disc=True)
            self.d_scaler.scale(loss_real / count).backward()
            with autocast():
                fake_logits = self._d_train(fake.clone())
            loss_fake = self.gan_loss(fake_logits.float(), False, is_disc=True)
            self.d_scaler.scale(loss_fake / count).backward()
            self._add(l_d_real=loss_real.detach(), l_d_fake=loss_fake.detach(),
                      out_d_real=real_logits.detach().float().mean(), out_d_fake=fake_logits.detach().float().mean())
        self.d_scaler.step(self.d_optimizer)
        self.d_scaler.update()
        self.d_optimizer.zero_grad(set_to_none=True)
        self.discriminator.requires_grad_(False)
        self.d_scheduler.step_update(num_updates=step)
        self._pending.clear()
        values = {key: value / count for key, value in self._sums.items()}
        self._sums = {}
        return values

