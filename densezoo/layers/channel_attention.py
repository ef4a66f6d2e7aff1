"""Channel attention of RCAN and HAT (squeeze-and-excitation with 1×1 convs; the official parameter names)."""
import torch
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)
