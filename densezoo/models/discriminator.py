"""U-Net discriminator with spectral normalisation, the discriminator of Real-ESRGAN's GAN training.

``UNetDiscriminatorSN`` follows BasicSR's ``UNetDiscriminatorSN`` (``basicsr/archs/discriminator_arch.py``): the
same constructor arguments, parameter names (``torch.nn.utils.spectral_norm``: ``weight_orig``, ``weight_u``,
``weight_v``) and outputs, so Real-ESRGAN's released ``RealESRGAN_x4plus_netD.pth`` loads strictly. It scores every
pixel: a (B, C, H, W) image gives (B, 1, H, W) logits; H and W must be multiples of 8. Not a timm model.

Paper: https://arxiv.org/abs/2107.10833 — official code: https://github.com/xinntao/Real-ESRGAN
"""
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import spectral_norm

__all__ = ['UNetDiscriminatorSN']


class UNetDiscriminatorSN(nn.Module):
    """Three strided 4×4 convs down (÷8), three 3×3 convs back up after bilinear ×2 upsampling, with U-Net skips.

    Every conv but the first and the last is spectrally normalised (one power iteration per training-mode forward,
    as ``torch.nn.utils.spectral_norm`` does); all activations are LeakyReLU(0.2).

    Args:
        num_in_ch: channels of the images it judges.
        num_feat: features of the first conv; the deeper ones have 2, 4 and 8 times as many.
        skip_connection: add the encoder's features to the decoder's at each scale.
    """

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, skip_connection: bool = True):
        super().__init__()
        self.num_in_ch = num_in_ch
        self.skip_connection = skip_connection

        def sn_conv(in_ch, out_ch, kernel_size, stride, padding):
            return spectral_norm(nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, bias=False))

        self.conv0 = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        # encoder: each conv halves the size and doubles the features
        self.conv1 = sn_conv(num_feat, num_feat * 2, 4, 2, 1)
        self.conv2 = sn_conv(num_feat * 2, num_feat * 4, 4, 2, 1)
        self.conv3 = sn_conv(num_feat * 4, num_feat * 8, 4, 2, 1)
        # decoder: each conv follows a ×2 upsampling and halves the features
        self.conv4 = sn_conv(num_feat * 8, num_feat * 4, 3, 1, 1)
        self.conv5 = sn_conv(num_feat * 4, num_feat * 2, 3, 1, 1)
        self.conv6 = sn_conv(num_feat * 2, num_feat, 3, 1, 1)
        # two more convs at full size, then the per-pixel logit
        self.conv7 = sn_conv(num_feat, num_feat, 3, 1, 1)
        self.conv8 = sn_conv(num_feat, num_feat, 3, 1, 1)
        self.conv9 = nn.Conv2d(num_feat, 1, 3, 1, 1)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f'UNetDiscriminatorSN takes a (batch, channels, height, width) tensor, got shape '
                             f'{tuple(x.shape)}')
        channels, height, width = x.shape[1:]
        if channels != self.num_in_ch:
            raise ValueError(f'UNetDiscriminatorSN was built for {self.num_in_ch} input channels (num_in_ch) but the '
                             f'input has {channels}')
        if height % 8 or width % 8:
            raise ValueError(f'UNetDiscriminatorSN takes heights and widths that are multiples of 8 (it downsamples '
                             f'three times by 2), got {height}x{width}; crop or pad the images')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)

        def act(t):
            return F.leaky_relu(t, negative_slope=0.2, inplace=True)

        def up(t):
            return F.interpolate(t, scale_factor=2, mode='bilinear', align_corners=False)

        x0 = act(self.conv0(x))
        x1 = act(self.conv1(x0))
        x2 = act(self.conv2(x1))
        x3 = act(self.conv3(x2))

        x4 = act(self.conv4(up(x3)))
        if self.skip_connection:
            x4 = x4 + x2
        x5 = act(self.conv5(up(x4)))
        if self.skip_connection:
            x5 = x5 + x1
        x6 = act(self.conv6(up(x5)))
        if self.skip_connection:
            x6 = x6 + x0

        out = act(self.conv7(x6))
        out = act(self.conv8(out))
        return self.conv9(out)
