"""Pyramid Vision Transformer (PVT v1) with block connections.

``PyramidVisionTransformer`` is the official PVT v1 classification model (``pvt_tiny`` ... ``pvt_large``, not in
timm), laid out like timm's PVT v2; ``ConnectedPyramidVisionTransformer`` has every stage rewired by
``densezoo.connect`` (``pvt_tiny_dwa``, ...). PVT v2's connected variants are in ``densezoo.models.pvtv2``.

Paper: PVT (https://arxiv.org/abs/2102.12122).
Official code and weights: https://github.com/whai362/PVT (Apache 2.0).
Design notes: docs/backbones.md.
"""
import math
import re
from functools import partial
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (DropPath, LayerNorm, Mlp, PatchEmbed, calculate_drop_path_rates, get_device_dtype,
                         resample_abs_pos_embed, to_2tuple, trunc_normal_)
from timm.models import build_model_with_cfg, checkpoint, generate_default_cfgs
from timm.models._features import feature_take_indices
from timm.models.pvt_v2 import Attention

from densezoo.layers.connections import StageConnection
from densezoo.models._common import check_image_batch, is_tracing, register_models
from densezoo.models.connect import ConnectedModel, ConnectedStage, StageFamily, register_family
from densezoo.models.split_streams import pvt_block_streams

__all__ = ['PyramidVisionTransformer', 'ConnectedPyramidVisionTransformer', 'PvtBlock', 'PvtStage',
           'ConnectedTokenStage', 'TokenStageRunner', 'ConnectedPvtModel', 'check_checkpoint_fits', 'renamed_entries',
           'checkpoint_filter_fn']

# the position embeddings are resized inside the graph: keep the call a leaf when FX traces this module
torch.fx.wrap('resample_abs_pos_embed')


class PvtBlock(nn.Module):
    """PVT v1 block: pre-norm spatial-reduction attention (timm's PVT v2 ``Attention``) and a plain MLP."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            mlp_ratio: float = 4.,
            sr_ratio: int = 1,
            qkv_bias: bool = True,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: float = 0.,
            act_layer: Callable = nn.GELU,
            norm_layer: Callable = LayerNorm,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = norm_layer(dim, **dd)
        self.attn = Attention(dim, num_heads=num_heads, sr_ratio=sr_ratio, qkv_bias=qkv_bias, attn_drop=attn_drop,
                              proj_drop=proj_drop, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor, feat_size: Tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), feat_size))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class PvtStage(nn.Module):
    """PVT v1 stage: patch embedding (except in the first stage, embedded by the model), a learned position
    embedding (and, in the last stage, a class token in front of the patch tokens), then the blocks.

    Takes NHWC (first stage) or NCHW features; returns the NCHW map, or the tokens (B, 1 + H * W, C) in the stage
    with a class token. ``grid_size`` is the token grid the position embedding is stored for; other grids get it
    resized bilinearly.
    """

    def __init__(
            self,
            dim: int,
            dim_out: int,
            depth: int,
            grid_size: Tuple[int, int],
            downsample: bool = True,
            class_token: bool = False,
            num_heads: int = 1,
            sr_ratio: int = 1,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: Union[List[float], float] = 0.,
            norm_layer: Callable = LayerNorm,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.grad_checkpointing = False
        self.grid_size = tuple(grid_size)
        self.num_prefix_tokens = int(class_token)
        self.downsample = PatchEmbed(
            img_size=None, patch_size=2, in_chans=dim, embed_dim=dim_out, norm_layer=nn.LayerNorm,
            output_fmt='NHWC', strict_img_size=False, **dd) if downsample else None
        self.pos_embed = nn.Parameter(torch.zeros(1, math.prod(grid_size) + self.num_prefix_tokens, dim_out, **dd))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim_out, **dd)) if class_token else None
        self.pos_drop = nn.Dropout(proj_drop)
        drop_paths = drop_path if isinstance(drop_path, list) else [drop_path] * depth
        self.blocks = nn.ModuleList([PvtBlock(
            dim_out, num_heads=num_heads, mlp_ratio=mlp_ratio, sr_ratio=sr_ratio, qkv_bias=qkv_bias,
            proj_drop=proj_drop, attn_drop=attn_drop, drop_path=drop_paths[i], norm_layer=norm_layer, **dd)
            for i in range(depth)])

    def position_embedding(self, feat_size: Tuple[int, int]) -> torch.Tensor:
        """The position embedding for a token grid of ``feat_size``, resized bilinearly from the stored grid."""
        return resample_abs_pos_embed(
            self.pos_embed, new_size=feat_size, old_size=self.grid_size, num_prefix_tokens=self.num_prefix_tokens,
            interpolation='bilinear', antialias=False)

    @torch.no_grad()
    def set_grid_size(self, grid_size: Tuple[int, int]) -> None:
        """Store the position embedding resized for ``grid_size`` (keeps ``requires_grad``)."""
        grid_size = tuple(grid_size)
        if grid_size != self.grid_size:
            resized = self.position_embedding(grid_size)
            self.pos_embed = nn.Parameter(resized.contiguous(), requires_grad=self.pos_embed.requires_grad)
            self.grid_size = grid_size

    def forward_blocks(self, x: torch.Tensor, feat_size: Tuple[int, int]) -> torch.Tensor:
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x, feat_size)
            else:
                x = block(x, feat_size)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)  # NCHW -> NHWC
        B, H, W, C = x.shape
        x = x.reshape(B, H * W, C)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)
        x = self.pos_drop(x + self.position_embedding((H, W)))
        x = self.forward_blocks(x, (H, W))
        if self.cls_token is not None:
            return x
        return x.reshape(B, H, W, C).permute(0, 3, 1, 2).contiguous()


class PyramidVisionTransformer(nn.Module):
    """PVT v1 (Wang et al., ICCV 2021) in timm's PVT v2 layout, numerically the official classification model.

    Args:
        img_size: Input size the position embeddings are stored for.
        patch_size: Patch size of the first embedding (later stages halve the grid).
        in_chans: Input channels.
        num_classes: Classes of the head (0: no head).
        global_pool: 'token' (class token, as the official model), 'avg' (mean of the patch tokens) or ''.
        embed_dims, num_heads, mlp_ratios, sr_ratios, depths: Per-stage widths, heads, MLP ratios, spatial
            reduction ratios and block counts.
        qkv_bias: Bias in the query / key-value projections.
        drop_rate: Dropout after the position embedding, the attention projection and the MLP (the official
            ``drop_rate``; there is no classifier dropout).
        attn_drop_rate: Attention dropout.
        drop_path_rate: Stochastic depth, rising linearly over all blocks.
        norm_layer: Norm of the blocks and of the final tokens (the patch embeddings and the spatial reduction keep
            the official ``nn.LayerNorm`` with eps 1e-5).
        dynamic_img_size: Resize the position embeddings for inputs of another size (the official behaviour);
            otherwise inputs must be ``img_size``.
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 4,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'token',
            embed_dims: Tuple[int, ...] = (64, 128, 320, 512),
            num_heads: Tuple[int, ...] = (1, 2, 5, 8),
            mlp_ratios: Tuple[float, ...] = (8., 8., 4., 4.),
            sr_ratios: Tuple[int, ...] = (8, 4, 2, 1),
            depths: Tuple[int, ...] = (3, 4, 6, 3),
            qkv_bias: bool = True,
            drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            norm_layer: Callable = LayerNorm,
            dynamic_img_size: bool = True,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        num_stages = len(depths)
        for name, values in dict(embed_dims=embed_dims, num_heads=num_heads, mlp_ratios=mlp_ratios,
                                 sr_ratios=sr_ratios).items():
            if len(values) != num_stages:
                raise ValueError(f'{name} has {len(values)} entries but depths has {num_stages}; give one per stage')
        if sr_ratios[-1] != 1:
            raise ValueError(f'sr_ratios[-1]={sr_ratios[-1]} is not allowed; the last stage holds the class token '
                             f'and cannot reduce its tokens spatially, use 1')
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = self._check_pool(global_pool, token_output=True)
        self.img_size = to_2tuple(img_size)
        self.patch_size = patch_size
        self.dynamic_img_size = dynamic_img_size

        self.patch_embed = PatchEmbed(
            img_size=None, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dims[0],
            norm_layer=nn.LayerNorm, output_fmt='NHWC', strict_img_size=False, **dd)
        dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        stages, self.feature_info = [], []
        for i in range(num_stages):
            reduction = patch_size * 2 ** i
            stages.append(PvtStage(
                embed_dims[max(i - 1, 0)], embed_dims[i], depths[i],
                grid_size=(self.img_size[0] // reduction, self.img_size[1] // reduction), downsample=i > 0,
                class_token=i == num_stages - 1, num_heads=num_heads[i], sr_ratio=sr_ratios[i],
                mlp_ratio=mlp_ratios[i], qkv_bias=qkv_bias, proj_drop=drop_rate, attn_drop=attn_drop_rate,
                drop_path=dpr[i], norm_layer=norm_layer, **dd))
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=reduction, module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)
        self.norm = norm_layer(embed_dims[-1], **dd)
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.head = nn.Linear(embed_dims[-1], num_classes, **dd) if num_classes > 0 else nn.Identity()
        if self.norm.weight.device.type != 'meta':  # meta tensors hold no values: to_empty(), then init_weights()
            self.init_weights()

    def _token_output(self) -> bool:
        # the features end with the class-token stage's tokens (not pruned to an earlier stage)
        return self.stages[-1].cls_token is not None

    def _check_pool(self, global_pool: str, token_output: bool) -> str:
        allowed = ('token', 'avg', '') if token_output else ('avg', '')
        if global_pool not in allowed:
            raise ValueError(f'global_pool={global_pool!r} is not allowed; choose one of {allowed}')
        return global_pool

    def init_weights(self) -> None:
        """The official initialisation: truncated normal (std .02) position embeddings, class token and linear
        weights, zero biases, unit norms, PyTorch's default for convolutions; connections start as identity."""
        for stage in self.stages:
            trunc_normal_(stage.pos_embed, std=.02)
            if stage.cls_token is not None:
                trunc_normal_(stage.cls_token, std=.02)
        self.apply(_init_weights)

    @torch.jit.ignore
    def no_weight_decay(self):
        return {f'stages.{i}.cls_token' for i, stage in enumerate(self.stages) if stage.cls_token is not None}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return _group_matcher(coarse)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = self._check_pool(global_pool, self._token_output())
        dd = get_device_dtype(self)
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()

    def set_input_size(self, img_size: Union[int, Tuple[int, int]]) -> None:
        """Resize the stored position embeddings for inputs of ``img_size``."""
        img_size = to_2tuple(img_size)
        self._check_size(*img_size)
        for info, stage in zip(self.feature_info, self.stages):
            stage.set_grid_size((img_size[0] // info['reduction'], img_size[1] // info['reduction']))
        self.img_size = img_size

    def _check_size(self, height: int, width: int) -> None:
        stride = self.feature_info[len(self.stages) - 1]['reduction']
        if height % stride or width % stride:
            raise ValueError(f'input size {height}x{width} is not a multiple of {stride}, the total patch stride of '
                             f'PVT; resize or pad the image to a multiple of {stride}')

    def _check_input(self, x: torch.Tensor) -> None:
        if is_tracing(x):
            return
        check_image_batch(x, self.in_chans)
        height, width = x.shape[-2:]
        self._check_size(height, width)
        if not self.dynamic_img_size and (height, width) != self.img_size:
            ih, iw = self.img_size
            raise ValueError(f'input size {height}x{width} does not fit the position embeddings of img_size '
                             f'{ih}x{iw}; create the model with img_size=({height}, {width}) or '
                             f'dynamic_img_size=True, or call model.set_input_size(img_size=({height}, {width}))')

    def _feature_map(self, x: torch.Tensor, index: int, img_size: Tuple[int, int]) -> torch.Tensor:
        stage = self.stages[index]
        if stage.cls_token is None:
            return x
        reduction = self.feature_info[index]['reduction']
        B, _, C = x.shape
        x = x[:, stage.num_prefix_tokens:]
        return x.reshape(B, img_size[0] // reduction, img_size[1] // reduction, C).permute(0, 3, 1, 2).contiguous()

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs as NCHW maps (the last stage's patch tokens without the class token, normalised when
        ``norm``), and the final features (as ``forward_features``) unless ``intermediates_only``.

        Args:
            x: Input images.
            indices: Take the last n stages if int, all if None, the given stages if a sequence.
            norm: Apply the final norm to the last stage's intermediate.
            stop_early: Stop after the last stage taken.
            output_fmt: 'NCHW' only.
            intermediates_only: Return only the intermediates.
        """
        if output_fmt != 'NCHW':
            raise ValueError(f"output_fmt={output_fmt!r} is not supported; PVT intermediates are 'NCHW'")
        if not torch.jit.is_scripting():
            self._check_input(x)
        img_size = (x.shape[-2], x.shape[-1])
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index + 1]
        intermediates = []
        x = self.patch_embed(x)
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                feature = self.norm(x) if norm and i == len(self.stages) - 1 else x
                intermediates.append(self._feature_map(feature, i, img_size))
        if intermediates_only:
            return intermediates
        if len(stages) == len(self.stages):
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages after the last one ``indices`` takes (and the final norm / head); returns the taken
        stage indices."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[:max_index + 1]
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            self._check_input(x)
        x = self.patch_embed(x)
        x = self.stages(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'token':
            x = x[:, 0]
        elif self.global_pool == 'avg':
            x = x[:, self.stages[-1].num_prefix_tokens:].mean(dim=1) if self._token_output() else x.mean((-2, -1))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.Conv2d, StageConnection)):
        module.reset_parameters()


def _group_matcher(coarse: bool) -> Dict:
    """Layer-decay groups of both PVT layouts: the stem, then per stage (coarse) or per block, the stage's
    connection right after its blocks, then its norm."""
    if coarse:
        return dict(stem=r'^patch_embed', blocks=[(r'^stages\.(\d+)', None), (r'^norm', (99999,))])
    return dict(stem=r'^patch_embed', blocks=[
        (r'^stages\.(\d+)\.(?:downsample|pos_embed|cls_token)', (0,)),
        (r'^stages\.(\d+)\.blocks\.(\d+)', None),
        (r'^stages\.(\d+)\.connection\.', (99990,)),
        (r'^stages\.(\d+)\.norm', (99991,)),
        (r'^norm', (99999,)),
    ])


# ---------------------------------------------------------------------------------------------------------------
# connected stages and model (the token-stage runner and the model mixin serve PVT v2 as well)

class TokenStageRunner:
    """The connections' runner for a PVT stage: runs its blocks on tokens of one feature-map size.

    Blocks are recomputed in the backward pass when the stage uses gradient checkpointing.
    """

    def __init__(self, stage: nn.Module, feat_size: Tuple[int, int]):
        self.stage = stage
        self.feat_size = feat_size

    def _run(self, fn: Callable, *args: torch.Tensor) -> torch.Tensor:
        if self.stage.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint(fn, *args, self.feat_size)
        return fn(*args, self.feat_size)

    def run_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Run block ``index`` on tokens ``x``."""
        return self._run(self.stage.blocks[index], x)

    def run_block_streams(self, index: int, q, k, v, r) -> torch.Tensor:
        """Run block ``index`` on separate query, key, value and residual streams (see ``pvt_block_streams``)."""
        return self._run(partial(pvt_block_streams, self.stage.blocks[index]), q, k, v, r)


class ConnectedTokenStage(ConnectedStage):
    """Mixin for PVT stages whose blocks run through ``self.connection`` on (B, N, C) tokens."""

    def run_connected_tokens(self, x: torch.Tensor, feat_size: Tuple[int, int]) -> torch.Tensor:
        return self.connection(x, TokenStageRunner(self, feat_size))


class ConnectedPvtStage(ConnectedTokenStage, PvtStage):
    """PVT v1 stage whose blocks run through ``self.connection``."""

    def forward_blocks(self, x: torch.Tensor, feat_size: Tuple[int, int]) -> torch.Tensor:
        return self.run_connected_tokens(x, feat_size)


class ConnectedPvtModel(ConnectedModel):
    """Connection-aware optimiser grouping for PVT's ``stages.<i>`` layout."""

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return _group_matcher(coarse)


class ConnectedPyramidVisionTransformer(ConnectedPvtModel, PyramidVisionTransformer):
    """PVT v1 whose stages use a block connection.

    Args:
        connection: Connection kind (``'dwa'``, ``'mudd'``, ``'rir'``, ``'dense'``, ...).
        connection_args: Options of the connection (see ``densezoo.connection_options``).
        **kwargs: ``PyramidVisionTransformer`` arguments; unknown ones raise ``TypeError``.

    The plain model checks its input in ``forward_features``; no other check is added.
    """


def _pvt_stages(model: nn.Module):
    return [(f'stages.{i}', stage) for i, stage in enumerate(model.stages)]


def _stage_dim(stage: nn.Module) -> int:
    return stage.blocks[0].attn.dim


#: family description shared by PVT v1 and v2: stages ``stages.<i>`` of (B, N, C) tokens, MUDD with four streams
PVT_FAMILY_ARGS = dict(stages=_pvt_stages, stage_dim=_stage_dim, layout='NLC', capabilities=frozenset({'streams'}),
                       default_options={'mudd': dict(num_streams=4)})
register_family(StageFamily(
    name='PVT', connected_models={PyramidVisionTransformer: ConnectedPyramidVisionTransformer},
    connected_stages={PvtStage: ConnectedPvtStage}, **PVT_FAMILY_ARGS))


# ---------------------------------------------------------------------------------------------------------------
# checkpoints

def _official_v1_key(key: str, last_stage: int) -> str:
    """densezoo name of an official PVT v1 checkpoint key (names already in this layout are kept)."""
    key = re.sub(r'^patch_embed1\.', 'patch_embed.', key)
    key = re.sub(r'^patch_embed(\d+)\.', lambda m: f'stages.{int(m.group(1)) - 1}.downsample.', key)
    key = re.sub(r'^pos_embed(\d+)$', lambda m: f'stages.{int(m.group(1)) - 1}.pos_embed', key)
    key = re.sub(r'^block(\d+)\.', lambda m: f'stages.{int(m.group(1)) - 1}.blocks.', key)
    return f'stages.{last_stage}.cls_token' if key == 'cls_token' else key


def check_checkpoint_fits(state_dict: Dict[str, torch.Tensor], origin: Dict[str, str], model: nn.Module) -> None:
    """One-line ``ValueError`` naming the first checkpoint entry that does not fit ``model``.

    The classifier and the input channels of the first convolution are left to timm's loader, which replaces
    or adapts them when ``num_classes`` / ``in_chans`` differ; connection entries may be absent (they start at
    their initial values).
    """
    expected = model.state_dict()
    hint = 'is it a checkpoint of another model size?'
    for key, value in state_dict.items():
        if key.startswith('head.'):
            continue
        name = repr(origin[key]) + ('' if origin[key] == key else f' ({key!r} here)')
        if key not in expected:
            raise ValueError(f'checkpoint entry {name} has no place in this model; {hint}')
        shape, wanted = tuple(value.shape), tuple(expected[key].shape)
        if key == 'patch_embed.proj.weight':
            shape, wanted = shape[:1] + shape[2:], wanted[:1] + wanted[2:]
        if shape != wanted:
            raise ValueError(f'checkpoint entry {name} has shape {tuple(value.shape)} but the model expects '
                             f'{tuple(expected[key].shape)}; {hint}')
    missing = [k for k in expected if k not in state_dict and not k.startswith('head.') and '.connection.' not in k]
    if missing:
        raise ValueError(f'the checkpoint has no entry for {missing[0]!r} ({len(missing)} missing); {hint}')


def renamed_entries(state_dict: dict, rename: Callable[[str], str]) -> Tuple[dict, Dict[str, str]]:
    """The entries of a checkpoint (unwrapped from 'model' / 'state_dict') under ``rename``d keys, and each new
    key's original name."""
    state_dict = state_dict.get('model', state_dict)
    state_dict = state_dict.get('state_dict', state_dict)
    out, origin = {}, {}
    for key, value in state_dict.items():
        new_key = rename(key)
        out[new_key], origin[new_key] = value, key
    return out, origin


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Map official PVT v1 and densezoo checkpoints onto ``model`` (PVT v1, plain or connected).

    Unwraps 'model' / 'state_dict', renames official keys, resizes position embeddings stored for another input
    size, and raises a one-line ``ValueError`` naming the first entry that does not fit the model.
    """
    out, origin = renamed_entries(state_dict, partial(_official_v1_key, last_stage=len(model.feature_info) - 1))
    for i, stage in enumerate(model.stages):
        key = f'stages.{i}.pos_embed'
        pos_embed = out.get(key)
        if pos_embed is not None and pos_embed.dim() == 3 and pos_embed.shape != stage.pos_embed.shape:
            out[key] = _resize_stored_pos_embed(pos_embed, stage)
    check_checkpoint_fits(out, origin, model)
    return out


def _resize_stored_pos_embed(pos_embed: torch.Tensor, stage: PvtStage) -> torch.Tensor:
    """A checkpoint's position embedding for ``stage``, resized from its (square) grid to the stage's grid."""
    side = math.isqrt(pos_embed.shape[1] - stage.num_prefix_tokens)
    if side * side + stage.num_prefix_tokens != pos_embed.shape[1] or pos_embed.shape[-1] != stage.pos_embed.shape[-1]:
        return pos_embed  # not a square grid of this width: reported by the fit check
    return resample_abs_pos_embed(pos_embed, new_size=stage.grid_size, old_size=(side, side),
                                  num_prefix_tokens=stage.num_prefix_tokens, interpolation='bilinear',
                                  antialias=False)


# ---------------------------------------------------------------------------------------------------------------
# configurations and registration

def _create_pvt(variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    model_cls = ConnectedPyramidVisionTransformer if 'connection' in kwargs else PyramidVisionTransformer
    out_indices = kwargs.pop('out_indices', tuple(range(len(kwargs.get('depths', (3, 4, 6, 3))))))
    return build_model_with_cfg(
        model_cls, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs)


def _cfg(url: str = '', **kwargs) -> dict:
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None,
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'fixed_input_size': False,
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head', 'license': 'apache-2.0',
        'paper_ids': 'arXiv:2102.12122', 'paper_name': 'Pyramid Vision Transformer: A Versatile Backbone for Dense '
                                                      'Prediction without Convolutions',
        'origin_url': 'https://github.com/whai362/PVT', **kwargs,
    }


_RELEASE = 'https://github.com/whai362/PVT/releases/download/v2/'
_PVT = dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(8., 8., 4., 4.),
            sr_ratios=(8, 4, 2, 1))

#: PVT v1 architecture -> its arguments (as the official entrypoints). Parameters (official README / counted):
#: pvt_tiny 13.2M (13,229,288), pvt_small 24.5M (24,485,864), pvt_medium 44.2M (44,208,104),
#: pvt_large 61.4M (61,369,320)
PVT_ARCHS = {
    'pvt_tiny': dict(depths=(2, 2, 2, 2), **_PVT),
    'pvt_small': dict(depths=(3, 4, 6, 3), **_PVT),
    'pvt_medium': dict(depths=(3, 4, 18, 3), **_PVT),
    'pvt_large': dict(depths=(3, 8, 27, 3), **_PVT),
}


def _rir_options(arch_args: Dict[str, object]) -> Dict[str, object]:
    """Registered ``rir`` options: groups of gcd(depths) blocks (the largest size that divides every stage) and a
    skip over each stage."""
    return dict(group_size=math.gcd(*arch_args['depths']), long_skip=True)


#: registered connection -> options of the registered variants, for PVT v1 and v2 (mudd's four streams are the
#: family default)
CONNECTIONS = {'dwa': {}, 'mudd': {}, 'rir': _rir_options, 'dense': dict(growth=32)}


def _connected_cfgs(plain_cfgs: Dict[str, dict]) -> Dict[str, dict]:
    """Pretrained cfgs of the connected variants ``<arch>_<kind>``: the plain architecture's, with a note."""
    cfgs = {}
    for name, cfg in plain_cfgs.items():
        arch, tag = name.split('.')
        for kind in CONNECTIONS:
            note = f'Blocks from timm {name}; the {kind} connection starts at its initial values.'
            cfgs[f'{arch}_{kind}.{tag}'] = {**cfg, 'notes': (note,)}
    return cfgs


_PLAIN_CFGS = {f'{arch}.in1k': _cfg(url=f'{_RELEASE}{arch}.pth') for arch in PVT_ARCHS}
default_cfgs = generate_default_cfgs({**_PLAIN_CFGS, **_connected_cfgs(_PLAIN_CFGS)})

register_models(__name__, _create_pvt, [
    'pvt_tiny', 'pvt_small', 'pvt_medium', 'pvt_large',
    'pvt_tiny_dwa', 'pvt_tiny_mudd', 'pvt_tiny_rir', 'pvt_tiny_dense',
    'pvt_small_dwa', 'pvt_small_mudd', 'pvt_small_rir', 'pvt_small_dense',
    'pvt_medium_dwa', 'pvt_medium_mudd', 'pvt_medium_rir', 'pvt_medium_dense',
    'pvt_large_dwa', 'pvt_large_mudd', 'pvt_large_rir', 'pvt_large_dense',
], PVT_ARCHS, CONNECTIONS, title='PVT v1')
