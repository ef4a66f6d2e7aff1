"""Vision Transformer (ViT) with block connections.

``ConnectedVisionTransformer`` is timm's ``VisionTransformer`` with its block list rewired by ``densezoo.connect``:
same modules, parameter names and API, plus one ``connection`` module spanning all blocks; a plain timm checkpoint
loads into every variant. Registered: ``vit_{tiny,small,base}_patch16_224_<kind>`` and
``vit_small_patch16_384_<kind>`` for ``dwa``, ``mudd``, ``rir``, ``dense``, ``value_residual`` and ``laurel``.

Paper: An Image is Worth 16x16 Words (https://arxiv.org/abs/2010.11929).
Design notes: docs/backbones.md.
"""
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from timm.layers import Attention, maybe_add_mask, resolve_self_attn_mask
from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import Block, VisionTransformer, checkpoint_filter_fn

from densezoo.models._common import check_image_input, connected_cfgs, register_connected
from densezoo.models.connect import ConnectedIsotropic, connect, register_isotropic_family, run_maybe_checkpointed

__all__ = ['ConnectedVisionTransformer', 'split_attention', 'block_streams', 'block_values', 'checkpoint_filter_fn']


def _project(attn: Attention, x: torch.Tensor, part: int) -> torch.Tensor:
    """Query (0), key (1) or value (2) projection of ``x``: that slice of timm's fused ``qkv`` weight."""
    rows = slice(part * attn.attn_dim, (part + 1) * attn.attn_dim)
    bias = attn.qkv.bias[rows] if attn.qkv.bias is not None else None
    return F.linear(x, attn.qkv.weight[rows], bias)


def _heads(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """(B, N, heads * head_dim) -> (B, heads, N, head_dim)."""
    return x.unflatten(-1, (attn.num_heads, attn.head_dim)).transpose(1, 2)


def split_attention(
        attn: Attention,
        q_in: torch.Tensor,
        k_in: torch.Tensor,
        v_in: torch.Tensor,
        first_values: Optional[torch.Tensor] = None,
        weight: Optional[torch.Tensor] = None,
        attn_mask: Optional[torch.Tensor] = None,
        is_causal: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """timm ``Attention`` with its query, key and value inputs given separately (each already normalised).

    With ``first_values`` the values become ``lerp(V, first_values, weight)`` (ResFormer's value residual).
    Returns the attention output and this block's own values V (B, N, heads * head_dim), before any mixing. When
    the three inputs are one tensor, the fused ``qkv`` projection runs once, exactly as in timm; otherwise each
    input meets its slice of the fused weight, so the parameters keep timm's names and the cost stays one
    projection's. A gated attention takes its gate from the query input.
    """
    if q_in is k_in and k_in is v_in:
        q, k, v = attn.qkv(q_in).chunk(3, dim=-1)
    else:
        q, k, v = _project(attn, q_in, 0), _project(attn, k_in, 1), _project(attn, v_in, 2)
    values = v
    if first_values is not None:
        v = torch.lerp(v, first_values.to(v.dtype), weight.to(v.dtype))
    q, k, v = attn.q_norm(_heads(attn, q)), attn.k_norm(_heads(attn, k)), _heads(attn, v)
    if attn.fused_attn:
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=attn.attn_drop.p if attn.training else 0., is_causal=is_causal)
    else:
        scores = (q * attn.scale) @ k.transpose(-2, -1)
        scores = maybe_add_mask(scores, resolve_self_attn_mask(q.shape[-2], scores, attn_mask, is_causal))
        out = attn.attn_drop(scores.softmax(dim=-1)) @ v
    out = attn.norm(out.transpose(1, 2).flatten(2))
    if attn.gate is not None:
        out = out * attn.gate(q_in).sigmoid()
    return attn.proj_drop(attn.proj(out)), values


def _finish_block(block: Block, residual: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
    """The rest of a timm ``Block`` after attention: attention residual, then the MLP residual."""
    x = residual + block.drop_path1(block.ls1(attn_out))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def block_streams(
        block: Block,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        r: torch.Tensor,
        attn_mask: Optional[torch.Tensor] = None,
        is_causal: bool = False,
) -> torch.Tensor:
    """A timm ViT ``Block`` on four streams: ``norm1`` of q, k and v feed the attention's query, key and value
    inputs, and the attention output is added to the residual stream r. Equals ``block(x)`` when all are x."""
    norm = block.norm1
    attn_out, _ = split_attention(block.attn, norm(q), norm(k), norm(v), attn_mask=attn_mask, is_causal=is_causal)
    return _finish_block(block, r, attn_out)


def block_values(
        block: Block,
        x: torch.Tensor,
        first_values: Optional[torch.Tensor],
        weight: Optional[torch.Tensor],
        attn_mask: Optional[torch.Tensor] = None,
        is_causal: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """A timm ViT ``Block`` whose attention values are mixed with ``first_values`` (none for the first block);
    returns the block output and the block's own values."""
    h = block.norm1(x)
    attn_out, values = split_attention(block.attn, h, h, h, first_values, weight, attn_mask, is_causal)
    return _finish_block(block, x, attn_out), values


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

    def __init__(self, connection: str = 'dwa', connection_args: Optional[Dict[str, object]] = None, **kwargs):
        super().__init__(**kwargs)
        connect(self, connection, **(connection_args or {}))
        self.patch_embed.register_forward_pre_hook(check_image_input)

    # runner protocol (densezoo.layers.connections) ------------------------------------------------------------

    def run_block(self, index: int, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                  is_causal: bool = False) -> torch.Tensor:
        """Run block ``index`` on the tokens ``x``."""
        masked = () if attn_mask is None and not is_causal else (attn_mask, is_causal)
        return run_maybe_checkpointed(self.grad_checkpointing, self.blocks[index], x, *masked)

    def run_block_streams(self, index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, r: torch.Tensor,
                          attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False) -> torch.Tensor:
        """Run block ``index`` with separate query, key and value inputs and residual stream (``block_streams``)."""
        return run_maybe_checkpointed(
            self.grad_checkpointing, block_streams, self.blocks[index], q, k, v, r, attn_mask, is_causal)

    def run_block_values(self, index: int, x: torch.Tensor, first_values: Optional[torch.Tensor],
                         weight: Optional[torch.Tensor], attn_mask: Optional[torch.Tensor] = None,
                         is_causal: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """Run block ``index`` mixing ``first_values`` into its attention values (``block_values``)."""
        return run_maybe_checkpointed(
            self.grad_checkpointing, block_values, self.blocks[index], x, first_values, weight, attn_mask, is_causal)

    def _runner(self, attn_mask: Optional[torch.Tensor], is_causal: bool) -> Optional[_MaskedRunner]:
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
        return self.norm(self.run_blocks(self.embed(x), self._runner(attn_mask, is_causal)))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            return_prefix_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
            output_dict: bool = False,
            attn_mask: Optional[torch.Tensor] = None,
            is_causal: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]], Dict[str, Any]]:
        """Final features and the tokens after the selected blocks, as timm's ``VisionTransformer``.

        Args:
            x: Input images (B, C, H, W).
            indices: Last n blocks if an int, all if None, else the block indices to take.
            return_prefix_tokens: Return (patch features, prefix tokens) pairs.
            norm: Apply the final norm to the intermediates.
            stop_early: Stop after the last block needed (the final features then come from that block).
            output_fmt: ``'NCHW'`` maps (B, D, H/p, W/p) or ``'NLC'`` tokens (B, N, D).
            intermediates_only: Return only the intermediates.
            output_dict: Return a dict with 'image_features', 'image_intermediates' (and
                'image_intermediates_prefix' with ``return_prefix_tokens``).
            attn_mask: Optional attention mask for every block.
            is_causal: Causal (autoregressive) masking in every block.
        """
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"output_fmt={output_fmt!r} is not allowed; choose 'NCHW' or 'NLC'")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        image_size = x.shape[-2:]
        x = self.embed(x)
        stop = max_index + 1 if stop_early else len(self.blocks)
        x, states = self.block_states(x, take_indices, stop, self._runner(attn_mask, is_causal))

        prefix = self.num_prefix_tokens
        if norm:
            states = [self.norm(state) for state in states]
        prefix_tokens = [state[:, :prefix] for state in states] if prefix else None
        intermediates = [state[:, prefix:] for state in states]
        if output_fmt == 'NCHW':
            grid = self.patch_embed.dynamic_feat_size(tuple(image_size))
            intermediates = [y.reshape(y.shape[0], *grid, -1).permute(0, 3, 1, 2).contiguous()
                             for y in intermediates]

        if output_dict:
            result = {'image_intermediates': intermediates}
            if return_prefix_tokens and prefix_tokens is not None:
                result['image_intermediates_prefix'] = prefix_tokens
            if not intermediates_only:
                result['image_features'] = self.norm(x)
            return result
        if return_prefix_tokens and prefix_tokens is not None:
            intermediates = list(zip(intermediates, prefix_tokens))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates


def _standard_blocks(model: nn.Module) -> frozenset:
    """'streams' and 'values' when every block is timm's pre-norm ``Block`` with the standard ``Attention``."""
    standard = all(type(block) is Block and type(block.attn) is Attention for block in model.blocks)
    return frozenset({'streams', 'values'}) if standard else frozenset()


#: options ``connect`` uses for a ViT unless given: MUDD's four streams, and value residual starting as the plain
#: network (learned lambda from 0 instead of ResFormer's fixed 0.5)
FAMILY_DEFAULTS = {'mudd': dict(num_streams=4), 'value_residual': dict(lambda_init=0., learnable=True)}

register_isotropic_family(
    'ViT', VisionTransformer, ConnectedVisionTransformer, default_options=FAMILY_DEFAULTS,
    model_capabilities=_standard_blocks)


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

for _arch, _args in BASE_ARCHS.items():
    for _kind, _options in CONNECTIONS.items():
        register_connected(__name__, _arch, _kind, _args, _options, _create_vit)
