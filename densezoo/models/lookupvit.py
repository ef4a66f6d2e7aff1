"""LookupViT: a ViT whose heavy layers run on a few compressed tokens, with cheap layers on the many lookup tokens.

Paper: "LookupViT: Compressing visual information to a limited number of tokens", Koner, Jain, Jain, Tresp, Paul,
ECCV 2024 (https://arxiv.org/abs/2407.12753). No official code exists; this implementation follows the paper's
description. Entry points: ``LookupViT``, ``LookupViTBlock``, ``ConnectedLookupViT`` and the registered
``lookupvit_{tiny,small,base}_patch16_224`` models and their variants (no pretrained weights exist).

Design notes, defaults and the registered variants: docs/lookupvit.md.
"""
import math
from typing import Dict, List, Optional, Set, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.jit import Final

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (DropPath, LayerNorm, LayerScale, Mlp, PatchEmbed, calculate_drop_path_rates, get_act_layer,
                         get_device_dtype, get_norm_layer, resample_abs_pos_embed, resample_patch_embed, trunc_normal_,
                         use_fused_attn)
from timm.models import build_model_with_cfg, generate_default_cfgs, named_apply, resolve_pretrained_cfg
from timm.models._features import feature_take_indices  # timm exports it from no public module
from timm.models.vision_transformer import Block, get_init_weights_vit

from densezoo.models._common import check_image_input, register_models, update_model_args, update_model_input_size
from densezoo.models.connect import (ConnectedIsotropic, StageFamily, model_stage, register_family,
                                     run_maybe_checkpointed)

__all__ = ['LookupViT', 'LookupViTBlock', 'BidirectionalCrossAttention', 'ConnectedLookupViT', 'compress_tokens',
           'checkpoint_filter_fn']

GLOBAL_POOLS = ('', 'avg', 'avg_compressed', 'avg_both')
COMPRESS_RESIZES = ('bilinear_aa', 'bilinear', 'avgpool')
REVERSE_ATTENTIONS = ('logits', 'weights')


def _choice(name: str, value: str, allowed: Tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f'{name}={value!r} is not supported; choose one of {", ".join(map(repr, allowed))}')
    return value


def _pair(name: str, value) -> Tuple[int, int]:
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise ValueError(f'{name}={value!r} is not allowed; give a positive int or a pair of positive ints '
                         f'(height, width)')
    return pair


def _check_grid_fits(grid: Tuple[int, int], lookup_grid: Tuple[int, int], where: str) -> None:
    if grid[0] > lookup_grid[0] or grid[1] > lookup_grid[1]:
        raise ValueError(f'compressed_grid {grid[0]}x{grid[1]} is larger than the {lookup_grid[0]}x{lookup_grid[1]} '
                         f'grid of lookup tokens ({where}); choose a compressed grid of at most '
                         f'{lookup_grid[0]}x{lookup_grid[1]} or a larger image')


def compress_tokens(lookup_map: torch.Tensor, grid: Tuple[int, int], mode: str = 'bilinear_aa') -> torch.Tensor:
    """Initial compressed tokens (B, h * w, D): the lookup-token map (B, H, W, D) resized to ``grid`` = (h, w)."""
    x = lookup_map.permute(0, 3, 1, 2)
    low_precision = not isinstance(x, torch.fx.Proxy) and x.dtype in (torch.float16, torch.bfloat16)
    if low_precision:  # antialiased resizing has no half-precision CPU kernel; the map is small
        x = x.float()
    if mode == 'avgpool':
        x = F.adaptive_avg_pool2d(x, grid)
    else:
        x = F.interpolate(x, size=grid, mode='bilinear', align_corners=False, antialias=mode == 'bilinear_aa')
    if low_precision:
        x = x.to(lookup_map.dtype)
    return x.flatten(2).transpose(1, 2)


class BidirectionalCrossAttention(nn.Module):
    """Multi-head bidirectional cross-attention between compressed tokens z (M) and lookup tokens x (N).

    ``gather(z, x)``: z queries x (softmax over the N lookup tokens); returns the update of z and the per-head
    queries and keys, which ``infuse(z, q, k)`` reuses in the reverse direction: x takes values of z with the
    transposed gathering attention (see ``reverse_attention`` in the module docstring).
    """
    fused_attn: Final[bool]

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            qkv_bias: bool = True,
            reverse_attention: str = 'logits',
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if dim % num_heads:
            raise ValueError(f'embed_dim={dim} is not divisible by num_heads={num_heads}')
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.reverse_attention = _choice('reverse_attention', reverse_attention, REVERSE_ATTENTIONS)
        self.fused_attn = use_fused_attn()
        self.q = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias, **dd)
        self.proj = nn.Linear(dim, dim, **dd)
        self.reverse_v = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.reverse_proj = nn.Linear(dim, dim, **dd)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], t.shape[1], -1, self.head_dim).transpose(1, 2)

    @staticmethod
    def _merge_heads(t: torch.Tensor) -> torch.Tensor:
        return t.transpose(1, 2).flatten(2)

    def gather_logits(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Scaled logits S (B, heads, M, N) of the compressed queries against the lookup keys."""
        return (q * self.scale) @ k.transpose(-2, -1)

    def reverse_weights(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Attention (B, heads, N, M) of the lookup tokens over the compressed tokens, from the gathering logits."""
        logits = self.gather_logits(q, k)
        if self.reverse_attention == 'logits':
            return logits.transpose(-2, -1).softmax(dim=-1)
        weights = logits.softmax(dim=-1).transpose(-2, -1)
        return weights / weights.sum(dim=-1, keepdim=True)

    def gather(self, z: torch.Tensor, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Update of the (normalised) compressed tokens z from the (normalised) lookup tokens x, and q, k."""
        q = self._split_heads(self.q(z))
        k, v = self._split_heads(self.kv(x)).chunk(2, dim=1)
        if self.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = self.gather_logits(q, k).softmax(dim=-1) @ v
        return self.proj(self._merge_heads(out)), q, k

    def infuse(self, z: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Update of the lookup tokens from the (normalised, refined) compressed tokens z, reusing ``gather``'s q, k."""
        v = self._split_heads(self.reverse_v(z))
        if self.fused_attn and self.reverse_attention == 'logits':
            out = F.scaled_dot_product_attention(k, q, v)  # softmax over M of k q^T / sqrt(d) = softmax_M(S^T)
        else:
            out = self.reverse_weights(q, k) @ v
        return self.reverse_proj(self._merge_heads(out))


class LookupViTBlock(nn.Module):
    """One LookupViT block on the token tensor [compressed; lookup] (B, M + N, D); ``forward(x, num_compressed)``."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            mlp_ratio: float = 4.,
            lookup_mlp_ratio: float = 0.5,
            qkv_bias: bool = True,
            reverse_attention: str = 'logits',
            init_values: Optional[float] = None,
            drop_path: float = 0.,
            act_layer=nn.GELU,
            norm_layer=LayerNorm,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)

        def layer_scale():
            return LayerScale(dim, init_values, **dd) if init_values else nn.Identity()

        # 1. information gathering (lookup -> compressed)
        self.gather_norm_compressed = norm_layer(dim, **dd)
        self.gather_norm_lookup = norm_layer(dim, **dd)
        self.cross_attn = BidirectionalCrossAttention(dim, num_heads, qkv_bias, reverse_attention, **dd)
        self.gather_ls = layer_scale()
        self.gather_drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        # 2. representation refinement: a ViT block on the compressed tokens
        self.refine = Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, init_values=init_values,
                            drop_path=drop_path, act_layer=act_layer, norm_layer=norm_layer, **dd)
        # 3. global context infusion (compressed -> lookup), reusing the gathering attention
        self.infuse_norm = norm_layer(dim, **dd)
        self.infuse_ls = layer_scale()
        self.infuse_drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        # 4. the cheap MLP of the lookup tokens
        self.mlp_norm = norm_layer(dim, **dd)
        self.mlp = Mlp(dim, int(dim * lookup_mlp_ratio), act_layer=act_layer, **dd)
        self.mlp_ls = layer_scale()
        self.mlp_drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor, num_compressed: int) -> torch.Tensor:
        z, x = x[:, :num_compressed], x[:, num_compressed:]
        gathered, q, k = self.cross_attn.gather(self.gather_norm_compressed(z), self.gather_norm_lookup(x))
        z = z + self.gather_drop_path(self.gather_ls(gathered))
        z = self.refine(z)
        x = x + self.infuse_drop_path(self.infuse_ls(self.cross_attn.infuse(self.infuse_norm(z), q, k)))
        x = x + self.mlp_drop_path(self.mlp_ls(self.mlp(self.mlp_norm(x))))
        return torch.cat([z, x], dim=1)


class LookupViT(nn.Module):
    """LookupViT (see the module docstring for the architecture and the choices made).

    Args:
        img_size: Input image size.
        patch_size: Patch size of the lookup tokens.
        in_chans: Number of image channels.
        num_classes: Number of classes (0: no classifier).
        global_pool: ``'avg'`` (lookup tokens), ``'avg_compressed'``, ``'avg_both'`` or ``''`` (no pooling).
        embed_dim: Token width D.
        depth: Number of LookupViT blocks.
        num_heads: Attention heads (self-attention and cross-attention).
        mlp_ratio: MLP ratio of the compressed tokens' ViT block.
        lookup_mlp_ratio: MLP ratio of the lookup tokens' cheap MLP.
        compressed_grid: Grid (h, w) of compressed tokens, or one int for a square grid.
        compress_resize: How the compressed tokens are made from the lookup-token map.
        reverse_attention: How the reverse direction reuses the gathering attention (``'logits'``, ``'weights'``).
        qkv_bias: Biases on the query, key and value projections.
        init_values: LayerScale initial value on every branch (None: no LayerScale).
        strict_img_size: Require inputs of exactly ``img_size``; False accepts any size divisible by the patch.
        dynamic_img_size: Same as ``strict_img_size=False`` (timm ViT's name).
        dynamic_img_pad: Pad inputs to a multiple of the patch size.
        drop_rate: Dropout before the classifier.
        drop_path_rate: Stochastic depth, increasing linearly over the blocks.
        weight_init: timm ViT init mode (``''``, ``'jax'``, ``'jax_nlhb'``, ``'moco'``) or ``'skip'``.
        norm_layer: Normalisation layer (default LayerNorm, eps 1e-6).
        act_layer: MLP activation (default GELU).
    """
    dynamic_img_size: Final[bool]

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: Union[int, Tuple[int, int]] = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: int = 768,
            depth: int = 12,
            num_heads: int = 12,
            mlp_ratio: float = 4.,
            lookup_mlp_ratio: float = 0.5,
            compressed_grid: Union[int, Tuple[int, int]] = 5,
            compress_resize: str = 'bilinear_aa',
            reverse_attention: str = 'logits',
            qkv_bias: bool = True,
            init_values: Optional[float] = None,
            strict_img_size: bool = True,
            dynamic_img_size: bool = False,
            dynamic_img_pad: bool = False,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            weight_init: str = '',
            norm_layer=None,
            act_layer=None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.global_pool = _choice('global_pool', global_pool, GLOBAL_POOLS)
        self.compress_resize = _choice('compress_resize', compress_resize, COMPRESS_RESIZES)
        _choice('reverse_attention', reverse_attention, REVERSE_ATTENTIONS)
        _choice('weight_init', weight_init, ('', 'jax', 'jax_nlhb', 'moco', 'skip'))
        if embed_dim % num_heads:
            raise ValueError(f'embed_dim={embed_dim} is not divisible by num_heads={num_heads}')
        norm_layer = get_norm_layer(norm_layer) or LayerNorm
        act_layer = get_act_layer(act_layer) or nn.GELU
        img_size, patch = _pair('img_size', img_size), _pair('patch_size', patch_size)
        if not dynamic_img_pad and (img_size[0] % patch[0] or img_size[1] % patch[1]):
            raise ValueError(f'img_size {img_size[0]}x{img_size[1]} is not divisible by the patch size '
                             f'{patch[0]}x{patch[1]}; use a multiple of the patch size or dynamic_img_pad=True')

        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.dynamic_img_size = dynamic_img_size or not strict_img_size
        self.grad_checkpointing = False
        self.patch_embed = PatchEmbed(
            img_size=img_size, patch_size=patch, in_chans=in_chans, embed_dim=embed_dim, output_fmt='NHWC',
            strict_img_size=not self.dynamic_img_size, dynamic_img_pad=dynamic_img_pad, **dd)
        self.patch_embed.register_forward_pre_hook(check_image_input)
        self.pos_embed = nn.Parameter(torch.empty(1, self.patch_embed.num_patches, embed_dim, **dd))
        self.compressed_grid = (1, 1)
        self.set_compressed_grid(compressed_grid)

        dpr = calculate_drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.Sequential(*[
            LookupViTBlock(embed_dim, num_heads, mlp_ratio=mlp_ratio, lookup_mlp_ratio=lookup_mlp_ratio,
                           qkv_bias=qkv_bias, reverse_attention=reverse_attention, init_values=init_values,
                           drop_path=dpr[i], act_layer=act_layer, norm_layer=norm_layer, **dd)
            for i in range(depth)])
        reduction = self.patch_embed.feat_ratio()
        self.feature_info = [dict(module=f'blocks.{i}', num_chs=embed_dim, reduction=reduction)
                             for i in range(depth)]
        self.norm = norm_layer(embed_dim, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()

        self.weight_init_mode = '' if weight_init == 'skip' else weight_init
        if weight_init != 'skip':
            self.init_weights(needs_reset=False)

    def __prepare_scriptable__(self):
        raise RuntimeError('LookupViT cannot be compiled by TorchScript (deprecated in PyTorch); use torch.compile '
                           'or torch.export instead')

    # ---------------------------------------------------------------------------------------------------------
    # set-up

    def init_weights(self, mode: str = '', needs_reset: bool = True) -> None:
        """timm ViT initialisation (truncated normal 0.02 for linear layers and the position embedding)."""
        mode = mode or self.weight_init_mode
        head_bias = -math.log(self.num_classes) if 'nlhb' in mode and self.num_classes > 0 else 0.
        trunc_normal_(self.pos_embed, std=.02)
        named_apply(get_init_weights_vit(mode, head_bias, needs_reset=needs_reset), self)

    @property
    def num_compressed(self) -> int:
        """Number of compressed tokens M (they come first in the token tensor)."""
        return self.compressed_grid[0] * self.compressed_grid[1]

    def set_compressed_grid(self, compressed_grid: Union[int, Tuple[int, int]]) -> None:
        """Run with a compressed grid of ``compressed_grid`` tokens from now on (no parameter depends on it)."""
        grid = _pair('compressed_grid', compressed_grid)
        if not self.dynamic_img_size:
            img = self.patch_embed.img_size
            _check_grid_fits(grid, self.patch_embed.grid_size, f'image {img[0]}x{img[1]}, patch '
                                                                f'{self.patch_embed.patch_size[0]}')
        self.compressed_grid = grid
        update_model_args(self, compressed_grid=grid)

    def set_input_size(
            self,
            img_size: Optional[Union[int, Tuple[int, int]]] = None,
            patch_size: Optional[Union[int, Tuple[int, int]]] = None,
            compressed_grid: Optional[Union[int, Tuple[int, int]]] = None,
    ) -> None:
        """Change the input size (resampling the position embedding), the patch size and/or the compressed grid."""
        if compressed_grid is not None:
            _pair('compressed_grid', compressed_grid)
        prev_grid = self.patch_embed.grid_size
        if img_size is not None or patch_size is not None:
            new_img = _pair('img_size', img_size) if img_size is not None else self.patch_embed.img_size
            new_patch = _pair('patch_size', patch_size) if patch_size is not None else self.patch_embed.patch_size
            if not self.patch_embed.dynamic_img_pad and (new_img[0] % new_patch[0] or new_img[1] % new_patch[1]):
                raise ValueError(f'img_size {new_img[0]}x{new_img[1]} is not divisible by the patch size '
                                 f'{new_patch[0]}x{new_patch[1]}; use a multiple of the patch size')
            grid = compressed_grid if compressed_grid is not None else self.compressed_grid
            if not self.dynamic_img_size:
                _check_grid_fits(_pair('compressed_grid', grid), (new_img[0] // new_patch[0],
                                                                  new_img[1] // new_patch[1]),
                                 f'image {new_img[0]}x{new_img[1]}, patch {new_patch[0]}')
            self.patch_embed.set_input_size(img_size=new_img, patch_size=new_patch)
            if self.patch_embed.grid_size != prev_grid:
                self.pos_embed = nn.Parameter(
                    resample_abs_pos_embed(self.pos_embed, new_size=self.patch_embed.grid_size, old_size=prev_grid,
                                           num_prefix_tokens=0),
                    requires_grad=self.pos_embed.requires_grad)
            update_model_input_size(self, self.patch_embed.img_size, patch_size=patch_size)
        if compressed_grid is not None:
            self.set_compressed_grid(compressed_grid)

    # ---------------------------------------------------------------------------------------------------------
    # timm model API

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        return {'pos_embed'}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Union[str, List]]:
        return dict(stem=r'^pos_embed|patch_embed', blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New classifier of ``num_classes`` (0: none); ``global_pool`` None keeps the current pooling."""
        if global_pool is not None:
            self.global_pool = _choice('global_pool', global_pool, GLOBAL_POOLS)
        self.num_classes = num_classes
        dd = get_device_dtype(self)
        self.head = nn.Linear(self.embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.head.train(self.training)

    def _lookup_map(self, x: torch.Tensor) -> torch.Tensor:
        """Position-embedded lookup tokens as a map (B, H, W, D)."""
        x = self.patch_embed(x)
        if self.dynamic_img_size:
            pos_embed = resample_abs_pos_embed(self.pos_embed, new_size=x.shape[1:3],
                                               old_size=self.patch_embed.grid_size, num_prefix_tokens=0)
        else:
            pos_embed = self.pos_embed
        return x + pos_embed.reshape(1, x.shape[1], x.shape[2], -1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens entering the first block: [compressed; lookup] (B, M + N, D)."""
        x = self._lookup_map(x)
        if self.dynamic_img_size and not torch.jit.is_scripting() and not isinstance(x, torch.fx.Proxy):
            _check_grid_fits(self.compressed_grid, (x.shape[1], x.shape[2]), f'input of {x.shape[1]}x{x.shape[2]} '
                                                                             f'patches')
        z = compress_tokens(x, self.compressed_grid, self.compress_resize)
        return torch.cat([z, x.flatten(1, 2)], dim=1)

    def run_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Run block ``index`` on the token tensor ``x`` (with gradient checkpointing when enabled)."""
        return run_maybe_checkpointed(self.grad_checkpointing, self.blocks[index], x, self.num_compressed)

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """Run all blocks on the token tensor ``x`` (B, M + N, D)."""
        for index in range(len(self.blocks)):
            x = self.run_block(index, x)
        return x

    def block_states(
            self,
            x: torch.Tensor,
            take_indices: List[int],
            stop: int,
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """The token tensor after block ``stop - 1`` and after each block in ``take_indices`` (all < ``stop``)."""
        states = []
        for index in range(stop):
            x = self.run_block(index, x)
            if index in take_indices:
                states.append(x)
        return x, states

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            return_compressed_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Features of the lookup tokens after the selected blocks (and the final features).

        Args:
            x: Input images (B, C, H, W).
            indices: Last n blocks if an int, all if None, else the block indices to take.
            return_compressed_tokens: Return (lookup features, compressed tokens (B, M, D)) pairs.
            norm: Apply the final norm to the intermediates.
            stop_early: Stop after the last block needed.
            output_fmt: ``'NCHW'`` maps (B, D, H/p, W/p) or ``'NLC'`` tokens (B, N, D).
            intermediates_only: Return only the intermediates.
        """
        _choice('output_fmt', output_fmt, ('NCHW', 'NLC'))
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        batch, _, height, width = x.shape
        grid_h, grid_w = self.patch_embed.dynamic_feat_size((height, width))
        stop = max_index + 1 if stop_early or intermediates_only else len(self.blocks)
        x, states = self.block_states(self.embed(x), take_indices, stop)
        num_compressed = self.num_compressed
        intermediates = []
        for state in states:
            state = self.norm(state) if norm else state
            lookup = state[:, num_compressed:]
            if output_fmt == 'NCHW':
                lookup = lookup.reshape(batch, grid_h, grid_w, -1).permute(0, 3, 1, 2).contiguous()
            intermediates.append((lookup, state[:, :num_compressed]) if return_compressed_tokens else lookup)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Keep only the blocks needed for the intermediates ``indices``; returns their absolute indices."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised tokens [compressed; lookup] (B, M + N, D) after the last block."""
        return self.norm(self.run_blocks(self.embed(x)))

    def pool(self, x: torch.Tensor, pool_type: Optional[str] = None) -> torch.Tensor:
        """Average the lookup and/or compressed tokens of ``forward_features``' output per ``pool_type``."""
        pool_type = self.global_pool if pool_type is None else pool_type
        num_compressed = self.num_compressed
        if pool_type == 'avg':
            return x[:, num_compressed:].mean(dim=1)
        if pool_type == 'avg_compressed':
            return x[:, :num_compressed].mean(dim=1)
        if pool_type == 'avg_both':
            return x[:, :num_compressed].mean(dim=1) + x[:, num_compressed:].mean(dim=1)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.pool(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# -------------------------------------------------------------------------------------------------------------
# connected variants: the connection runs across the blocks, on the token tensor [compressed; lookup]

class ConnectedLookupViT(ConnectedIsotropic, LookupViT):
    """LookupViT whose blocks run through a connection (``self.connection``); the model is the connection's runner.

    Args:
        connection: Connection kind (``'dwa'``, ``'mudd'``, ...; MUDD with one stream).
        connection_args: Options of the connection (see ``densezoo.connection_options``).
        **kwargs: ``LookupViT`` arguments; unknown ones raise ``TypeError``.

    The connection sees the token tensor [compressed; lookup] (B, M + N, D) between blocks: ``dwa`` mixes both token
    sets with the same coefficients, ``mudd`` per token. ``forward_intermediates`` returns, after block i, the
    lookup tokens the connection passes on to block i + 1. Its input check is the plain model's (set up in
    ``LookupViT.__init__``).
    """


register_family(StageFamily(
    name='LookupViT', connected_models={LookupViT: ConnectedLookupViT}, stages=model_stage('blocks'),
    stage_dim=lambda model: model.embed_dim, layout='NLC'))


# -------------------------------------------------------------------------------------------------------------
# checkpoints, configurations and registration

def checkpoint_filter_fn(state_dict: dict, model: LookupViT) -> dict:
    """Unwrap a training checkpoint and resample the position embedding and patch kernel to ``model``'s sizes."""
    for key in ('model', 'state_dict', 'model_ema'):
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    out = {}
    for key, value in state_dict.items():
        key = key[len('module.'):] if key.startswith('module.') else key
        if key == 'pos_embed' and value.shape != model.pos_embed.shape:
            side = math.isqrt(value.shape[1])
            old_size = (side, side) if side * side == value.shape[1] else None
            value = resample_abs_pos_embed(value, new_size=model.patch_embed.grid_size, old_size=old_size,
                                           num_prefix_tokens=0)
        elif key == 'patch_embed.proj.weight' and value.shape[-2:] != model.patch_embed.proj.weight.shape[-2:]:
            value = resample_patch_embed(value, model.patch_embed.proj.weight.shape[-2:])
        out[key] = value
    return out


def _create_lookupvit(
        variant: str,
        pretrained: bool = False,
        connection: str = '',
        connection_args: Optional[dict] = None,
        **kwargs,
) -> LookupViT:
    if pretrained:
        cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
                                     pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'))
        if not cfg.has_weights:
            raise ValueError(f'no pretrained weights exist for {variant} (LookupViT has no official release); '
                             f'use pretrained=False, or load your own weights with '
                             f'pretrained_cfg_overlay=dict(file=PATH)')

    if connection:
        kwargs.update(connection=connection, connection_args=connection_args)
    return build_model_with_cfg(
        ConnectedLookupViT if connection else LookupViT, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=3, feature_cls='getter'),
        **kwargs)


def _cfg(**kwargs) -> dict:
    return {
        'url': '', 'hf_hub_id': None, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None,
        'crop_pct': 0.9, 'interpolation': 'bicubic', 'fixed_input_size': True,
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head', 'license': 'apache-2.0',
        'paper_ids': 'arXiv:2407.12753',
        'paper_name': 'LookupViT: Compressing visual information to a limited number of tokens',
        'notes': ('No pretrained weights: LookupViT has no official release. Train one, or load your own weights '
                  'with pretrained_cfg_overlay=dict(file=...).',),
        **kwargs,
    }


_TINY = dict(embed_dim=192, depth=12, num_heads=3)
_SMALL = dict(embed_dim=384, depth=12, num_heads=6)
_BASE = dict(embed_dim=768, depth=12, num_heads=12)

#: registered plain architecture -> its arguments (patch 16 at 224: a 14x14 grid of lookup tokens)
ARCHS = {
    'lookupvit_tiny_patch16_224': dict(compressed_grid=5, **_TINY),
    'lookupvit_small_patch16_224': dict(compressed_grid=5, **_SMALL),
    'lookupvit_base_patch16_224': dict(compressed_grid=5, **_BASE),
    'lookupvit_base_patch16_224_c3': dict(compressed_grid=3, **_BASE),
    'lookupvit_base_patch16_224_c7': dict(compressed_grid=7, **_BASE),
    'lookupvit_base_patch16_224_c10': dict(compressed_grid=10, **_BASE),
}
#: architectures with registered connected variants ``<arch>_<kind>``
CONNECTED_ARCHS = ('lookupvit_tiny_patch16_224', 'lookupvit_small_patch16_224', 'lookupvit_base_patch16_224')
#: registered connection -> options of the registered variants
CONNECTIONS = {'dwa': {}, 'mudd': {}}

default_cfgs = generate_default_cfgs({
    **{f'{arch}.untrained': _cfg() for arch in ARCHS},
    **{f'{arch}_{kind}.untrained': _cfg() for arch in CONNECTED_ARCHS for kind in CONNECTIONS},
})

register_models(__name__, _create_lookupvit, [
    'lookupvit_tiny_patch16_224', 'lookupvit_small_patch16_224', 'lookupvit_base_patch16_224',
    'lookupvit_base_patch16_224_c3', 'lookupvit_base_patch16_224_c7', 'lookupvit_base_patch16_224_c10',
    'lookupvit_tiny_patch16_224_dwa', 'lookupvit_tiny_patch16_224_mudd',
    'lookupvit_small_patch16_224_dwa', 'lookupvit_small_patch16_224_mudd',
    'lookupvit_base_patch16_224_dwa', 'lookupvit_base_patch16_224_mudd',
], ARCHS, CONNECTIONS, title='LookupViT')
