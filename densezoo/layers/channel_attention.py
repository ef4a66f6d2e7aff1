"""Channel attention of RCAN and HAT (squeeze-and-excitation with 1×1 convs; the official parameter names)."""
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['ChannelAttention']


class ChannelAttention(nn.Module):
    """x · sigmoid(conv1×1 ∘ ReLU ∘ conv1×1 ∘ global-average(x)), reducing to num_feat // squeeze_factor channels.

    Parameters are ``attention.1`` (down) and ``attention.3`` (up), as in the RCAN (BasicSR) and HAT checkpoints.
    """

    def __init__(self, num_feat: int, squeeze_factor: int = 16):
        super().__init__()
        hidden = num_feat // squeeze_factor
        if hidden < 1:
            raise ValueError(f'squeeze_factor={squeeze_factor} leaves no channels for the attention of '
                             f'num_feat={num_feat} features; use a squeeze_factor of at most {num_feat}')
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(num_feat, hidden, 1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, num_feat, 1), nn.Sigmoid())

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The channel weights (B, C, 1, 1) in (0, 1), without applying them: ``self.attention(x)``, computed as
        matrix products (a 1×1 conv on a 1×1 map is one; linear on (B, C) skips the conv's im2col machinery)."""
        _, down, act, up, sigmoid = self.attention
        y = x.mean((2, 3))  # the global average pooling, as (B, C)
        y = act(F.linear(y, down.weight.flatten(1), down.bias))
        y = sigmoid(F.linear(y, up.weight.flatten(1), up.bias))
        return y[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)
