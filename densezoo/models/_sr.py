"""Pieces shared by the super-resolution families: input handling, the SwinIR-style skeleton, checkpoints.

Entry points: ``SRModel`` (images in [0, 1], any input size), ``WindowSRTransformer`` (the skeleton SwinIR, DRCT
and HAT share), ``checkpoint_filter_fn`` (official BasicSR / KAIR checkpoints) and the registration helpers.

Design notes: docs/sr-models.md.
"""
import contextlib
import logging
import math
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from timm.models import build_model_with_cfg, checkpoint, resolve_pretrained_cfg

from densezoo.layers.upsample import SRReconstruction
from densezoo.layers.window_attention import SwinIRBlock, from_window_order, shifted_window_mask, to_window_order
from densezoo.models.connect import ConnectedModel, model_stage

__all__ = ['SRModel', 'WindowSRTransformer', 'ConnectedWindowSR', 'WINDOW_SR_STAGES', 'checkpoint_filter_fn', 'sr_cfg',
           'RGB_MEAN', 'connected_sr_cfgs', 'create_sr_model', 'unwrap_checkpoint', 'check_pixelshuffle_only',
           'residual_conv', 'tokens_to_map', 'map_to_tokens', 'official_state_dict', 'register_stream_rule',
           'scale_linear_', 'scale_group_conv']

_logger = logging.getLogger(__name__)

#: DIV2K mean colour that the official SR models subtract (SwinIR, DRCT, HAT, RCAN)
RGB_MEAN = (0.4488, 0.4371, 0.4040)

#: buffers that official checkpoints store but that follow from the architecture (dropped when loading)
_DERIVED_KEYS = ('attn_mask', 'relative_position_index', 'relative_position_index_SA', 'relative_position_index_OCA')


def sr_cfg(url: str = '', source: str = '', paper: str = '', scale: int = 1, **kwargs) -> dict:
    """A timm pretrained cfg for an SR model: the official release file and where it comes from."""
    return {
        'url': url, 'num_classes': 0, 'input_size': (3, 64, 64), 'min_input_size': (3, 1, 1),
        'mean': (0., 0., 0.), 'std': (1., 1., 1.), 'crop_pct': 1.0, 'interpolation': 'bicubic',
        'first_conv': 'conv_first', 'classifier': None, 'license': 'apache-2.0', 'origin_url': source,
        'paper_ids': paper, 'notes': (f'upscale x{scale}; official release weights',) if url else (), **kwargs}


class SRModel(nn.Module):
    """Base of densezoo's SR models: input checks, padding, mean/range normalisation and the timm basics.

    Subclasses implement ``restore(x)`` on the normalised, padded input and set ``pad_multiple``.

    Args:
        in_chans: Image channels (3 colour, 1 grey).
        upscale: Output size / input size (1 for denoising and artifact removal).
        img_range: Scale applied after subtracting the mean (1. or 255.).
        rgb_mean: Mean subtracted from the input; default the DIV2K mean for 3 channels and 0 otherwise.
    """
    #: preferred key of a BasicSR / KAIR release file (``params`` or ``params_ema``)
    checkpoint_key = 'params'

    def __init__(self, in_chans: int = 3, upscale: int = 2, img_range: float = 1.,
                 rgb_mean: Optional[Sequence[float]] = None):
        super().__init__()
        self.in_chans = in_chans
        self.upscale = upscale
        self.img_range = img_range
        self.pad_multiple = 1
        self.num_classes = 0
        self.grad_checkpointing = False
        if rgb_mean is None:
            rgb_mean = RGB_MEAN if in_chans == 3 else (0.,) * in_chans
        if len(rgb_mean) not in (1, in_chans):
            raise ValueError(f'rgb_mean has {len(rgb_mean)} values; give one per input channel ({in_chans})')
        self.register_buffer('mean', torch.tensor(rgb_mean, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a one-line ``ValueError`` for a batch this model cannot take."""
        if isinstance(x, torch.fx.Proxy) or torch.jit.is_scripting():
            return
        if x.dim() != 4:
            raise ValueError(f'expected an image batch of shape (B, {self.in_chans}, H, W), got shape '
                             f'{tuple(x.shape)}')
        if x.shape[1] != self.in_chans:
            raise ValueError(f'expected {self.in_chans} input channels, got {x.shape[1]} (input shape '
                             f'{tuple(x.shape)}); create the model with in_chans={x.shape[1]}')

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Reflect-pad bottom and right to a multiple of ``pad_multiple`` (repeating the reflection on inputs
        smaller than the padding, and replicating a single row or column)."""
        multiple = self.pad_multiple
        if not all(isinstance(size, int) for size in x.shape[-2:]):  # torch.export with dynamic sizes
            return _reflect_pad_symbolic(x, multiple)
        pad_h, pad_w = (-x.shape[-2]) % multiple, (-x.shape[-1]) % multiple
        while pad_h or pad_w:
            step_h, step_w = min(pad_h, x.shape[-2] - 1), min(pad_w, x.shape[-1] - 1)
            if (pad_h and not step_h) or (pad_w and not step_w):
                return F.pad(x, (0, pad_w, 0, pad_h), 'replicate')
            x = F.pad(x, (0, step_w, 0, step_h), 'reflect')
            pad_h, pad_w = pad_h - step_h, pad_w - step_w
        return x

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        height, width = x.shape[-2:]
        mean = self.mean.to(x.dtype)
        x = (self.pad(x) - mean) * self.img_range
        x = self.restore(x) / self.img_range + mean
        if not (isinstance(height, int) and isinstance(width, int)):  # torch.export with dynamic sizes: gathered,
            # as a slice would need a proof that the padded size is not smaller
            for dim, size in ((-2, height), (-1, width)):
                x = x.index_select(dim, torch.arange(size * self.upscale, device=x.device))
            return x
        return x[..., :height * self.upscale, :width * self.upscale]

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self):
        return set()

    @torch.jit.ignore
    def no_weight_decay_keywords(self):
        return {'relative_position_bias_table'}

    def get_classifier(self) -> nn.Module:
        return nn.Identity()


def _reflect_pad_symbolic(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """``SRModel.pad`` for a symbolic height and width (at least 2): the rows and columns it gives, gathered by
    index. Reflecting again and again is a triangle wave over the positions, of period 2·(size − 1)."""
    if multiple == 1:
        return x
    for dim in (-2, -1):
        size = x.shape[dim]
        period = 2 * (size - 1)
        # the padded size as a multiple of ``multiple`` (ceil), so that its division by the window is exact
        position = torch.arange((size + multiple - 1) // multiple * multiple, device=x.device)
        # the period as a tensor: ONNX export takes no modulo by a symbolic number
        position = position % torch.scalar_tensor(period, dtype=position.dtype, device=x.device)
        x = x.index_select(dim, torch.where(position < size, position, period - position))
    return x


def _run(module: nn.Module, use_checkpoint: bool, *args):
    return checkpoint(module, *args) if use_checkpoint else module(*args)


class WindowSRTransformer(SRReconstruction, SRModel):
    """The skeleton SwinIR, DRCT and HAT share (official names): shallow conv, a body of residual groups of window
    attention layers on tokens, a conv after the body with a long skip, and the reconstruction head.

    Subclasses build ``self.layers`` (modules called as ``layer(x, x_size)`` on (B, H·W, C) tokens) in their
    constructor between ``super().__init__`` and ``finish``. The body is a stage for ``densezoo.connect``:
    ``dwa`` / ``mudd`` connections run over the residual groups. A subclass whose groups act on each token alone
    outside window attention sets ``body_window_size``; its groups then take their tokens window by window
    (``to_window_order``), and the body reorders them once on entry and once on exit.
    """
    body_window_size: Optional[int] = None

    def __init__(self, img_size=64, patch_size=1, in_chans=3, embed_dim=96, window_size=7, upscale=2, img_range=1.,
                 upsampler='', resi_connection='1conv', norm_layer=nn.LayerNorm, patch_norm=True, ape=False,
                 drop_rate=0., num_feat=64, rgb_mean=None):
        super().__init__(in_chans=in_chans, upscale=upscale, img_range=img_range, rgb_mean=rgb_mean)
        self.img_size = tuple(img_size) if isinstance(img_size, (tuple, list)) else (img_size, img_size)
        self.patch_size = patch_size
        self.window_size = window_size
        self.pad_multiple = window_size
        self.embed_dim = self.num_features = embed_dim
        self.patches_resolution = self.img_size
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = PatchNorm(embed_dim, norm_layer if patch_norm else None)
        self.ape = ape
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, self.img_size[0] * self.img_size[1], embed_dim))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=.02)
        self.pos_drop = nn.Dropout(drop_rate)
        self.layers = nn.ModuleList()
        self._resi_connection = resi_connection
        self._upsampler_args = (upsampler, upscale, embed_dim, in_chans, num_feat)
        self._norm_layer = norm_layer

    def finish(self) -> None:
        """Build the modules after the body (called by subclasses once ``self.layers`` is filled) and init."""
        self.norm = self._norm_layer(self.embed_dim)
        self.conv_after_body = residual_conv(self.embed_dim, self._resi_connection)
        self.add_reconstruction(*self._upsampler_args)
        self.apply(_init_weights)

    @property
    def blocks(self) -> nn.ModuleList:
        """The residual groups, as ``densezoo.connect`` sees them (an alias of ``layers``)."""
        return self.layers

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        """Layer-decay groups: the shallow conv and embedding, then one per residual group; the modules after the
        body go with the last group."""
        return dict(stem=r'^conv_first|^patch_embed|^absolute_pos_embed', blocks=r'^layers\.(\d+)')

    def run_layers(self, x: torch.Tensor, x_size: Tuple[int, int]) -> torch.Tensor:
        """Run the residual groups on tokens ``x`` (plain residual chain)."""
        for layer in self.layers:
            x = _run(layer, self.grad_checkpointing and self.training, x, x_size)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Deep features (B, C, H, W) of the shallow features ``x`` (B, C, H, W): the body, before the long skip."""
        x_size = (x.shape[2], x.shape[3])
        x = self.patch_embed(x)
        if self.ape:
            x = x + self.absolute_pos_embed
        x = self.pos_drop(x)
        if self.body_window_size:
            x = to_window_order(x, x_size, self.body_window_size)
        x = self.run_layers(x, x_size)
        if self.body_window_size:
            x = from_window_order(x, x_size, self.body_window_size)
        return tokens_to_map(self.norm(x), x_size)

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        shallow = self.conv_first(x)
        features = self.conv_after_body(self.forward_features(shallow)) + shallow
        return self.reconstruct(features, x)

    @torch.no_grad()
    def scale_stream_(self, factor: float) -> 'WindowSRTransformer':
        """Multiply the body's residual stream by ``factor``, a power of two, without changing the output.

        The stream starts at the embedding norm (its weight and bias are scaled), every branch added to it ends in
        a scaled layer (``register_stream_rule``: attention and MLP output projections, group convs' biases, ...),
        and every LayerNorm that reads it gets ``eps · factor²``, so it normalises exactly as before. Scaling by a
        power of two commutes with floating-point rounding, so outputs are unchanged barring under- or overflow:
        in float16 a stream too large for the format runs scaled down (``densezoo.tasks.sr_inference``).
        """
        mantissa, _ = math.frexp(factor)
        if factor <= 0 or mantissa != 0.5:
            raise ValueError(f'factor={factor} must be a positive power of two (exact in floating point)')
        if getattr(self, 'connection', None) is not None:
            raise ValueError(f'{type(self).__name__} has a {self.connection_kind} connection; scaling the stream of '
                             f'connected models is not supported (use float32 or bfloat16)')
        if not isinstance(self.patch_embed.norm, nn.LayerNorm):
            raise ValueError('the stream can be scaled only when it starts at a LayerNorm (patch_norm=True)')
        self.patch_embed.norm.weight.mul_(factor)
        self.patch_embed.norm.bias.mul_(factor)
        if self.ape:
            self.absolute_pos_embed.mul_(factor)
        for module in self.modules():
            if isinstance(module, nn.LayerNorm) and module is not self.patch_embed.norm:
                module.eps *= factor * factor
            for cls, rule in _STREAM_RULES:
                if isinstance(module, cls):
                    rule(module, factor)
        return self

    def official_buffers(self) -> Dict[str, torch.Tensor]:
        """The derived buffers the official model stores in its state dict (SwinIR, DRCT): each Swin layer's
        ``attn.relative_position_index`` and, for shifted layers, its ``attn_mask`` at ``img_size``."""
        out = {}
        for name, module in self.named_modules():
            index = getattr(getattr(module, 'attn', None), 'relative_position_index', None)
            if not hasattr(module, 'shift_size') or index is None:
                continue
            out[f'{name}.attn.relative_position_index'] = index
            if module.shift_size:
                height, width = module.input_resolution
                out[f'{name}.attn_mask'] = shifted_window_mask(height, width, module.window_size,
                                                               module.shift_size, index.device)
        return out


#: (module class, rule): how a module whose output joins the residual stream is scaled by ``scale_stream_``
_STREAM_RULES: List[Tuple[type, Callable[[nn.Module, float], None]]] = []


def register_stream_rule(cls: type, rule: Callable[[nn.Module, float], None]) -> None:
    """Teach ``WindowSRTransformer.scale_stream_`` to scale the stream contribution of modules of ``cls``."""
    _STREAM_RULES.append((cls, rule))


def scale_linear_(layer: nn.Module, factor: float, weight: bool = True) -> None:
    """Multiply a linear or conv layer's bias (and ``weight``) by ``factor``."""
    if weight:
        layer.weight.mul_(factor)
    if layer.bias is not None:
        layer.bias.mul_(factor)


def _scale_swin_block(block: nn.Module, factor: float) -> None:
    # both branches read normalised tokens; their last layers make them the stream's scale
    scale_linear_(block.attn.proj, factor)
    scale_linear_(block.mlp.fc2, factor)


def scale_group_conv(group: nn.Module, factor: float) -> None:
    """A residual group's closing conv(s) act on the scaled stream: only their biases change (LeakyReLU between
    the '3conv' layers is positively homogeneous)."""
    for layer in group.conv.modules():
        if isinstance(layer, nn.Conv2d):
            scale_linear_(layer, factor, weight=False)


register_stream_rule(SwinIRBlock, _scale_swin_block)


class PatchNorm(nn.Module):
    """Flattens a feature map (B, C, H, W) to tokens (B, H·W, C) and normalises them (official ``patch_embed``)."""

    def __init__(self, dim: int, norm_layer=None):
        super().__init__()
        self.norm = norm_layer(dim) if norm_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(map_to_tokens(x))


def check_pixelshuffle_only(family: str, upsampler: str, resi_connection: str) -> None:
    """DRCT and HAT reconstruct only with 'pixelshuffle' (the official models return their input unchanged for any
    other upsampler) and close groups with '1conv' or 'identity'; raise a one-line error for anything else."""
    if upsampler != 'pixelshuffle':
        raise ValueError(f"upsampler={upsampler!r} is not supported by {family}; it reconstructs with 'pixelshuffle' "
                         f"only (the official model returns its input unchanged otherwise)")
    if resi_connection not in ('1conv', 'identity'):
        raise ValueError(f"resi_connection={resi_connection!r} is not supported by {family}; use '1conv' or "
                         f"'identity'")


def residual_conv(dim: int, resi_connection: str) -> nn.Module:
    """The conv closing a residual group: ``1conv`` (3×3), ``3conv`` (3×3 to C/4, 1×1, 3×3 back) or ``identity``."""
    if resi_connection == '1conv':
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if resi_connection == '3conv':
        return nn.Sequential(
            nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(negative_slope=0.2),
            nn.Conv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(negative_slope=0.2),
            nn.Conv2d(dim // 4, dim, 3, 1, 1))
    if resi_connection == 'identity':
        return nn.Identity()
    raise ValueError(f"resi_connection={resi_connection!r} is not known; choose '1conv', '3conv' or 'identity'")


def tokens_to_map(x: torch.Tensor, x_size: Tuple[int, int]) -> torch.Tensor:
    """(B, H·W, C) → (B, C, H, W)."""
    return x.transpose(1, 2).reshape(x.shape[0], -1, *x_size)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B, H·W, C)."""
    return x.flatten(2).transpose(1, 2)


def _init_weights(module: nn.Module) -> None:
    """The official init: truncated-normal(0.02) linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------------------------------------------
# connections over the residual groups

class _GridRunner:
    """The model as the connection's runner, with this forward's token grid size bound to ``run_block`` (kept
    here, not on the model: a forward that sets module attributes cannot be exported)."""

    def __init__(self, model: nn.Module, x_size: Tuple[int, int]):
        self.model, self.x_size = model, x_size

    def run_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        return self.model.run_block(index, x, self.x_size)

    def __getattr__(self, name: str):
        return getattr(self.model, name)


class ConnectedWindowSR(ConnectedModel):
    """Mixin of a connected SwinIR-style model: its residual groups run through ``self.connection``, whose
    parameters form the layer-decay group after the last residual group."""

    def connection_group_rules(self, coarse: bool) -> List[Tuple[str, Tuple[int, ...]]]:
        return [(r'^connection\.', (99990,))]

    def run_block(self, index: int, x: torch.Tensor, x_size: Tuple[int, int]) -> torch.Tensor:
        return _run(self.layers[index], self.grad_checkpointing and self.training, x, x_size)

    def run_layers(self, x: torch.Tensor, x_size: Tuple[int, int]) -> torch.Tensor:
        return self.connection(x, _GridRunner(self, x_size))


#: ``StageFamily`` arguments of the SwinIR-style families: the body (the model itself) is one stage of tokens
WINDOW_SR_STAGES = dict(stages=model_stage('body'), stage_dim=lambda model: model.embed_dim, layout='NLC')


# ---------------------------------------------------------------------------------------------------------------
# official checkpoints

def unwrap_checkpoint(state_dict: dict, preferred: str = 'params') -> dict:
    """The weights inside a BasicSR / KAIR / training checkpoint (``preferred`` key first), or the dict itself."""
    for key in (preferred, 'params_ema', 'params', 'state_dict', 'model'):
        if key in state_dict and isinstance(state_dict[key], dict):
            return state_dict[key]
    return state_dict


def _check_derived(key: str, value: torch.Tensor, model: nn.Module, buffers: Dict[str, torch.Tensor]) -> None:
    """Check a stored index / mask buffer against what the model computes (``buffers``: the model's named
    buffers, saved or not); raise if the window differs."""
    held = buffers.get(key)
    if held is not None:  # an index the model holds without saving it
        if held.shape != value.shape:
            raise ValueError(f'checkpoint key {key} has shape {tuple(value.shape)}, but the model computes '
                             f'{tuple(held.shape)}; create the model with the window_size (and overlap_ratio) it '
                             f'was trained with')
        if not torch.equal(value.to(held), held):
            raise ValueError(f'checkpoint key {key} holds other values than the model computes; is it a '
                             f'checkpoint of another architecture?')
        return
    name = key.rsplit('.', 1)[-1]
    owner = model.get_submodule(key.rsplit('.', 1)[0]) if '.' in key else model
    window = getattr(owner, 'window_size', None)
    if name != 'attn_mask' or not isinstance(window, int):
        return
    tokens = window * window
    if value.shape[-1] != tokens:
        raise ValueError(f'checkpoint key {key} has window masks of {value.shape[-1]} tokens, but the model uses '
                         f'{window}x{window} windows; create it with the window_size it was trained with')
    side = int(round(value.shape[0] ** 0.5)) * window
    if side * side == value.shape[0] * tokens and getattr(owner, 'shift_size', 0):
        expected = shifted_window_mask(side, side, window, owner.shift_size)
        if not torch.equal(value.to(expected), expected):
            raise ValueError(f'checkpoint key {key} is not the shifted-window mask this model computes')


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> Dict[str, torch.Tensor]:
    """Turn an official (SwinIR / KAIR / BasicSR / DRCT / HAT) or densezoo checkpoint into this model's state dict.

    Raises ``ValueError`` naming the first key or shape that does not fit ``model`` (e.g. a checkpoint of another
    scale or model).
    """
    state_dict = unwrap_checkpoint(state_dict, getattr(model, 'checkpoint_key', 'params'))
    if any(key.startswith('module.') for key in state_dict):
        state_dict = {key[len('module.'):] if key.startswith('module.') else key: value
                      for key, value in state_dict.items()}
    own = model.state_dict()
    buffers = dict(model.named_buffers())
    out = {}
    for key, value in state_dict.items():
        if key.rsplit('.', 1)[-1] in _DERIVED_KEYS and key not in own:
            _check_derived(key, value, model, buffers)
            continue
        out[key] = value
    name = getattr(model, 'pretrained_cfg', {}).get('architecture') or type(model).__name__
    for key, value in out.items():
        if key not in own:
            raise ValueError(f'checkpoint does not fit {name}: it has key {key} ({_shape(value)}) that the model '
                             f'lacks; is it a checkpoint of another model or configuration?')
        if own[key].shape != value.shape:
            raise ValueError(f'checkpoint does not fit {name}: {key} has shape {_shape(value)} in the checkpoint '
                             f'and {_shape(own[key])} in the model; is it a checkpoint of another scale or '
                             f'configuration?')
    missing = [key for key in own if key not in out and '.connection.' not in f'.{key}']
    if missing:
        raise ValueError(f'checkpoint does not fit {name}: it lacks {missing[0]} ({_shape(own[missing[0]])})'
                         f'{f" and {len(missing) - 1} more keys" if len(missing) > 1 else ""}; is it a checkpoint '
                         f'of another model or configuration?')
    return out


def official_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """``model``'s weights as the official implementation stores them: its state dict plus the derived buffers
    (``official_buffers``) that ``checkpoint_filter_fn`` drops when loading. A connected model has no official
    counterpart and raises ``ValueError``."""
    state = model.state_dict()
    if any(key.startswith('connection.') for key in state):
        raise ValueError(f'{type(model).__name__} has a {getattr(model, "connection_kind", "")} connection between '
                         f'its groups, which the official model lacks; only plain models have an official layout')
    buffers = model.official_buffers() if hasattr(model, 'official_buffers') else {}
    return {**{key: value.clone() for key, value in buffers.items()}, **state}


def _shape(value) -> str:
    return 'x'.join(map(str, value.shape)) if hasattr(value, 'shape') else type(value).__name__


# ---------------------------------------------------------------------------------------------------------------
# registration

def connected_sr_cfgs(cfgs: Mapping[str, dict], kinds: Iterable[str]) -> Dict[str, dict]:
    """Pretrained cfgs of the connected variants ``<arch>_<kind>.<tag>``: the plain model's release weights."""
    out = {}
    for name, cfg in cfgs.items():
        arch, tag = name.split('.')
        for kind in kinds:
            out[f'{arch}_{kind}.{tag}'] = dict(cfg, notes=(f'Weights of {name}; the {kind} connection starts at '
                                                           f'its initial values (the plain network).',
                                                           *cfg.get('notes', ())))
    return out


def create_sr_model(cls: type, variant: str, pretrained: bool = False, filter_fn: Callable = checkpoint_filter_fn,
                    **kwargs) -> nn.Module:
    """Build a registered SR model of class ``cls`` through timm (``kwargs``: the configuration's arguments with the
    user's overrides; a connected class also takes ``connection`` and ``connection_args``).

    ``pretrained_cfg_overlay=dict(file=...)`` loads an official or densezoo checkpoint through ``filter_fn``.
    """
    for key in ('features_only', 'num_classes', 'global_pool'):
        if kwargs.get(key):
            raise TypeError(f'{variant} is an image-to-image model; {key}={kwargs[key]!r} does not apply')
        kwargs.pop(key, None)
    if pretrained:
        cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
                                     pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'))
        if not (cfg.url or cfg.file or cfg.hf_hub_id or cfg.state_dict):
            where = ' '.join(cfg.notes or ()) or (f'get them from {cfg.origin_url} and load them with '
                                                  f'pretrained_cfg_overlay=dict(file=...)')
            raise ValueError(f'{variant} has no downloadable weights: {where}')

    def build(num_classes: int = 0, device=None, dtype=None, **args):  # timm's builder adds num_classes
        with torch.device(device) if device is not None else contextlib.nullcontext():
            model = cls(**args)
        return model.to(dtype=dtype) if dtype is not None else model

    return build_model_with_cfg(build, variant, pretrained, pretrained_filter_fn=filter_fn, **kwargs)
