"""Pieces shared by densezoo's model families: derived pretrained cfgs, registration and input checks."""
import sys
from typing import Callable, Dict, Iterable, Mapping, Sequence, Tuple, Union

import torch
from torch import nn

from timm.models import get_arch_pretrained_cfgs, register_model

# timm records a model's current construction arguments with these (timm.models.get_model_args); it exports them
# from no public module
from timm.models._input import update_model_args, update_model_input_size

__all__ = ['connected_cfgs', 'register_models', 'check_image_input', 'check_image_batch', 'is_tracing',
           'update_model_args', 'update_model_input_size']

#: registered options of a connection kind: fixed, or computed from the architecture's arguments
ConnectionArgs = Union[Mapping[str, object], Callable[[Mapping[str, object]], Mapping[str, object]]]


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


def register_models(
        module_name: str,
        create: Callable[..., nn.Module],
        names: Sequence[str],
        archs: Mapping[str, Mapping[str, object]],
        connections: Mapping[str, ConnectionArgs] = None,
        title: str = '',
) -> None:
    """Register a timm entrypoint in module ``module_name`` for each of ``names``, as timm's ``@register_model``.

    A name is an architecture of ``archs`` (built by ``create(name, pretrained, **arch_args, **kwargs)``) or
    ``<arch>_<kind>`` with ``kind`` in ``connections``, which adds ``connection=kind`` and ``connection_args``:
    the registered options of the kind (a mapping, or a function of the architecture's arguments), updated by the
    caller's ``connection_args``. Keyword arguments override the architecture's arguments.
    """
    module = sys.modules[module_name]
    connections = connections or {}
    for name in names:
        arch, kind = _split_name(name, archs, connections)
        options = connections.get(kind, {})
        options = options(archs[arch]) if callable(options) else options

        def entrypoint(pretrained: bool = False, _name=name, _arch=arch, _kind=kind, _options=options, **kwargs):
            args = {**archs[_arch], **kwargs}
            if _kind:
                args.update(connection=_kind, connection_args={**_options, **(kwargs.get('connection_args') or {})})
            return create(_name, pretrained=pretrained, **args)

        entrypoint.__name__ = entrypoint.__qualname__ = name
        entrypoint.__module__ = module_name
        # what the entrypoint builds, readable without building it
        entrypoint.arch, entrypoint.arch_args = arch, dict(archs[arch])
        entrypoint.connection_kind, entrypoint.connection_args = kind, dict(options)
        entrypoint.__doc__ = (f'{title + " " if title else ""}{arch}'
                              + (f' with a {kind!r} connection between its blocks.' if kind else '.'))
        setattr(module, name, entrypoint)
        register_model(entrypoint)


def _split_name(name: str, archs: Mapping[str, object], connections: Mapping[str, object]) -> Tuple[str, str]:
    """``(arch, kind)`` of a registered name (kind '' for a plain architecture)."""
    if name in archs:
        return name, ''
    for kind in connections:
        arch = name[:-len(kind) - 1]
        if name.endswith(f'_{kind}') and arch in archs:
            return arch, kind
    raise ValueError(f'{name} is neither an architecture of this family nor <architecture>_<connection> with a '
                     f'connection of {", ".join(connections) or "none"}')


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
