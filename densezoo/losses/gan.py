"""Adversarial losses on a discriminator's logits, as BasicSR's ``GANLoss``: vanilla (BCE with logits), lsgan,
wgan, wgan_softplus and hinge."""
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ['GANLoss', 'GAN_TYPES']

GAN_TYPES = ('vanilla', 'lsgan', 'wgan', 'wgan_softplus', 'hinge')


class GANLoss(nn.Module):
    """``forward(pred, target_is_real, is_disc=False)``: the loss of logits ``pred`` against a real or fake target.

    - ``vanilla``: BCE with logits against ``real_label_val`` / ``fake_label_val`` everywhere;
    - ``lsgan``: mean squared error against those labels;
    - ``wgan``: -mean(pred) for real, mean(pred) for fake;
    - ``wgan_softplus``: mean(softplus(-pred)) for real, mean(softplus(pred)) for fake;
    - ``hinge``: for the discriminator mean(relu(1 - pred)) for real, mean(relu(1 + pred)) for fake; for the
      generator -mean(pred), whatever ``target_is_real``.

    ``loss_weight`` multiplies the generator's loss only (``is_disc=False``); the discriminator's is unweighted.
    The label values are not used by wgan, wgan_softplus and hinge.
    """

    def __init__(self, gan_type: str, real_label_val: float = 1.0, fake_label_val: float = 0.0,
                 loss_weight: float = 1.0):
        super().__init__()
        if gan_type not in GAN_TYPES:
            raise ValueError(f'gan_type must be one of {", ".join(GAN_TYPES)}, got {gan_type!r}')
        self.gan_type = gan_type
        self.real_label_val, self.fake_label_val, self.loss_weight = real_label_val, fake_label_val, loss_weight

    def _unweighted(self, pred: torch.Tensor, target_is_real: bool, is_disc: bool) -> torch.Tensor:
        if self.gan_type in ('vanilla', 'lsgan'):
            target = torch.full_like(pred, self.real_label_val if target_is_real else self.fake_label_val)
            if self.gan_type == 'vanilla':
                return F.binary_cross_entropy_with_logits(pred, target)
            return F.mse_loss(pred, target)
        if self.gan_type == 'wgan':
            return -pred.mean() if target_is_real else pred.mean()
        if self.gan_type == 'wgan_softplus':
            return F.softplus(-pred).mean() if target_is_real else F.softplus(pred).mean()
        # hinge
        if not is_disc:
            return -pred.mean()
        return F.relu(1 - pred).mean() if target_is_real else F.relu(1 + pred).mean()

    def forward(self, pred: torch.Tensor, target_is_real: bool, is_disc: bool = False) -> torch.Tensor:
        loss = self._unweighted(pred, target_is_real, is_disc)
        return loss if is_disc else loss * self.loss_weight

    def extra_repr(self) -> str:
        return (f'gan_type={self.gan_type!r}, real_label_val={self.real_label_val}, '
                f'fake_label_val={self.fake_label_val}, loss_weight={self.loss_weight}')
