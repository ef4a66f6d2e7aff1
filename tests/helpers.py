"""Helpers shared by the tests."""
import importlib.util
from pathlib import Path

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
    return {k: v for k, v in model.state_dict().items() if '.connection.' not in f'.{k}'}


FIXTURES = __import__('pathlib').Path(__file__).parent / 'fixtures'


def load_fixture(name: str) -> dict:
    """A reference input/output pair of an official SR implementation (see tests/fixtures/README.md)."""
    return torch.load(FIXTURES / name, weights_only=True)


def scale_preserving_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights that keep features at unit scale (the fixtures' recipe), so that mistakes show in outputs.

    With timm-style N(0, 0.02) weights an SR model outputs almost exactly its input mean and hides most errors.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.dim() >= 2:
                param.copy_(noise / param[0].numel() ** 0.5)
            elif 'relative_position_bias_table' in name:
                param.copy_(noise * 0.5)
            elif name.endswith('weight'):  # norms
                param.copy_(1 + 0.1 * noise)
            else:
                param.copy_(0.02 * noise)
    return model


def one_line(exc_info) -> str:
    """The message of a ``pytest.raises`` result, asserted to be a single line."""
    message = str(exc_info.value)
    assert '\n' not in message, message
    return message


def assert_checkpointing_keeps_gradients(model: nn.Module, x: torch.Tensor) -> None:
    """Gradients with ``set_grad_checkpointing()`` equal those without (and reach every parameter)."""
    model.train()
    model(x).square().mean().backward()
    expected = {name: param.grad.clone() for name, param in model.named_parameters()}
    assert all(grad.abs().sum() > 0 for grad in expected.values())
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).square().mean().backward()
    model.set_grad_checkpointing(False)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, expected[name], rtol=1e-5, atol=1e-6, msg=name)


def traced_to_head(model: nn.Module, x: torch.Tensor, head: str, rtol=None, atol=None, **nodes: str) -> dict:
    """Trace ``model`` with torchvision's FX feature extraction (timm's leaf modules and autowrapped functions) up to
    module ``head`` (returned as 'logits') and the modules in ``nodes`` (name -> module); assert that the traced
    logits equal the model's and that their gradient reaches every parameter. Returns the traced outputs."""
    from torchvision.models.feature_extraction import create_feature_extractor
    from timm.models import get_notrace_functions, get_notrace_modules
    traced = create_feature_extractor(
        model, return_nodes={head: 'logits', **{module: name for name, module in nodes.items()}},
        tracer_kwargs=dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions()))
    out = traced(x)
    with torch.no_grad():
        torch.testing.assert_close(out['logits'], model(x), rtol=rtol, atol=atol)
    out['logits'].mean().backward()
    assert not [n for n, p in traced.named_parameters() if p.grad is None]
    return out


def assert_bfloat16_autocast_close(model: nn.Module, x: torch.Tensor, tolerance: float = 0.05) -> None:
    """Under bfloat16 autocast the output is bfloat16, within ``tolerance`` of the largest float32 logit, and its
    gradients are finite for every parameter."""
    with torch.no_grad():
        expected = model(x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    assert (out.float() - expected).abs().max() <= tolerance * expected.abs().max()
    out.float().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def load_tool(name: str):
    """``tools/<name>.py`` of this clone, loaded as a module (its ``main`` is the installed command's)."""
    path = Path(__file__).resolve().parents[1] / 'tools' / f'{name}.py'
    spec = importlib.util.spec_from_file_location(f'{name}_tool', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
