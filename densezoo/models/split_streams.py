"""timm block and attention forwards rewritten for separate query / key / value / residual inputs (MUDD's streams).

They mirror timm 1.0.31: ``timm.layers.Attention`` and ``timm.models.vision_transformer.Block`` (``split_attention``,
``vit_block_streams``, ``vit_block_values``), ``VisionTransformer.forward_intermediates``
(``vit_forward_intermediates``, for a connected ViT), and ``timm.models.pvt_v2.Attention`` / ``Block``
(``spatial_reduction_attention``, ``pvt_block_streams``). Given one tensor for every input they compute what timm's
modules compute; tests/models/test_split_streams.py guards that parity, so a timm update that changes one of these
forwards fails there first.
"""
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from timm.layers import Attention, maybe_add_mask, resolve_self_attn_mask
from timm.models._features import feature_take_indices  # timm exports it from no public module
from timm.models.pvt_v2 import Attention as SpatialReductionAttention
from timm.models.pvt_v2 import MlpWithDepthwiseConv
from timm.models.vision_transformer import Block

__all__ = ['split_attention', 'vit_block_streams', 'vit_block_values', 'vit_forward_intermediates',
           'spatial_reduction_attention', 'pvt_block_streams']


# ---------------------------------------------------------------------------------------------------------------
# ViT: timm.layers.Attention and timm.models.vision_transformer.Block

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


def vit_block_streams(
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


def vit_block_values(
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


def vit_forward_intermediates(
        model: nn.Module,
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

    ``model`` is a connected ViT (``ConnectedVisionTransformer``, whose ``forward_intermediates`` this is): its
    blocks run through ``model.block_states``, so an intermediate is the state the connection passes on.

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
    take_indices, max_index = feature_take_indices(len(model.blocks), indices)
    image_size = x.shape[-2:]
    x = model.embed(x)
    stop = max_index + 1 if stop_early else len(model.blocks)
    x, states = model.block_states(x, take_indices, stop, model.masked_runner(attn_mask, is_causal))

    prefix = model.num_prefix_tokens
    if norm:
        states = [model.norm(state) for state in states]
    prefix_tokens = [state[:, :prefix] for state in states] if prefix else None
    intermediates = [state[:, prefix:] for state in states]
    if output_fmt == 'NCHW':
        grid = model.patch_embed.dynamic_feat_size(tuple(image_size))
        intermediates = [y.reshape(y.shape[0], *grid, -1).permute(0, 3, 1, 2).contiguous() for y in intermediates]

    if output_dict:
        result = {'image_intermediates': intermediates}
        if return_prefix_tokens and prefix_tokens is not None:
            result['image_intermediates_prefix'] = prefix_tokens
        if not intermediates_only:
            result['image_features'] = model.norm(x)
        return result
    if return_prefix_tokens and prefix_tokens is not None:
        intermediates = list(zip(intermediates, prefix_tokens))
    if intermediates_only:
        return intermediates
    return model.norm(x), intermediates


# ---------------------------------------------------------------------------------------------------------------
# PVT (v1 and v2): timm.models.pvt_v2.Attention and Block

def _key_value_tokens(attn: SpatialReductionAttention, x: torch.Tensor, feat_size: Tuple[int, int]) -> torch.Tensor:
    """The tokens ``attn`` projects to keys and values: x after spatial reduction (strided conv + norm, or for
    linear SRA pool + 1x1 conv + norm + GELU), or x itself when the stage does not reduce."""
    if attn.sr is None:
        return x
    B, N, C = x.shape
    x = x.permute(0, 2, 1).reshape(B, C, feat_size[0], feat_size[1])
    if attn.pool is not None:
        x = attn.pool(x)
    x = attn.norm(attn.sr(x).reshape(B, C, -1).permute(0, 2, 1))
    return x if attn.act is None else attn.act(x)


def spatial_reduction_attention(
        attn: SpatialReductionAttention,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        feat_size: Tuple[int, int],
) -> torch.Tensor:
    """timm's PVT ``Attention`` with separate (normalised) query, key and value inputs of shape (B, N, C).

    Queries come from ``q``; keys from ``k`` and values from ``v``, each reduced by the attention's own spatial
    reduction and projected by its half of the ``kv`` weight. With q = k = v this is ``attn(q, feat_size)``.
    """
    B, N, C = q.shape
    kv_weight, kv_bias = attn.kv.weight, attn.kv.bias
    k = F.linear(_key_value_tokens(attn, k, feat_size), kv_weight[:C], None if kv_bias is None else kv_bias[:C])
    v = F.linear(_key_value_tokens(attn, v, feat_size), kv_weight[C:], None if kv_bias is None else kv_bias[C:])
    q = attn.q(q).reshape(B, N, attn.num_heads, -1).permute(0, 2, 1, 3)
    k = k.reshape(B, -1, attn.num_heads, attn.head_dim).permute(0, 2, 1, 3)
    v = v.reshape(B, -1, attn.num_heads, attn.head_dim).permute(0, 2, 1, 3)
    if attn.fused_attn:
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.)
    else:
        scores = (q * attn.scale) @ k.transpose(-2, -1)
        x = attn.attn_drop(scores.softmax(dim=-1)) @ v
    x = x.transpose(1, 2).reshape(B, N, C)
    return attn.proj_drop(attn.proj(x))


def pvt_block_streams(
        block: nn.Module,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        r: torch.Tensor,
        feat_size: Tuple[int, int],
) -> torch.Tensor:
    """A PVT block (timm's PVT v2 ``Block`` or densezoo's ``PvtBlock``) on MUDD's four input streams.

    The query, key and value streams each pass ``norm1`` into their part of the attention, the residual stream
    receives the attention output, and the MLP follows as in the block: h = r + Attn(q, k, v), out = h + MLP(h).
    With q = k = v = r this is ``block(r, feat_size)``.
    """
    norm = block.norm1
    x = r + block.drop_path1(spatial_reduction_attention(block.attn, norm(q), norm(k), norm(v), feat_size))
    hidden = block.norm2(x)
    if isinstance(block.mlp, MlpWithDepthwiseConv):
        hidden = block.mlp(hidden, feat_size)
    else:
        hidden = block.mlp(hidden)
    return x + block.drop_path2(hidden)
