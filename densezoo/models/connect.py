"""Rewire the stages of a timm model with a block connection, in place.

``connect(model, 'dwa', dilation=2)`` keeps every block, every parameter name and every other method of the model,
and replaces only what each stage does with its blocks: the stage runs them through a connection module from
``densezoo.layers.connections``, stored as ``<stage>.connection``. A plain checkpoint of the model therefore still
loads: connection parameters it lacks are set to their initial values (identity for ``dwa``, ``mudd``, ``rir``,
``dense`` and ``laurel``) and reported in a log warning, not raised as missing keys.

Model families describe their stages to this module with ``register_family``; a family file (``swin.py``, ...)
defines, for each timm stage class, a subclass that mixes in ``ConnectedStage``.
"""
import copy
import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, List, Tuple

import torch
from torch import nn

from timm.models._manipulate import checkpoint

from densezoo.layers.connections import CONNECTION_KINDS, StageConnection, create_connection

__all__ = ['connect', 'register_family', 'StageFamily', 'ConnectedStage', 'ConnectedModel', 'connection_parameters',
           'model_family']

_logger = logging.getLogger(__name__)


class ConnectedStage:
    """Mixin for a stage whose blocks run through ``self.connection``; the stage is the connection's runner.

    It expects the stage to hold ``self.blocks`` and a ``grad_checkpointing`` flag, as timm's stages do.
    Gradient checkpointing stays per block: the connection's own arithmetic is kept, the blocks are recomputed.
    """
    connection: StageConnection

    def run_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Run block ``index`` on ``x``."""
        block = self.blocks[index]
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint(block, x)
        return block(x)

    def run_connected_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """Run all blocks of the stage on the stage input ``x`` through the connection."""
        return self.connection(x, self)

    def __prepare_scriptable__(self):
        raise RuntimeError('connected densezoo stages cannot be compiled by TorchScript (deprecated in PyTorch); '
                           'use torch.compile or torch.export instead')


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
    """
    name: str
    model_types: Tuple[type, ...]
    stages: Callable[[nn.Module], List[Tuple[str, nn.Module]]]
    connected_stages: Dict[type, type]
    stage_dim: Callable[[nn.Module], int]
    layout: str = 'NHWC'
    capabilities: FrozenSet[str] = frozenset()
    default_options: Dict[str, Dict[str, object]] = field(default_factory=dict)


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
    already = [name for name, stage in stages if isinstance(stage, ConnectedStage)]
    if already:
        raise ValueError(f'{already[0]} is already connected ({stages[0][1].connection.kind!r}); '
                         f'connect a plain model instead')
    options = {**family.default_options.get(kind, {}), **options}

    built = []
    for name, stage in stages:
        param = next(stage.parameters())
        try:
            connection = create_connection(
                kind, num_blocks=len(stage.blocks), dim=family.stage_dim(stage), layout=family.layout,
                device=param.device, dtype=param.dtype, **options)
        except ValueError as err:
            raise ValueError(f'{name}: {err}') from None
        if connection.requires and connection.requires not in family.capabilities:
            raise _capability_error(kind, family, connection.requires)
        built.append((stage, connection))

    for stage, connection in built:
        stage.__class__ = family.connected_stages[type(stage)]
        stage.connection = connection
    model.connection_kind = kind
    model.connection_args = dict(options)
    if not getattr(model, '_connection_load_hook', False):
        model.register_load_state_dict_pre_hook(_start_missing_connections)
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


def _start_missing_connections(module, state_dict, prefix, local_metadata, strict, missing_keys,
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

    @torch.jit.ignore
    def no_weight_decay(self):
        names = set(super().no_weight_decay())
        for module_name, module in self.named_modules():
            if isinstance(module, StageConnection):
                names.update(f'{module_name}.{n}' for n in module.no_weight_decay_names())
        return names

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        matcher = super().group_matcher(coarse)
        if not coarse:
            matcher['blocks'] = [(r'^layers\.(\d+)\.connection\.', (99990,)), *matcher['blocks']]
        return matcher
