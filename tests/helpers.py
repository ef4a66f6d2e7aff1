"""Helpers shared by the model tests."""
import torch
from torch import nn

import densezoo


def perturb_connections(model: nn.Module, std: float = 0.05, seed: int = 0) -> nn.Module:
    """Move every connection parameter away from its initial value, so checks see the connection at work."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in densezoo.connection_parameters(model).values():
            param.add_(torch.randn(param.shape, generator=generator).to(param) * std)
    return model


def perturb_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give LayerNorms non-trivial affine parameters (Swin V2 initialises its post-norms to zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm) and module.weight is not None:
                module.weight.copy_(1 + 0.1 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
    return model


def plain_state(model: nn.Module) -> dict:
    """State dict of a connected model without its connection entries."""
    return {k: v for k, v in model.state_dict().items() if '.connection.' not in k}
