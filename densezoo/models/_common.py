"""Pieces shared by densezoo's model families: derived pretrained cfgs, registration and input checks."""
import sys
from typing import Callable, Dict, Iterable, Mapping, Tuple

import torch
from torch import nn

from timm.models import get_arch_pretrained_cfgs, register_model

# timm records a model's current construction arguments with these (timm.models.get_model_args); it exports them
# from no public module
from timm.models._input import update_model_args, update_model_input_size

__all__ = ['connected_cfgs', 'register_connected', 'check_image_input', 'check_image_batch', 'is_tracing',
           'update_model_args', 'update_model_input_size']


def connected_cfgs(base_archs: Iterable[str], kinds: Iterable[str]) -> Dict[str, dict]:
    """Pretrained cfgs for connected variants ``<arch>_<kind>``, one per tag of timm's ``arch``.

    Each keeps the timm base cfg (weights location, input size, normalisation, classifier names), so
    ``pretrained=True`` loads the timm weights into the blocks and the connection starts at its initial values.
    """
    cfgs = {}
    for arch in base_archs:
        for kind in kinds:
            for name, cfg in get_arch_pretrained_cfgs(arch).items():
                values = cfg.to_dict()
                tag = values.pop('tag')
                values.pop('architecture')
                values['notes'] = (f'Blocks from timm {name}; the {kind} connection starts at its initial values.',)
                cfgs[f'{arch}_{kind}.{tag}'] = values
    return cfgs


def register_connected(
        module_name: str,
        arch: str,
        kind: str,
        model_args: Mapping[str, object],
        connection_args: Mapping[str, object],
        create: Callable[..., nn.Module],
) -> Callable[..., nn.Module]:
    """Register the timm entrypoint ``<arch>_<kind>`` in module ``module_name`` and return it.

    The entrypoint builds ``create(name, pretrained, connection=kind, connection_args=..., **model_args)``;
    keyword arguments override ``model_args`` and update ``connection_args``.
    """
    name = f'{arch}_{kind}'

    def entrypoint(pretrained: bool = False, **kwargs) -> nn.Module:
        args = {**model_args, **kwargs}
        args['connection_args'] = {**connection_args, **(kwargs.get('connection_args') or {})}
        return create(name, pretrained=pretrained, connection=kind, **args)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = module_name
    entrypoint.__doc__ = f'{arch} (timm) with a {kind!r} connection between the blocks of each stage.'
    setattr(sys.modules[module_name], name, entrypoint)
    return register_model(entrypoint)


def _size(value) -> Tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def is_tracing(x) -> bool:
    """Whether ``x`` is traced (FX, TorchScript): input checks are skipped then."""
    return isinstance(x, torch.fx.Proxy) or torch.jit.is_scripting() or torch.jit.is_tracing()


def check_image_batch(x: torch.Tensor, in_chans: int) -> None:
    """A one-line ``ValueError`` unless ``x`` is an image batch (B, ``in_chans``, H, W)."""
    if x.dim() != 4:
        raise ValueError(f'expected an image batch of shape (B, {in_chans}, H, W), got shape {tuple(x.shape)}')
    if x.shape[1] != in_chans:
        raise ValueError(f'expected {in_chans} input channels, got {x.shape[1]} (input shape {tuple(x.shape)}); '
                         f'create the model with in_chans={x.shape[1]}')


def check_image_input(patch_embed: nn.Module, args: Tuple[torch.Tensor, ...]) -> None:
    """Forward pre-hook for a timm ``PatchEmbed``: a one-line ``ValueError`` for inputs it cannot take."""
    x = args[0]
    if is_tracing(x):
        return
    check_image_batch(x, patch_embed.proj.in_channels)
    height, width = x.shape[-2:]
    ph, pw = _size(patch_embed.patch_size)
    if patch_embed.strict_img_size:
        ih, iw = _size(patch_embed.img_size)
        if (height, width) != (ih, iw):
            raise ValueError(f'input size {height}x{width} does not match the model img_size {ih}x{iw}; create '
                             f'the model with img_size=({height}, {width}) or strict_img_size=False, or call '
                             f'model.set_input_size(img_size=({height}, {width}))')
    elif not getattr(patch_embed, 'dynamic_img_pad', False) and (height % ph or width % pw):
        raise ValueError(f'input size {height}x{width} is not divisible by the patch size {ph}x{pw}; resize or pad '
                         f'the image to a multiple of {ph}x{pw}')
