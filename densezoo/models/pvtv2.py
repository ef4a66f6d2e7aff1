"""Pyramid Vision Transformer v2 with block connections.

``ConnectedPyramidVisionTransformerV2`` is timm's ``PyramidVisionTransformerV2`` (``pvt_v2_b0`` ... ``pvt_v2_b5``,
``pvt_v2_b2_li``) with every stage rewired by ``densezoo.connect``; registered names add the connection
(``pvt_v2_b2_dwa``, ``pvt_v2_b2_li_mudd``, ...). Named apart from timm's own ``pvt_v2`` module.

Paper: PVT v2 (https://arxiv.org/abs/2106.13797).
Official code and weights: https://github.com/whai362/PVT (Apache 2.0).
Design notes: docs/backbones.md.
"""
from typing import Tuple

import torch
from torch import nn

from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models.pvt_v2 import PyramidVisionTransformerStage, PyramidVisionTransformerV2
from timm.models.pvt_v2 import checkpoint_filter_fn as _pvt_v2_filter

from densezoo.layers.connections import StageConnection
from densezoo.models._common import check_image_batch, connected_cfgs, is_tracing, register_models
from densezoo.models.connect import StageFamily, register_family
from densezoo.models.pvt import (CONNECTIONS, PVT_FAMILY_ARGS, ConnectedPvtModel, ConnectedTokenStage,
                                 check_checkpoint_fits, renamed_entries)

__all__ = ['ConnectedPyramidVisionTransformerV2', 'checkpoint_filter_fn']


class ConnectedPvtV2Stage(ConnectedTokenStage, PyramidVisionTransformerStage):
    """timm PVT v2 stage (downsample, blocks, norm) whose blocks run through ``self.connection``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)  # NCHW -> NHWC
        B, H, W, C = x.shape
        x = self.norm(self.run_connected_tokens(x.reshape(B, -1, C), (H, W)))
        return x.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous()


def _check_v2_input(patch_embed: nn.Module, args: Tuple[torch.Tensor, ...]) -> None:
    """Forward pre-hook of PVT v2's patch embedding: a one-line ``ValueError`` for inputs it cannot take."""
    if not is_tracing(args[0]):
        check_image_batch(args[0], patch_embed.proj.in_channels)


class ConnectedPyramidVisionTransformerV2(ConnectedPvtModel, PyramidVisionTransformerV2):
    """timm ``PyramidVisionTransformerV2`` whose stages use a block connection.

    Args:
        connection: Connection kind (``'dwa'``, ``'mudd'``, ``'rir'``, ``'dense'``, ...).
        connection_args: Options of the connection (see ``densezoo.connection_options``).
        **kwargs: ``PyramidVisionTransformerV2`` arguments; unknown ones raise ``TypeError``.
    """

    def install_input_checks(self) -> None:
        self.patch_embed.register_forward_pre_hook(_check_v2_input)

    def init_weights(self) -> None:
        """timm's initialisation (e.g. after ``to_empty()``): its linear and conv init, unit norms, identity
        connections."""
        for module in self.modules():
            if isinstance(module, (nn.LayerNorm, StageConnection)):
                module.reset_parameters()
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if not any(p.is_meta for p in module.parameters(recurse=False)):  # meta tensors hold no values to set
            super()._init_weights(module)


register_family(StageFamily(
    name='PVTv2', connected_models={PyramidVisionTransformerV2: ConnectedPyramidVisionTransformerV2},
    connected_stages={PyramidVisionTransformerStage: ConnectedPvtV2Stage}, **PVT_FAMILY_ARGS))


def _official_v2_key(key: str) -> str:
    """timm name of an official PVT v2 checkpoint key, by timm's own filter (timm names are kept)."""
    return next(iter(_pvt_v2_filter({key: None}, None)))


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Map official PVT v2, timm and densezoo checkpoints onto ``model`` (PVT v2, plain or connected).

    Unwraps 'model' / 'state_dict', renames official keys and raises a one-line ``ValueError`` naming the first
    entry that does not fit the model.
    """
    out, origin = renamed_entries(state_dict, _official_v2_key)
    check_checkpoint_fits(out, origin, model)
    return out


def _create_pvt_v2(variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    out_indices = kwargs.pop('out_indices', tuple(range(len(kwargs.get('depths', (3, 4, 6, 3))))))
    return build_model_with_cfg(
        ConnectedPyramidVisionTransformerV2, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs)


_PVT_V2 = dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8))

#: timm PVT v2 base architecture -> its arguments (as in timm's entrypoints)
PVT_V2_ARCHS = {
    'pvt_v2_b0': dict(depths=(2, 2, 2, 2), embed_dims=(32, 64, 160, 256), num_heads=(1, 2, 5, 8)),
    'pvt_v2_b1': dict(depths=(2, 2, 2, 2), **_PVT_V2),
    'pvt_v2_b2': dict(depths=(3, 4, 6, 3), **_PVT_V2),
    'pvt_v2_b3': dict(depths=(3, 4, 18, 3), **_PVT_V2),
    'pvt_v2_b4': dict(depths=(3, 8, 27, 3), **_PVT_V2),
    'pvt_v2_b5': dict(depths=(3, 6, 40, 3), mlp_ratios=(4, 4, 4, 4), **_PVT_V2),
    'pvt_v2_b2_li': dict(depths=(3, 4, 6, 3), linear=True, **_PVT_V2),
}

default_cfgs = generate_default_cfgs(connected_cfgs(PVT_V2_ARCHS, CONNECTIONS))

register_models(__name__, _create_pvt_v2, [
    'pvt_v2_b0_dwa', 'pvt_v2_b0_mudd', 'pvt_v2_b0_rir', 'pvt_v2_b0_dense',
    'pvt_v2_b1_dwa', 'pvt_v2_b1_mudd', 'pvt_v2_b1_rir', 'pvt_v2_b1_dense',
    'pvt_v2_b2_dwa', 'pvt_v2_b2_mudd', 'pvt_v2_b2_rir', 'pvt_v2_b2_dense',
    'pvt_v2_b3_dwa', 'pvt_v2_b3_mudd', 'pvt_v2_b3_rir', 'pvt_v2_b3_dense',
    'pvt_v2_b4_dwa', 'pvt_v2_b4_mudd', 'pvt_v2_b4_rir', 'pvt_v2_b4_dense',
    'pvt_v2_b5_dwa', 'pvt_v2_b5_mudd', 'pvt_v2_b5_rir', 'pvt_v2_b5_dense',
    'pvt_v2_b2_li_dwa', 'pvt_v2_b2_li_mudd', 'pvt_v2_b2_li_rir', 'pvt_v2_b2_li_dense',
], PVT_V2_ARCHS, CONNECTIONS)
