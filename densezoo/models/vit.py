"""Vision Transformer (ViT) with block connections.

``ConnectedVisionTransformer`` is timm's ``VisionTransformer`` with its block list rewired by ``densezoo.connect``:
same modules, parameter names and API, plus one ``connection`` module spanning all blocks; a plain timm checkpoint
loads into every variant. Registered: ``vit_{tiny,small,base}_patch16_224_<kind>`` and
``vit_small_patch16_384_<kind>`` for ``dwa``, ``mudd``, ``rir``, ``dense``, ``value_residual`` and ``laurel``.

Paper: An Image is Worth 16x16 Words (https://arxiv.org/abs/2010.11929).
Design notes: docs/backbones.md.
"""
from typing import Optional, Tuple

import torch
from torch import nn

from timm.layers import Attention
from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models.vision_transformer import Block, VisionTransformer, checkpoint_filter_fn

from densezoo.models._common import check_image_input, connected_cfgs, register_models
from densezoo.models.connect import (ConnectedIsotropic, StageFamily, model_stage, register_family,
                                     run_maybe_checkpointed)
from densezoo.models.split_streams import vit_block_streams, vit_block_values, vit_forward_intermediates

__all__ = ['ConnectedVisionTransformer', 'checkpoint_filter_fn']


class _MaskedRunner:
    """A runner that drives the model's blocks with an attention mask (or causal masking) bound."""

    def __init__(self, model: 'ConnectedVisionTransformer', attn_mask: Optional[torch.Tensor], is_causal):
        self.model, self.attn_mask, self.is_causal = model, attn_mask, is_causal

    def run_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        return self.model.run_block(index, x, self.attn_mask, self.is_causal)

    def run_block_streams(self, index: int, q, k, v, r) -> torch.Tensor:
        return self.model.run_block_streams(index, q, k, v, r, self.attn_mask, self.is_causal)

    def run_block_values(self, index: int, x, first_values, weight) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.model.run_block_values(index, x, first_values, weight, self.attn_mask, self.is_causal)


class ConnectedVisionTransformer(ConnectedIsotropic, VisionTransformer):
    """timm ``VisionTransformer`` whose blocks run through a connection (``self.connection``).

    Args:
        connection: Connection kind (``'dwa'``, ``'mudd'``, ``'rir'``, ``'dense'``, ``'value_residual'``,
            ``'laurel'``, ...).
        connection_args: Options of the connection (see ``densezoo.connection_options``).
        **kwargs: ``VisionTransformer`` arguments; unknown ones raise ``TypeError``.

    ``forward_intermediates`` returns, after block i, the tokens the connection passes on to block i + 1 (for
    ``mudd``, the residual stream); the last one is the body output that ``forward_features`` normalises.
    """

    def install_input_checks(self) -> None:
        self.patch_embed.register_forward_pre_hook(check_image_input)

    # runner protocol (densezoo.layers.connections) ------------------------------------------------------------

    def run_block(self, index: int, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                  is_causal: bool = False) -> torch.Tensor:
        """Run block ``index`` on the tokens ``x``."""
        masked = () if attn_mask is None and not is_causal else (attn_mask, is_causal)
        return run_maybe_checkpointed(self.grad_checkpointing, self.blocks[index], x, *masked)

    def run_block_streams(self, index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, r: torch.Tensor,
                          attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False) -> torch.Tensor:
        """Run block ``index`` with separate query, key and value inputs and residual stream
        (``vit_block_streams``)."""
        return run_maybe_checkpointed(
            self.grad_checkpointing, vit_block_streams, self.blocks[index], q, k, v, r, attn_mask, is_causal)

    def run_block_values(self, index: int, x: torch.Tensor, first_values: Optional[torch.Tensor],
                         weight: Optional[torch.Tensor], attn_mask: Optional[torch.Tensor] = None,
                         is_causal: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """Run block ``index`` mixing ``first_values`` into its attention values (``vit_block_values``)."""
        return run_maybe_checkpointed(self.grad_checkpointing, vit_block_values, self.blocks[index], x, first_values,
                                      weight, attn_mask, is_causal)

    def masked_runner(self, attn_mask: Optional[torch.Tensor], is_causal: bool) -> Optional[_MaskedRunner]:
        """The runner of a forward with ``attn_mask`` / ``is_causal`` bound (None: the model itself)."""
        if attn_mask is None and not is_causal:
            return None  # the model itself
        return _MaskedRunner(self, attn_mask, is_causal)

    # timm API ---------------------------------------------------------------------------------------------------

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens entering the first block: patch embedding, prefix tokens, position embedding, pre-norm."""
        return self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))

    def forward_features(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                         is_causal: bool = False) -> torch.Tensor:
        """Normalised tokens (B, prefix + patches, D) after the last block."""
        return self.norm(self.run_blocks(self.embed(x), self.masked_runner(attn_mask, is_causal)))

    #: timm's ``forward_intermediates`` (same signature), with the blocks run through the connection
    forward_intermediates = vit_forward_intermediates


def _standard_blocks(model: nn.Module) -> frozenset:
    """'streams' and 'values' when every block is timm's pre-norm ``Block`` with the standard ``Attention``."""
    standard = all(type(block) is Block and type(block.attn) is Attention for block in model.blocks)
    return frozenset({'streams', 'values'}) if standard else frozenset()


#: options ``connect`` uses for a ViT unless given: MUDD's four streams, and value residual starting as the plain
#: network (learned lambda from 0 instead of ResFormer's fixed 0.5)
FAMILY_DEFAULTS = {'mudd': dict(num_streams=4), 'value_residual': dict(lambda_init=0., learnable=True)}

register_family(StageFamily(
    name='ViT', connected_models={VisionTransformer: ConnectedVisionTransformer}, stages=model_stage('blocks'),
    stage_dim=lambda model: model.embed_dim, layout='NLC', default_options=FAMILY_DEFAULTS,
    model_capabilities=_standard_blocks))


def _create_vit(variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    out_indices = kwargs.pop('out_indices', 3)
    return build_model_with_cfg(
        ConnectedVisionTransformer, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs)


#: timm base architecture -> its arguments (as in timm's entrypoints; image size from the pretrained cfg)
BASE_ARCHS = {
    'vit_tiny_patch16_224': dict(patch_size=16, embed_dim=192, depth=12, num_heads=3),
    'vit_small_patch16_224': dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
    'vit_base_patch16_224': dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    'vit_small_patch16_384': dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
}

#: registered connection -> options of the registered variants
CONNECTIONS = {
    'dwa': {},
    'mudd': FAMILY_DEFAULTS['mudd'],
    'rir': dict(group_size=4, long_skip=True),
    'dense': dict(growth=32),
    'value_residual': FAMILY_DEFAULTS['value_residual'],
    'laurel': dict(rank=16, variant='rw+lr'),
}

default_cfgs = generate_default_cfgs(connected_cfgs(BASE_ARCHS, CONNECTIONS))

register_models(__name__, _create_vit, [
    'vit_tiny_patch16_224_dwa', 'vit_tiny_patch16_224_mudd', 'vit_tiny_patch16_224_rir', 'vit_tiny_patch16_224_dense',
    'vit_tiny_patch16_224_value_residual', 'vit_tiny_patch16_224_laurel',
    'vit_small_patch16_224_dwa', 'vit_small_patch16_224_mudd', 'vit_small_patch16_224_rir',
    'vit_small_patch16_224_dense', 'vit_small_patch16_224_value_residual', 'vit_small_patch16_224_laurel',
    'vit_base_patch16_224_dwa', 'vit_base_patch16_224_mudd', 'vit_base_patch16_224_rir', 'vit_base_patch16_224_dense',
    'vit_base_patch16_224_value_residual', 'vit_base_patch16_224_laurel',
    'vit_small_patch16_384_dwa', 'vit_small_patch16_384_mudd', 'vit_small_patch16_384_rir',
    'vit_small_patch16_384_dense', 'vit_small_patch16_384_value_residual', 'vit_small_patch16_384_laurel',
], BASE_ARCHS, CONNECTIONS)
