"""Rewire the stages of a timm model with a block connection, in place.

``connect(model, 'dwa', dilation=2)`` keeps every block, every parameter name and every other method of the model,
and makes each stage run its blocks through a connection module from ``densezoo.layers.connections``, stored as
``<stage>.connection``; the model becomes its family's connected class (``ConnectedModel``). Families describe
themselves with one ``StageFamily`` each, given to ``register_family``.

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

__all__ = ['connect', 'register_family', 'StageFamily', 'model_stage', 'ConnectedStage', 'ConnectedModel',
           'ConnectedIsotropic', 'run_maybe_checkpointed', 'connection_parameters', 'model_family',
           'start_missing_connections']

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
    """How ``connect`` finds and rewires the stages of one family of models, and what it makes of the model.

    Args:
        name: Family name used in messages.
        connected_models: Maps each plain model class of the family to its connected class (a ``ConnectedModel``),
            which ``connect`` gives the model: its optimiser groups, input checks and truncation.
        stages: Returns ``(name, stage)`` pairs of a model, in order; a stage may be the model itself.
        connected_stages: Maps each stage class to its connected subclass (not needed for the model itself).
        stage_dim: Channel width of a stage's blocks.
        layout: Feature layout of the blocks ('NHWC', 'NLC' or 'NCHW').
        capabilities: Runner capabilities beyond ``run_block`` ('streams', 'values').
        default_options: Per-kind default options for this family (e.g. MUDD streams).
        model_capabilities: Optional; the capabilities of one model, when they depend on its blocks. Replaces
            ``capabilities`` when given.
        kinds: The connection kinds the family takes (None: all of ``CONNECTION_KINDS``).
        build_connection: Optional; ``(kind, stage, options, device, dtype) -> StageConnection`` for a family
            whose stages need their own connection classes (default: ``create_connection``).
    """
    name: str
    connected_models: Dict[type, type]
    stages: Callable[[nn.Module], List[Tuple[str, nn.Module]]]
    stage_dim: Callable[[nn.Module], int]
    connected_stages: Dict[type, type] = field(default_factory=dict)
    layout: str = 'NHWC'
    capabilities: FrozenSet[str] = frozenset()
    default_options: Dict[str, Dict[str, object]] = field(default_factory=dict)
    model_capabilities: Optional[Callable[[nn.Module], FrozenSet[str]]] = None
    kinds: Optional[Tuple[str, ...]] = None
    build_connection: Optional[Callable[..., StageConnection]] = None

    @property
    def model_types(self) -> Tuple[type, ...]:
        return tuple(self.connected_models)

    def capabilities_of(self, model: nn.Module) -> FrozenSet[str]:
        """Runner capabilities of ``model`` beyond ``run_block``."""
        return self.model_capabilities(model) if self.model_capabilities else self.capabilities

    def create(self, kind: str, stage: nn.Module, options: Dict[str, object]) -> StageConnection:
        """The connection ``kind`` for ``stage``, on the stage's device and dtype."""
        param = next(stage.parameters())
        if self.build_connection is not None:
            return self.build_connection(kind, stage, options, device=param.device, dtype=param.dtype)
        return create_connection(kind, num_blocks=len(stage.blocks), dim=self.stage_dim(stage), layout=self.layout,
                                 device=param.device, dtype=param.dtype, **options)


def model_stage(name: str) -> Callable[[nn.Module], List[Tuple[str, nn.Module]]]:
    """``StageFamily.stages`` of a family whose whole body is one stage, the model itself (named ``name``)."""
    return lambda model: [(name, model)]


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


def _connected_class(model: nn.Module, family: StageFamily) -> type:
    if isinstance(model, ConnectedModel):
        return type(model)
    if type(model) in family.connected_models:
        return family.connected_models[type(model)]
    plain = ', '.join(t.__name__ for t in family.model_types)
    raise ValueError(f'connect() rewires models of class {plain}, not the subclass {type(model).__name__}; '
                     f'connect the model before subclassing, or derive from the connected class instead')


def connect(model: nn.Module, kind: str, **options) -> nn.Module:
    """Rewire every stage of ``model`` with connection ``kind``, in place, and return the model.

    The model becomes its family's connected class, the one its registered ``<name>_<kind>`` variant has: the same
    parameters, ``no_weight_decay()``, ``group_matcher()``, input checks and truncation.

    Args:
        model: A model of a registered family (timm's Swin, ViT, PVT v2, RDNet, densezoo's PVT, SR models, ...),
            plain (not connected yet).
        kind: One of ``densezoo.layers.connections.CONNECTION_KINDS`` that the family takes.
        **options: Options of that connection (``dilation``/``period`` for ``dwa``, ``group_size`` for ``rir``,
            ...); see ``connection_options(kind)``.

    Raises:
        ValueError: unknown kind, an option the kind does not take or cannot use, a capability the family's
            blocks lack, or a model that is already connected. Nothing is changed when it raises.
    """
    family = _family_of(model)
    allowed = family.kinds or CONNECTION_KINDS
    if kind not in allowed:
        what = 'unknown connection kind' if kind not in CONNECTION_KINDS else f'{family.name} takes no connection'
        raise ValueError(f'{what} {kind!r}; choose one of {", ".join(allowed)}')
    connected_class = _connected_class(model, family)
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
        try:
            connection = family.create(kind, stage, options)
        except ValueError as err:
            raise ValueError(f'{name}: {err}') from None
        if connection.requires and connection.requires not in capabilities:
            raise _capability_error(kind, family, connection.requires)
        built.append((stage, connection))

    model.__class__ = connected_class
    model.install_input_checks()
    for stage, connection in built:
        if stage is not model:
            stage.__class__ = family.connected_stages[type(stage)]
        stage.connection = connection
    return _mark_connected(model, kind, options)


def _mark_connected(model: nn.Module, kind: str, options: Dict[str, object]) -> nn.Module:
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
    """Mixin of every connected model class: construction through ``connect``, and the model-level contract.

    ``Connected<Model>(connection='dwa', connection_args=None, **kwargs)`` builds the plain model from ``kwargs``
    and connects it. Connection parameters join the layer-decay group right after their stage's blocks
    (``connection_group_rules``), and the mixing coefficients that weight decay would pull away from their initial
    values are excluded from it. ``install_input_checks`` adds the family's one-line input errors. MRO: put the
    mixin before the plain model class.
    """

    def __init__(self, connection: str = 'dwa', connection_args: Optional[Dict[str, object]] = None, **kwargs):
        super().__init__(**kwargs)
        connect(self, connection, **(connection_args or {}))

    def install_input_checks(self) -> None:
        """Add the checks that give inputs the model cannot take a one-line ``ValueError`` (called by ``connect``)."""

    def connection_group_rules(self, coarse: bool) -> List[Tuple[str, Tuple[int, ...]]]:
        """``group_matcher`` rules (regex, ordinal) that place connection parameters after their stage's blocks."""
        return [] if coarse else [(r'^layers\.(\d+)\.connection\.', (99990,))]

    @torch.jit.ignore
    def no_weight_decay(self):
        plain = getattr(super(), 'no_weight_decay', None)
        names = set(plain()) if plain is not None else set()
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

    def __prepare_scriptable__(self):
        _refuse_torchscript()


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
