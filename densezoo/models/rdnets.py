"""RDNet ("DenseNets Reloaded") with block connections: ``dwa`` and ``rir`` inside each dense stage.

``ConnectedRDNet`` is timm's ``RDNet`` (same modules, parameter names and API) with a ``connection`` module in every
dense stage; a plain timm or official RDNet checkpoint loads and the connection then starts as the plain network.
Registered: ``rdnet_tiny_dwa``, ``rdnet_tiny_rir``, ..., ``rdnet_large_rir``.

Paper: DenseNets Reloaded: Paradigm Shift Beyond ResNets and ViTs (https://arxiv.org/abs/2403.19588); official
code: https://github.com/naver-ai/rdnet. DenseFormer: https://arxiv.org/abs/2402.02622.
Design notes: docs/backbones.md.
"""
import functools
import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models.rdnet import DenseBlock, DenseStage, RDNet, checkpoint_filter_fn

from densezoo.layers.connections import StageConnection, create_connection
from densezoo.models._common import check_image_batch, connected_cfgs, is_tracing, register_connected
from densezoo.models.connect import mark_connected

__all__ = ['ConnectedRDNet', 'ConnectedDenseStage', 'DenseResidualInResidual', 'connect_rdnet', 'RDNET_CONNECTIONS',
           'checkpoint_filter_fn']

#: connections an RDNet dense stage can take
RDNET_CONNECTIONS = ('residual', 'dwa', 'rir')


class DenseResidualInResidual(StageConnection):
    """Residual-in-residual groups over the concatenating blocks of one RDNet dense stage (see the module docstring).

    Args:
        num_blocks: Blocks of the stage.
        in_chs: Channels of the stage input.
        growth: Channels each block adds.
        group_size: Blocks per group; must divide ``num_blocks``. None: the whole stage is one group.
        projection: ``'linear'`` (1x1 convolution) or ``'conv3x3'``.
        residual_scale: s in [F, 0] + s * P(N); P starts as [0; I / s].
    """
    kind = 'rir'

    def __init__(
            self,
            num_blocks: int,
            in_chs: int,
            growth: int,
            group_size: Optional[int] = None,
            projection: str = 'linear',
            residual_scale: float = 1.0,
            device=None,
            dtype=None,
    ):
        super().__init__(num_blocks)
        group_size = num_blocks if group_size is None else group_size
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1 or num_blocks % group_size:
            divisors = [d for d in range(1, num_blocks + 1) if num_blocks % d == 0]
            raise ValueError(f'group_size={group_size!r} does not divide the {num_blocks} blocks of the stage; '
                             f'group_size must be one of {divisors} (or None for one group)')
        if projection not in ('linear', 'conv3x3'):
            raise ValueError(f"projection={projection!r} is not allowed; choose 'linear' or 'conv3x3'")
        if not residual_scale or not math.isfinite(residual_scale):
            raise ValueError(f'residual_scale={residual_scale!r} is not allowed; it must be a finite non-zero number')
        self.in_chs, self.growth, self.group_size = in_chs, growth, group_size
        self.projection, self.residual_scale = projection, float(residual_scale)
        kernel = (3, 3) if projection == 'conv3x3' else (1, 1)
        new = group_size * growth
        self.weight = nn.ParameterList([
            nn.Parameter(torch.empty(self.group_out_chs(k), new, *kernel, device=device, dtype=dtype))
            for k in range(self.num_groups)])
        self.bias = nn.ParameterList([
            nn.Parameter(torch.empty(self.group_out_chs(k), device=device, dtype=dtype))
            for k in range(self.num_groups)])
        self.reset_parameters()

    @property
    def num_groups(self) -> int:
        return self.num_blocks // self.group_size

    def group_out_chs(self, group: int) -> int:
        """Channels of the features after group ``group``."""
        return self.in_chs + (group + 1) * self.group_size * self.growth

    def reset_parameters(self) -> None:
        with torch.no_grad():
            new = self.group_size * self.growth
            for weight, bias in zip(self.weight, self.bias):
                weight.zero_()
                centre = weight[-new:, :, weight.shape[2] // 2, weight.shape[3] // 2]
                centre.copy_(torch.eye(new, device=weight.device, dtype=weight.dtype) / self.residual_scale)
                bias.zero_()

    def _skip(self, group: int, read: torch.Tensor, new: torch.Tensor) -> List[torch.Tensor]:
        """[read, 0] + s * P(new), as the two pieces (read channels, new channels)."""
        padding = 1 if self.projection == 'conv3x3' else 0
        projected = F.conv2d(new, self.weight[group], self.bias[group], padding=padding)
        if self.residual_scale != 1.:
            projected = projected * self.residual_scale
        width = self.group_out_chs(group) - self.group_size * self.growth
        return [read + projected[:, :width], projected[:, width:]]

    def forward(self, x: torch.Tensor, runner) -> torch.Tensor:
        features = [x]
        for group in range(self.num_groups):
            for i in range(group * self.group_size, (group + 1) * self.group_size):
                features.append(runner.run_dense_block(i, features))
            read, new = features[:-self.group_size], features[-self.group_size:]
            features = self._skip(group, torch.cat(read, 1), torch.cat(new, 1))
        return torch.cat(features, 1)

    def extra_repr(self) -> str:
        return (f'num_blocks={self.num_blocks}, in_chs={self.in_chs}, growth={self.growth}, '
                f'group_size={self.group_size}, projection={self.projection!r}, residual_scale={self.residual_scale}')


_RIR_OPTIONS = ('group_size', 'projection', 'residual_scale')


class _GrowthRunner:
    """Runner for library connections over the growth outputs of a dense stage (``dwa``, ``residual``).

    The connection's stream is the newest feature of the stage; ``run_block(i, h)`` adds ``h`` to the stage's
    concatenation and runs block ``i + 1`` on it, returning that block's raw growth.
    """

    def __init__(self, stage: 'ConnectedDenseStage', features: List[torch.Tensor]):
        self.stage = stage
        self.features = features

    def run_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        self.features.append(x)
        return self.stage.run_dense_block(index + 1, self.features)


class ConnectedDenseStage(DenseStage):
    """timm RDNet dense stage whose blocks run through ``self.connection`` (the stage is its runner)."""
    connection: StageConnection

    def run_dense_block(self, index: int, features: List[torch.Tensor]) -> torch.Tensor:
        """Growth output of block ``index`` on the concatenation of ``features``."""
        return self[index](features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.connection, DenseResidualInResidual):
            return self.connection(x, self)
        features = [x]
        last = self.connection(self.run_dense_block(0, features), _GrowthRunner(self, features))
        return torch.cat([*features, last], 1)

    def __prepare_scriptable__(self):
        raise RuntimeError('connected densezoo stages cannot be compiled by TorchScript (deprecated in PyTorch); '
                           'use torch.compile or torch.export instead')


def _dense_stages(model: nn.Module):
    return [(name, module) for name, module in model.named_modules() if isinstance(module, DenseStage)]


def _create_stage_connection(kind: str, stage: DenseStage, options: Dict[str, object]) -> StageConnection:
    blocks = [module for module in stage.children() if isinstance(module, DenseBlock)]
    growth = blocks[0].growth_rate
    param = next(stage.parameters())
    dd = dict(device=param.device, dtype=param.dtype)
    if kind == 'rir':
        unknown = sorted(set(options) - set(_RIR_OPTIONS))
        if unknown:
            raise ValueError(f"option {unknown[0]!r} does not apply to connection 'rir'; its options are: "
                             f"{', '.join(_RIR_OPTIONS)}")
        in_chs = stage.num_out_features - len(blocks) * growth
        return DenseResidualInResidual(len(blocks), in_chs, growth, **dd, **options)
    if len(blocks) < 2:
        raise ValueError(f'connection {kind!r} runs over the growth of the blocks after the first; this dense stage '
                         f'has {len(blocks)} block, give it at least 2')
    return create_connection(kind, num_blocks=len(blocks) - 1, dim=growth, layout='NCHW', **dd, **options)


def connect_rdnet(model: RDNet, kind: str, **options) -> RDNet:
    """Rewire every dense stage of a timm ``RDNet`` with connection ``kind``, in place, and return the model.

    ``kind`` is one of ``RDNET_CONNECTIONS``; ``options`` are the connection's (``dilation``, ``period`` for
    ``dwa``; ``group_size``, ``projection``, ``residual_scale`` for ``rir``). Parameter names stay timm's; a plain
    checkpoint still loads (the connections then start at their initial values). Raises ``ValueError`` for a kind
    or option RDNet cannot take, or a model already connected; nothing is changed when it raises.
    """
    if not isinstance(model, RDNet):
        raise ValueError(f'connect_rdnet() rewires timm RDNet models, not a {type(model).__name__}')
    if kind not in RDNET_CONNECTIONS:
        raise ValueError(f'connection {kind!r} is not available for RDNet; choose one of '
                         f'{", ".join(RDNET_CONNECTIONS)}')
    stages = _dense_stages(model)
    already = [name for name, stage in stages if isinstance(stage, ConnectedDenseStage)]
    if already:
        raise ValueError(f'{already[0]} is already connected ({stages[0][1].connection.kind!r}); '
                         f'connect a plain model instead')
    built = []
    for name, stage in stages:
        try:
            built.append((stage, _create_stage_connection(kind, stage, options)))
        except ValueError as err:
            raise ValueError(f'{name}: {err}') from None
    for stage, connection in built:
        stage.__class__ = ConnectedDenseStage
        stage.connection = connection
    return mark_connected(model, kind, options)


def _min_input_size(model: RDNet) -> int:
    """Smallest square input that every strided convolution of the stem and the transitions can take."""
    convs = [m for m in model.stem.modules() if isinstance(m, nn.Conv2d)]
    convs += [m for m in model.dense_stages.modules() if isinstance(m, nn.Conv2d) and m.stride[0] > 1]
    size = 1
    while True:
        current = size
        for conv in convs:
            current = (current + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
            if current < 1:
                break
        if current >= 1:
            return size
        size += 1


def _check_input(first_conv: nn.Conv2d, args, min_size: int = 1) -> None:
    """Forward pre-hook on the first convolution: a one-line ``ValueError`` for inputs RDNet cannot take.

    It sits on the convolution, not on the stem, because ``features_only`` unpacks the stem into its layers.
    """
    x = args[0]
    if is_tracing(x):
        return
    check_image_batch(x, first_conv.in_channels)
    height, width = x.shape[-2:]
    if min(height, width) < min_size:
        raise ValueError(f'input size {height}x{width} is too small; this RDNet needs at least '
                         f'{min_size}x{min_size}')


class ConnectedRDNet(RDNet):
    """timm ``RDNet`` whose dense stages use a block connection.

    Args:
        connection: ``'dwa'``, ``'rir'`` or ``'residual'`` (the plain RDNet).
        connection_args: Options of the connection (see ``connect_rdnet``).
        **kwargs: ``RDNet`` arguments; unknown ones raise ``TypeError``.
    """

    def __init__(self, connection: str = 'dwa', connection_args: Optional[Dict[str, object]] = None, **kwargs):
        super().__init__(**kwargs)
        connect_rdnet(self, connection, **(connection_args or {}))
        self.stem[0].register_forward_pre_hook(functools.partial(_check_input, min_size=_min_input_size(self)))

    @torch.jit.ignore
    def no_weight_decay(self):
        """Mixing coefficients that weight decay would pull away from their initial values (``dwa``'s alphas)."""
        return {f'{name}.{param}' for name, module in self.named_modules() if isinstance(module, StageConnection)
                for param in module.no_weight_decay_names()}


def _create_rdnet(variant: str, pretrained: bool = False, **kwargs) -> ConnectedRDNet:
    return build_model_with_cfg(
        ConnectedRDNet, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
        **kwargs)


_SMALL_DOWNSAMPLE = (None, True, True, False, False, False, False, False, False, True, False)

#: timm base architecture -> its arguments (as in timm's entrypoints)
BASE_ARCHS = {
    'rdnet_tiny': dict(
        num_init_features=64, growth_rates=(64, 104, 128, 128, 128, 128, 224), num_blocks_list=(3,) * 7,
        is_downsample_block=(None, True, True, False, False, False, True), transition_compression_ratio=0.5,
        block_type=('Block',) * 2 + ('BlockESE',) * 5),
    'rdnet_small': dict(
        num_init_features=72, growth_rates=(64, 128) + (128,) * 7 + (240,) * 2, num_blocks_list=(3,) * 11,
        is_downsample_block=_SMALL_DOWNSAMPLE, transition_compression_ratio=0.5,
        block_type=('Block',) * 2 + ('BlockESE',) * 9),
    'rdnet_base': dict(
        num_init_features=120, growth_rates=(96, 128) + (168,) * 7 + (336,) * 2, num_blocks_list=(3,) * 11,
        is_downsample_block=_SMALL_DOWNSAMPLE, transition_compression_ratio=0.5,
        block_type=('Block',) * 2 + ('BlockESE',) * 9),
    'rdnet_large': dict(
        num_init_features=144, growth_rates=(128, 192) + (256,) * 8 + (360,) * 2, num_blocks_list=(3,) * 12,
        is_downsample_block=(None, True, True) + (False,) * 7 + (True, False), transition_compression_ratio=0.5,
        block_type=('Block',) * 2 + ('BlockESE',) * 10),
}

#: registered connection -> options of the registered variants
CONNECTIONS = {
    'dwa': {},
    'rir': {},
}

default_cfgs = generate_default_cfgs(connected_cfgs(BASE_ARCHS, CONNECTIONS))

for _arch, _args in BASE_ARCHS.items():
    for _kind, _options in CONNECTIONS.items():
        register_connected(__name__, _arch, _kind, _args, _options, _create_rdnet)
