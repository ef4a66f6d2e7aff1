"""Rewire the stages of a timm model with a block connection, in place.

``connect(model, 'dwa', dilation=2)`` keeps every block, every parameter name and every other method of the model,
and makes each stage run its blocks through a connection module from ``densezoo.layers.connections``, stored as
``<stage>.connection``. Families register with ``register_family`` (``ConnectedStage``) or
``register_isotropic_family`` (``ConnectedIsotropic``).

Design notes: docs/connections.md.
"""
import copy
import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from timm.models import checkpoint

from densezoo.layers.connections import CONNECTION_KINDS, StageConnection, create_connection

__all__ = ['connect', 'register_family', 'StageFamily', 'ConnectedStage', 'ConnectedModel', 'ConnectedIsotropic',
           'register_isotropic_family', 'run_maybe_checkpointed', 'connection_parameters', 'model_family',
           'start_missing_connections', 'mark_connected']

_logger = logging.getLogger(__name__)


def run_maybe_checkpointed(enabled: bool, function: Callable, *args):
    """``function(*args)``; with ``enabled`` its activations are recomputed in the backward pass instead of kept."""
    if enabled and not torch.jit.is_scripting():
        return checkpoint(function, *args)
    return function(*args)


def _refuse_torchscript():
    raise RuntimeError('connected densezoo stages cannot be compiled by TorchScript (deprecated in PyTorch); '
                       'use torch.compile or torch.export instead')


class ConnectedStage:
    """Mixin for a stage whose blocks run through ``self.connection``; the stage is the connection's runner.

    It expects the stage to hold ``self.blocks`` and a ``grad_checkpointing`` flag, as timm's stages do.
    Gradient checkpointing stays per block: the connection's own arithmetic is kept, the blocks are recomputed.
    """
    connection: StageConnection

    def run_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Run block ``index`` on ``x``."""
        return run_maybe_checkpointed(self.grad_checkpointing, self.blocks[index], x)

    def run_connected_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """Run all blocks of the stage on the stage input ``x`` through the connection."""
        return self.connection(x, self)

    def __prepare_scriptable__(self):
        _refuse_torchscript()


@dataclass(frozen=True)
class StageFamily:
    """How ``connect`` finds and rewires the stages of one family of timm models.

    Args:
        name: Family name used in messages.
        model_types: timm model classes of the family.
        stages: Returns ``(name, stage)`` pairs of a model, in order.
        connected_stages: Maps each timm stage class to its connected subclass.
        stage_dim: Channel width of a stage's blocks.
        layout: Feature layout of the blocks ('NHWC', 'NLC' or 'NCHW').
        capabilities: Runner capabilities beyond ``run_block`` ('streams', 'values').
        default_options: Per-kind default options for this family (e.g. MUDD streams).
        model_capabilities: Optional; the capabilities of one model, when they depend on its blocks (a family
            whose models may hold blocks the runner cannot split into query/key/value inputs). Replaces
            ``capabilities`` when given.
    """
    name: str
    model_types: Tuple[type, ...]
    stages: Callable[[nn.Module], List[Tuple[str, nn.Module]]]
    connected_stages: Dict[type, type]
    stage_dim: Callable[[nn.Module], int]
    layout: str = 'NHWC'
    capabilities: FrozenSet[str] = frozenset()
    default_options: Dict[str, Dict[str, object]] = field(default_factory=dict)
    model_capabilities: Optional[Callable[[nn.Module], FrozenSet[str]]] = None

    def capabilities_of(self, model: nn.Module) -> FrozenSet[str]:
        """Runner capabilities of ``model`` beyond ``run_block``."""
        return self.model_capabilities(model) if self.model_capabilities else self.capabilities


_FAMILIES: List[StageFamily] = []


def register_family(family: StageFamily) -> StageFamily:
    """Make ``connect`` able to rewire models of ``family``."""
    _FAMILIES.append(family)
    return family


def _family_of(model: nn.Module) -> StageFamily:
    for family in _FAMILIES:
        if isinstance(model, family.model_types):
            return family
    known = ', '.join(t.__name__ for f in _FAMILIES for t in f.model_types)
    raise ValueError(f'connect() does not know how to rewire a {type(model).__name__}; it supports: {known}')


def _capability_error(kind: str, family: StageFamily, needs: str) -> ValueError:
    what = {'streams': 'take separate query, key and value inputs (use num_streams=1)',
            'values': 'expose their attention values'}[needs]
    return ValueError(f'connection {kind!r} needs blocks that {what}; {family.name} blocks do not')


def connect(model: nn.Module, kind: str, **options) -> nn.Module:
    """Rewire every stage of ``model`` with connection ``kind``, in place, and return the model.

    Args:
        model: A timm model of a registered family (Swin, SwinV2, ...), plain (not connected yet).
        kind: One of ``densezoo.layers.connections.CONNECTION_KINDS``.
        **options: Options of that connection (``dilation``/``period`` for ``dwa``, ``group_size`` for ``rir``,
            ...); see ``connection_options(kind)``.

    Raises:
        ValueError: unknown kind, an option the kind does not take or cannot use, a capability the family's
            blocks lack, or a model that is already connected. Nothing is changed when it raises.
    """
    family = _family_of(model)
    if kind not in CONNECTION_KINDS:
        raise ValueError(f'unknown connection kind {kind!r}; choose one of {", ".join(CONNECTION_KINDS)}')
    stages = family.stages(model)
    already = [(name, stage) for name, stage in stages
               if isinstance(getattr(stage, 'connection', None), StageConnection)]
    if already:
        raise ValueError(f'{already[0][0]} is already connected ({already[0][1].connection.kind!r}); '
                         f'connect a plain model instead')
    options = {**family.default_options.get(kind, {}), **options}
    capabilities = family.capabilities_of(model)

    built = []
    for name, stage in stages:
        param = next(stage.parameters())
        try:
            connection = create_connection(
                kind, num_blocks=len(stage.blocks), dim=family.stage_dim(stage), layout=family.layout,
                device=param.device, dtype=param.dtype, **options)
        except ValueError as err:
            raise ValueError(f'{name}: {err}') from None
        if connection.requires and connection.requires not in capabilities:
            raise _capability_error(kind, family, connection.requires)
        built.append((stage, connection))

    for stage, connection in built:
        stage.__class__ = family.connected_stages[type(stage)]
        stage.connection = connection
    return mark_connected(model, kind, options)


def mark_connected(model: nn.Module, kind: str, options: Dict[str, object]) -> nn.Module:
    """Record ``kind`` and ``options`` on a model whose stages were just connected, and make checkpoints without
    connection entries load into it (``start_missing_connections``); returns the model."""
    model.connection_kind = kind
    model.connection_args = dict(options)
    if not getattr(model, '_connection_load_hook', False):
        model.register_load_state_dict_pre_hook(start_missing_connections)
        model._connection_load_hook = True
    return model


def model_family(model: nn.Module) -> str:
    """Name of the family ``connect`` knows ``model`` by (``'Swin'``, ``'SwinV2'``, ...)."""
    return _family_of(model).name


def connection_parameters(model: nn.Module) -> Dict[str, nn.Parameter]:
    """Named parameters of ``model`` that belong to connections."""
    return {f'{module_name}.{name}': param
            for module_name, module in model.named_modules() if isinstance(module, StageConnection)
            for name, param in module.named_parameters()}


def start_missing_connections(module, state_dict, prefix, local_metadata, strict, missing_keys,
                               unexpected_keys, error_msgs) -> None:
    """Load-state-dict pre-hook: a checkpoint without a connection's entries gets their initial values."""
    started = []
    for name, connection in module.named_modules():
        if not isinstance(connection, StageConnection):
            continue
        key_prefix = prefix + name + '.'
        own = connection.state_dict()
        if not own or any(key_prefix + key in state_dict for key in own):
            continue
        fresh = copy.deepcopy(connection)
        fresh.reset_parameters()
        for key, value in fresh.state_dict().items():
            state_dict[key_prefix + key] = value
            started.append(key_prefix + key)
    if started:
        shown = ', '.join(started[:4]) + (f', ... ({len(started)} in all)' if len(started) > 4 else '')
        _logger.warning(f'{len(started)} connection tensors are not in the checkpoint and start at their initial '
                        f'values: {shown}')


class ConnectedModel:
    """Mixin for the registered connected model classes: connection-aware optimiser grouping.

    Connection parameters of ``layers.<s>`` join the layer-decay group right after that stage's blocks, and the
    mixing coefficients that weight decay would pull away from their initial values are excluded from it.
    """

    def connection_group_rules(self, coarse: bool) -> List[Tuple[str, Tuple[int, ...]]]:
        """``group_matcher`` rules (regex, ordinal) that place connection parameters after their stage's blocks."""
        return [] if coarse else [(r'^layers\.(\d+)\.connection\.', (99990,))]

    @torch.jit.ignore
    def no_weight_decay(self):
        names = set(super().no_weight_decay())
        for module_name, module in self.named_modules():
            if isinstance(module, StageConnection):
                names.update(f'{module_name}.{n}' for n in module.no_weight_decay_names())
        return names

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        matcher = dict(super().group_matcher(coarse))
        rules = self.connection_group_rules(coarse)
        if rules:
            blocks = matcher['blocks']
            matcher['blocks'] = [*rules, *([(blocks, None)] if isinstance(blocks, str) else blocks)]
        return matcher


class ConnectedIsotropic(ConnectedModel):
    """Mixin for an isotropic model whose whole body (``self.blocks``) is one stage connected by ``self.connection``.

    The model is the connection's runner. It must provide ``run_block(index, x)`` (block ``index`` on the tokens
    ``x``, with its own gradient checkpointing) and may provide ``run_block_streams`` / ``run_block_values`` (see
    ``densezoo.layers.connections``); it must route its body through the two methods this mixin overrides:

    - ``run_blocks(x)``: all blocks on the tokens ``x`` (what ``forward_features`` runs);
    - ``block_states(x, take_indices, stop)``: the state after block ``stop - 1`` and the states after the blocks in
      ``take_indices`` (what ``forward_intermediates`` runs). A state is what the connection passes on after a block
      (``StageConnection`` explains it per kind), so intermediates of a connected model are the tokens its next
      block receives, and the last one is the body's output.

    Both take an optional ``runner`` that replaces the model (e.g. one binding an attention mask).
    ``prune_intermediate_layers`` truncates the connection along with the blocks (``StageConnection.truncated``),
    so a pruned model gives the same intermediates as the full one. Connection parameters (``connection.*``) form
    the layer-decay group after the last block (a final norm that timm matches to the previous group joins it).
    MRO: put this mixin before the plain model class.
    """
    connection: StageConnection

    def connection_group_rules(self, coarse: bool) -> List[Tuple[str, Tuple[int, ...]]]:
        return [(r'^connection\.', (99990,))]

    def run_blocks(self, x: torch.Tensor, runner: Optional[object] = None) -> torch.Tensor:
        """Run all blocks on ``x`` through the connection."""
        return self.connection(x, self if runner is None else runner)

    def block_states(
            self,
            x: torch.Tensor,
            take_indices: Sequence[int],
            stop: int,
            runner: Optional[object] = None,
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """The state after block ``stop - 1`` and, in block order, the states after the blocks in ``take_indices``
        (those below ``stop``)."""
        taps = {index: None for index in take_indices if index < stop}
        x = self.connection(x, self if runner is None else runner, depth=stop, taps=taps)
        return x, [taps[index] for index in sorted(taps)]

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Keep the blocks needed for the intermediates ``indices`` and the matching part of the connection."""
        take_indices = super().prune_intermediate_layers(indices, prune_norm=prune_norm, prune_head=prune_head)
        if len(self.blocks) != self.connection.num_blocks:
            self.connection = self.connection.truncated(len(self.blocks))
        return take_indices

    def __prepare_scriptable__(self):
        _refuse_torchscript()


def register_isotropic_family(
        name: str,
        model_type: type,
        connected_type: type,
        capabilities: FrozenSet[str] = frozenset(),
        default_options: Optional[Dict[str, Dict[str, object]]] = None,
        model_capabilities: Optional[Callable[[nn.Module], FrozenSet[str]]] = None,
) -> StageFamily:
    """Make ``connect`` rewire models of ``model_type`` across all their blocks (``model.blocks``, layout 'NLC').

    ``connected_type`` (a subclass of ``ConnectedIsotropic`` and ``model_type``) replaces the class of a plain
    model when it is connected; a ``connected_type`` may also call ``connect(self, ...)`` in its own ``__init__``.
    The stage is named ``'blocks'`` in messages; its width is ``model.embed_dim``.
    """
    return register_family(StageFamily(
        name=name, model_types=(model_type,), stages=lambda model: [('blocks', model)],
        connected_stages={model_type: connected_type, connected_type: connected_type},
        stage_dim=lambda model: model.embed_dim, layout='NLC', capabilities=frozenset(capabilities),
        default_options=dict(default_options or {}), model_capabilities=model_capabilities))
