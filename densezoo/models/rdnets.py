"""RDNet ("DenseNets Reloaded") with block connections: ``dwa`` and ``rir`` inside each dense stage.

``ConnectedRDNet`` is timm's ``RDNet`` (same modules, parameter names and API) with a ``connection`` module in every
dense stage, as ``densezoo.connect(timm.create_model('rdnet_tiny'), 'dwa')`` makes it; a plain timm or official
RDNet checkpoint loads and the connection then starts as the plain network.
Registered: ``rdnet_tiny_dwa``, ``rdnet_tiny_rir``, ..., ``rdnet_large_rir``.

Paper: DenseNets Reloaded: Paradigm Shift Beyond ResNets and ViTs (https://arxiv.org/abs/2403.19588); official
code: https://github.com/naver-ai/rdnet. DenseFormer: https://arxiv.org/abs/2402.02622.
Design notes: docs/backbones.md.
"""
import functools
from typing import Dict, List

import torch
from torch import nn

from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models.rdnet import DenseBlock, DenseStage, RDNet, checkpoint_filter_fn

from densezoo.layers.connections import DenseResidualInResidual, StageConnection, create_connection
from densezoo.models._common import check_image_batch, connected_cfgs, is_tracing, register_models
from densezoo.models.connect import ConnectedModel, StageFamily, register_family

__all__ = ['ConnectedRDNet', 'ConnectedDenseStage', 'RDNET_CONNECTIONS', 'checkpoint_filter_fn']

#: connections an RDNet dense stage can take
RDNET_CONNECTIONS = ('residual', 'dwa', 'rir')


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


class ConnectedRDNet(ConnectedModel, RDNet):
    """timm ``RDNet`` whose dense stages use a block connection.

    Args:
        connection: ``'dwa'``, ``'rir'`` or ``'residual'`` (the plain RDNet).
        connection_args: Options of the connection (``dilation``, ``period`` for ``dwa``; ``group_size``,
            ``projection``, ``residual_scale`` for ``rir``).
        **kwargs: ``RDNet`` arguments; unknown ones raise ``TypeError``.
    """

    def install_input_checks(self) -> None:
        self.stem[0].register_forward_pre_hook(functools.partial(_check_input, min_size=_min_input_size(self)))

    def connection_group_rules(self, coarse: bool):
        return []  # timm's groups are whole dense stages, connections included


def _dense_stages(model: nn.Module):
    return [(name, module) for name, module in model.named_modules() if isinstance(module, DenseStage)]


def _dense_blocks(stage: DenseStage) -> List[DenseBlock]:
    return [module for module in stage.children() if isinstance(module, DenseBlock)]


#: options of ``rir`` in a dense stage (the rest of its arguments come from the stage)
_RIR_OPTIONS = ('group_size', 'projection', 'residual_scale')


def _build_connection(kind: str, stage: DenseStage, options: Dict[str, object], device=None,
                      dtype=None) -> StageConnection:
    """``rir`` over the stage's concatenation, or a library connection over the growth of its blocks after the
    first (``dwa``, ``residual``)."""
    blocks = _dense_blocks(stage)
    growth = blocks[0].growth_rate
    if kind == 'rir':
        unknown = sorted(set(options) - set(_RIR_OPTIONS))
        if unknown:
            raise ValueError(f"option {unknown[0]!r} does not apply to connection 'rir'; its options are: "
                             f"{', '.join(_RIR_OPTIONS)}")
        in_chs = stage.num_out_features - len(blocks) * growth
        return DenseResidualInResidual(len(blocks), in_chs, growth, device=device, dtype=dtype, **options)
    if len(blocks) < 2:
        raise ValueError(f'connection {kind!r} runs over the growth of the blocks after the first; this dense stage '
                         f'has {len(blocks)} block, give it at least 2')
    return create_connection(kind, num_blocks=len(blocks) - 1, dim=growth, layout='NCHW', device=device,
                             dtype=dtype, **options)


register_family(StageFamily(
    name='RDNet', connected_models={RDNet: ConnectedRDNet}, stages=_dense_stages,
    connected_stages={DenseStage: ConnectedDenseStage}, stage_dim=lambda stage: _dense_blocks(stage)[0].growth_rate,
    layout='NCHW', kinds=RDNET_CONNECTIONS, build_connection=_build_connection))


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

register_models(__name__, _create_rdnet, [
    'rdnet_tiny_dwa', 'rdnet_tiny_rir',
    'rdnet_small_dwa', 'rdnet_small_rir',
    'rdnet_base_dwa', 'rdnet_base_rir',
    'rdnet_large_dwa', 'rdnet_large_rir',
], BASE_ARCHS, CONNECTIONS)
