"""Swin Transformer and Swin Transformer V2 with block connections.

``ConnectedSwinTransformer`` / ``ConnectedSwinTransformerV2`` are timm's ``SwinTransformer`` / ``SwinTransformerV2``
with every stage rewired by ``densezoo.connect``; registered names are timm's base name plus the connection, e.g.
``swin_tiny_patch4_window7_224_dwa`` or ``swinv2_small_window16_256_mudd``.

Papers: Swin Transformer (https://arxiv.org/abs/2103.14030), Swin Transformer V2 (https://arxiv.org/abs/2111.09883).
Design notes: docs/backbones.md.
"""
from torch import nn

from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models.swin_transformer import SwinTransformer, SwinTransformerStage
from timm.models.swin_transformer import checkpoint_filter_fn as _swin_filter
from timm.models.swin_transformer_v2 import SwinTransformerV2, SwinTransformerV2Stage
from timm.models.swin_transformer_v2 import checkpoint_filter_fn as _swinv2_filter

from densezoo.models._common import check_image_input, connected_cfgs, register_models
from densezoo.models.connect import ConnectedModel, ConnectedStage, StageFamily, register_family

__all__ = ['ConnectedSwinTransformer', 'ConnectedSwinTransformerV2', 'checkpoint_filter_fn']


class ConnectedSwinStage(ConnectedStage, SwinTransformerStage):
    """timm Swin stage (downsample, then blocks) whose blocks run through ``self.connection``."""

    def forward(self, x):
        return self.run_connected_blocks(self.downsample(x))


class ConnectedSwinV2Stage(ConnectedStage, SwinTransformerV2Stage):
    """timm Swin V2 stage (downsample, then blocks) whose blocks run through ``self.connection``."""

    def forward(self, x):
        return self.run_connected_blocks(self.downsample(x))


class ConnectedSwinTransformer(ConnectedModel, SwinTransformer):
    """timm ``SwinTransformer`` whose stages use a block connection.

    Args:
        connection: Connection kind (``'dwa'``, ``'mudd'``, ``'rir'``, ``'dense'``, ...).
        connection_args: Options of the connection (see ``densezoo.connection_options``).
        **kwargs: ``SwinTransformer`` arguments; unknown ones raise ``TypeError``.
    """

    def install_input_checks(self) -> None:
        self.patch_embed.register_forward_pre_hook(check_image_input)


class ConnectedSwinTransformerV2(ConnectedModel, SwinTransformerV2):
    """timm ``SwinTransformerV2`` whose stages use a block connection (arguments as ``ConnectedSwinTransformer``)."""

    def install_input_checks(self) -> None:
        self.patch_embed.register_forward_pre_hook(check_image_input)


def _swin_stages(model: nn.Module):
    return [(f'layers.{i}', stage) for i, stage in enumerate(model.layers)]


def _block_dim(stage: nn.Module) -> int:
    return stage.blocks[0].dim


register_family(StageFamily(
    name='Swin', connected_models={SwinTransformer: ConnectedSwinTransformer}, stages=_swin_stages,
    connected_stages={SwinTransformerStage: ConnectedSwinStage}, stage_dim=_block_dim, layout='NHWC'))
register_family(StageFamily(
    name='SwinV2', connected_models={SwinTransformerV2: ConnectedSwinTransformerV2}, stages=_swin_stages,
    connected_stages={SwinTransformerV2Stage: ConnectedSwinV2Stage}, stage_dim=_block_dim, layout='NHWC'))


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Accept timm, official Swin / Swin V2 and densezoo checkpoints (resizing tables and patch embeddings)."""
    if isinstance(model, SwinTransformerV2):
        return _swinv2_filter(state_dict, model)
    return _swin_filter(state_dict, model)


def _create_swin(variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    model_cls = ConnectedSwinTransformerV2 if variant.startswith('swinv2') else ConnectedSwinTransformer
    out_indices = kwargs.pop('out_indices', tuple(range(len(kwargs.get('depths', (2, 2, 6, 2))))))
    return build_model_with_cfg(
        model_cls, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs)


_TINY = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))
_SMALL = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24))
_BASE = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))

#: timm base architecture -> its arguments (as in timm's entrypoints)
BASE_ARCHS = {
    'swin_tiny_patch4_window7_224': dict(patch_size=4, window_size=7, **_TINY),
    'swin_small_patch4_window7_224': dict(patch_size=4, window_size=7, **_SMALL),
    'swin_base_patch4_window7_224': dict(patch_size=4, window_size=7, **_BASE),
    'swinv2_tiny_window8_256': dict(window_size=8, **_TINY),
    'swinv2_tiny_window16_256': dict(window_size=16, **_TINY),
    'swinv2_small_window8_256': dict(window_size=8, **_SMALL),
    'swinv2_small_window16_256': dict(window_size=16, **_SMALL),
    'swinv2_base_window8_256': dict(window_size=8, **_BASE),
    'swinv2_base_window16_256': dict(window_size=16, **_BASE),
}

#: registered connection -> options of the registered variants
CONNECTIONS = {
    'dwa': {},
    'mudd': {},
    'rir': dict(group_size=2, long_skip=True),
    'dense': dict(growth=32),
}

default_cfgs = generate_default_cfgs(connected_cfgs(BASE_ARCHS, CONNECTIONS))

register_models(__name__, _create_swin, [
    'swin_tiny_patch4_window7_224_dwa', 'swin_tiny_patch4_window7_224_mudd', 'swin_tiny_patch4_window7_224_rir',
    'swin_tiny_patch4_window7_224_dense', 'swin_small_patch4_window7_224_dwa', 'swin_small_patch4_window7_224_mudd',
    'swin_small_patch4_window7_224_rir', 'swin_small_patch4_window7_224_dense', 'swin_base_patch4_window7_224_dwa',
    'swin_base_patch4_window7_224_mudd', 'swin_base_patch4_window7_224_rir', 'swin_base_patch4_window7_224_dense',
    'swinv2_tiny_window8_256_dwa', 'swinv2_tiny_window8_256_mudd', 'swinv2_tiny_window8_256_rir',
    'swinv2_tiny_window8_256_dense', 'swinv2_tiny_window16_256_dwa', 'swinv2_tiny_window16_256_mudd',
    'swinv2_tiny_window16_256_rir', 'swinv2_tiny_window16_256_dense', 'swinv2_small_window8_256_dwa',
    'swinv2_small_window8_256_mudd', 'swinv2_small_window8_256_rir', 'swinv2_small_window8_256_dense',
    'swinv2_small_window16_256_dwa', 'swinv2_small_window16_256_mudd', 'swinv2_small_window16_256_rir',
    'swinv2_small_window16_256_dense', 'swinv2_base_window8_256_dwa', 'swinv2_base_window8_256_mudd',
    'swinv2_base_window8_256_rir', 'swinv2_base_window8_256_dense', 'swinv2_base_window16_256_dwa',
    'swinv2_base_window16_256_mudd', 'swinv2_base_window16_256_rir', 'swinv2_base_window16_256_dense',
], BASE_ARCHS, CONNECTIONS)
