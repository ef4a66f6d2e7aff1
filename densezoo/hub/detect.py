"""Recognise an SR checkpoint from its tensors alone: family, registered name and every constructor argument.

``detect_sr(state_dict)`` reads the official release layouts of SwinIR (KAIR), DRCT and HAT (BasicSR), RCAN
(BasicSR and the original EDSR-PyTorch layout) and RDN (EDSR-PyTorch), and densezoo's own state dicts (the same
names, optionally a ``dwa`` / ``mudd`` connection). Key names and shapes give every argument but three, which the
releases fix: SwinIR's ``img_range`` (255 for the window-7 JPEG models, else 1), HAT's ``conv_scale`` (0.01) and
RCAN's ``res_scale`` (1). How each argument is read: docs/sr-models.md.
"""
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import timm
import torch

from densezoo.models import drct, hat, rcan, rdn, swinir
from densezoo.models._sr import RGB_MEAN, unwrap_checkpoint
from densezoo.hub.runs import LoadError

__all__ = ['DetectedSR', 'detect_sr', 'sr_weights', 'FAMILY_CONFIGS']

#: family -> its registered configurations (name -> arguments)
FAMILY_CONFIGS = {'SwinIR': swinir.CONFIGS, 'DRCT': drct.CONFIGS, 'HAT': hat.CONFIGS, 'RCAN': rcan.CONFIGS,
                  'RDN': rdn.CONFIGS}

#: parameter name of a connection -> its kind (densezoo state dicts of connected models)
_CONNECTION_PARAMS = {'alphas': 'dwa', 'w1': 'mudd'}


@dataclass
class DetectedSR:
    """What a checkpoint holds: ``create_model(name, **kwargs)`` builds the model its weights load into strictly."""
    family: str
    name: str  # the registered model it is built as
    kwargs: Dict[str, Any]  # every detected argument (equal to the registered ones where they agree)
    layout: str  # 'official', 'EDSR-PyTorch', 'BasicSR' or 'densezoo'
    overrides: Dict[str, Any] = field(default_factory=dict)  # the arguments that differ from ``name``'s
    connection: str = ''

    @property
    def scale(self) -> int:
        return self.kwargs['upscale']

    @property
    def in_chans(self) -> int:
        return self.kwargs.get('in_chans', self.kwargs.get('num_in_ch', 3))

    def summary(self) -> Dict[str, Any]:
        """The headline facts: family, scale, channels, width, depths, window, upsampler (those that apply)."""
        k = self.kwargs
        facts = dict(family=self.family, name=self.name, scale=self.scale, channels=self.in_chans)
        if self.family in ('SwinIR', 'DRCT', 'HAT'):
            depths = [5] * len(k['depths']) if self.family == 'DRCT' else list(k['depths'])  # DRCT: 5 per group
            facts.update(width=k['embed_dim'], depths=depths, heads=list(k['num_heads']),
                         window=k['window_size'], upsampler=k['upsampler'] or 'none (same size)')
        elif self.family == 'RCAN':
            facts.update(width=k['num_feat'], depths=[k['num_block']] * k['num_group'], upsampler='pixelshuffle')
        else:
            facts.update(width=k['num_features'], depths=[k['num_layers']] * k['num_blocks'],
                         growth=k['growth_rate'], upsampler='pixelshuffle')
        if self.connection:
            facts['connection'] = self.connection
        facts['layout'] = self.layout
        return facts

    def __str__(self) -> str:
        facts = self.summary()
        depths = facts['depths']
        depth = f'{len(depths)}x{depths[0]}' if len(set(depths)) == 1 else '+'.join(map(str, depths))
        parts = [f'{self.family} x{self.scale}', f'{facts["channels"]} channel{"s" * (facts["channels"] != 1)}',
                 f'width {facts["width"]}', f'depth {depth}']
        if 'window' in facts:
            parts.append(f'window {facts["window"]}')
        parts.append(f'upsampler {facts["upsampler"]}')
        if self.connection:
            parts.append(f'{self.connection} connection')
        built = f'{self.name}' + (f' with {", ".join(f"{k}={v}" for k, v in self.overrides.items())}'
                                  if self.overrides else '')
        return f'{", ".join(parts)} ({self.layout} layout); built as {built}'


# ---------------------------------------------------------------------------------------------------------------
# reading the tensors

def _count(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    """How many consecutive indices ``i`` (from 0) give a key ``pattern.format(i)``."""
    count = 0
    while pattern.format(count) in state:
        count += 1
    return count


def _shape(state: Mapping[str, torch.Tensor], key: str) -> Tuple[int, ...]:
    return tuple(state[key].shape)


def _window(table_rows: int) -> int:
    """Window side of a (2w − 1)² relative-position table."""
    side = math.isqrt(table_rows)
    return (side + 1) // 2


def _ratio(hidden: int, dim: int):
    ratio = hidden / dim
    return int(ratio) if ratio == int(ratio) else ratio


def _pixelshuffle_scale(state, prefix: str, num_feat: int) -> int:
    """Scale of a conv + PixelShuffle stack (``prefix.0``, ``prefix.2``, ...): one conv to 9·C for ×3, else one
    conv to 4·C per factor 2."""
    convs = [key for key in state if re.fullmatch(rf'{re.escape(prefix)}\.\d+\.weight', key)]
    if len(convs) == 1 and _shape(state, convs[0])[0] == 9 * num_feat:
        return 3
    return 2 ** len(convs)


def _window_body(state, family: str) -> Dict[str, Any]:
    """Arguments shared by the SwinIR-style families: channels, width, window, reconstruction."""
    in_chans = _shape(state, 'conv_first.weight')[1]
    embed_dim = _shape(state, 'conv_first.weight')[0]
    args = dict(in_chans=in_chans, embed_dim=embed_dim)
    if 'conv_up1.weight' in state:
        args.update(upsampler='nearest+conv', upscale=4 if 'conv_up2.weight' in state else 2,
                    num_feat=_shape(state, 'conv_before_upsample.0.weight')[0])
    elif 'conv_before_upsample.0.weight' in state:
        num_feat = _shape(state, 'conv_before_upsample.0.weight')[0]
        args.update(upsampler='pixelshuffle', upscale=_pixelshuffle_scale(state, 'upsample', num_feat),
                    num_feat=num_feat)
    elif 'upsample.0.weight' in state:
        args.update(upsampler='pixelshuffledirect',
                    upscale=math.isqrt(_shape(state, 'upsample.0.weight')[0] // in_chans))
    else:
        args.update(upsampler='', upscale=1)
    if family != 'SwinIR':
        args.pop('num_feat', None)
    elif args.get('num_feat') == 64:
        args.pop('num_feat')  # SwinIR's fixed reconstruction width (not a constructor argument)
    args['resi_connection'] = '3conv' if 'conv_after_body.0.weight' in state else (
        '1conv' if 'conv_after_body.weight' in state else 'identity')
    return args


def _img_size(state, mask_key: str, window: int, default: int) -> int:
    """The training patch size, where a stored shifted-window mask tells it (else ``default``)."""
    mask = state.get(mask_key)
    if mask is None:
        return default
    return math.isqrt(mask.shape[0]) * window


def _swinir(state) -> Dict[str, Any]:
    args = _window_body(state, 'SwinIR')
    groups = _count(state, 'layers.{}.residual_group.blocks.0.norm1.weight')
    args['depths'] = tuple(_count(state, f'layers.{i}.residual_group.blocks.{{}}.norm1.weight') for i in range(groups))
    tables = [_shape(state, f'layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table')
              for i in range(groups)]
    args['num_heads'] = tuple(table[1] for table in tables)
    args['window_size'] = window = _window(tables[0][0])
    args['mlp_ratio'] = _ratio(_shape(state, 'layers.0.residual_group.blocks.0.mlp.fc1.weight')[0], args['embed_dim'])
    args['img_range'] = 255. if window == 7 else 1.  # the JPEG artifact-removal releases (window 7) work on 0..255
    default = 126 if window == 7 else (128 if args['upscale'] == 1 else 64)
    args['img_size'] = _img_size(state, 'layers.0.residual_group.blocks.1.attn_mask', window, default)
    return args


def _drct(state) -> Dict[str, Any]:
    args = _window_body(state, 'DRCT')
    groups = _count(state, 'layers.{}.swin1.norm1.weight')
    args['depths'] = (6,) * groups  # each group has five Swin layers whatever depths says; the releases give 6
    args['num_heads'] = tuple(_shape(state, f'layers.{i}.swin1.attn.relative_position_bias_table')[1]
                              for i in range(groups))
    args['window_size'] = window = _window(_shape(state, 'layers.0.swin1.attn.relative_position_bias_table')[0])
    args['mlp_ratio'] = _ratio(_shape(state, 'layers.0.swin1.mlp.fc1.weight')[0], args['embed_dim'])
    args['gc'] = _shape(state, 'layers.0.adjust1.weight')[0]
    args['img_size'] = _img_size(state, 'layers.0.swin2.attn_mask', window, 64)
    return args


def _hat(state) -> Dict[str, Any]:
    args = _window_body(state, 'HAT')
    block = 'layers.{}.residual_group.blocks.0.'
    groups = _count(state, block + 'norm1.weight')
    args['depths'] = tuple(_count(state, f'layers.{i}.residual_group.blocks.{{}}.norm1.weight') for i in range(groups))
    args['num_heads'] = tuple(_shape(state, block.format(i) + 'attn.relative_position_bias_table')[1]
                              for i in range(groups))
    window = _window(_shape(state, block.format(0) + 'attn.relative_position_bias_table')[0])
    overlap_side = math.isqrt(_shape(state, 'layers.0.residual_group.overlap_attn.relative_position_bias_table')[0])
    overlap = overlap_side + 1 - window  # the table is (ws + ows − 1)²
    dim = args['embed_dim']
    args.update(window_size=window, overlap_ratio=(overlap - window) / window,
                compress_ratio=dim // _shape(state, block.format(0) + 'conv_block.cab.0.weight')[0],
                squeeze_factor=dim // _shape(state, block.format(0) + 'conv_block.cab.3.attention.1.weight')[0],
                mlp_ratio=_ratio(_shape(state, block.format(0) + 'mlp.fc1.weight')[0], dim))
    return args


def _rcan_basicsr(state) -> Dict[str, Any]:
    num_feat = _shape(state, 'conv_first.weight')[0]
    return dict(num_in_ch=_shape(state, 'conv_first.weight')[1], num_out_ch=_shape(state, 'conv_last.weight')[0],
                num_feat=num_feat, num_group=_count(state, 'body.{}.conv.weight'),
                num_block=_count(state, 'body.0.residual_group.{}.rcab.0.weight'),
                squeeze_factor=num_feat // _shape(state, 'body.0.residual_group.0.rcab.3.attention.1.weight')[0],
                upscale=_pixelshuffle_scale(state, 'upsample', num_feat) if 'upsample.0.weight' in state else 1,
                res_scale=1, img_range=255., rgb_mean=RGB_MEAN)


def _rcan_original(state) -> Dict[str, Any]:
    num_feat = _shape(state, 'head.0.weight')[0]
    groups = _count(state, 'body.{}.body.0.body.0.weight')
    args = dict(num_in_ch=_shape(state, 'head.0.weight')[1], num_out_ch=_shape(state, 'tail.1.weight')[0],
                num_feat=num_feat, num_group=groups, num_block=_count(state, 'body.0.body.{}.body.0.weight'),
                squeeze_factor=num_feat // _shape(state, 'body.0.body.0.body.3.conv_du.0.weight')[0],
                upscale=_pixelshuffle_scale(state, 'tail.0', num_feat), res_scale=1, img_range=255.,
                rgb_mean=RGB_MEAN)
    bias = state.get('add_mean.bias')
    if bias is not None:  # the mean the original model adds back: img_range · rgb_mean
        mean = tuple(round(v / 255., 4) for v in bias.float().flatten().tolist())
        if any(abs(a - b) > 1e-3 for a, b in zip(mean, RGB_MEAN)) or len(mean) != len(RGB_MEAN):
            args['rgb_mean'] = mean
    return args


def _rdn(state) -> Dict[str, Any]:
    features, in_chans, kernel, _ = _shape(state, 'SFENet1.weight')
    growth = _shape(state, 'RDBs.0.convs.0.conv.0.weight')[0]
    if 'UPNet.4.weight' in state:
        upscale = 4
    else:
        upscale = math.isqrt(_shape(state, 'UPNet.0.weight')[0] // growth)
    return dict(upscale=upscale, in_chans=in_chans, num_features=features, growth_rate=growth,
                num_blocks=_count(state, 'RDBs.{}.LFF.weight'),
                num_layers=_count(state, 'RDBs.0.convs.{}.conv.0.weight'),
                kernel_size=kernel, img_range=255.)


#: (family, layout, keys that identify it, reader); tried in this order
_LAYOUTS: Tuple[Tuple[str, str, Tuple[str, ...], Callable], ...] = (
    ('DRCT', 'official', ('layers.0.swin1.attn.relative_position_bias_table', 'layers.0.adjust1.weight'), _drct),
    ('HAT', 'official', ('layers.0.residual_group.blocks.0.conv_block.cab.0.weight',
                         'layers.0.residual_group.overlap_attn.relative_position_bias_table'), _hat),
    ('SwinIR', 'official', ('conv_first.weight', 'layers.0.residual_group.blocks.0.attn.relative_position_bias_table'),
     _swinir),
    ('RCAN', 'BasicSR', ('conv_first.weight', 'body.0.residual_group.0.rcab.3.attention.1.weight'), _rcan_basicsr),
    ('RCAN', 'EDSR-PyTorch', ('head.0.weight', 'body.0.body.0.body.3.conv_du.0.weight', 'tail.1.weight'),
     _rcan_original),
    ('RDN', 'EDSR-PyTorch', ('SFENet1.weight', 'RDBs.0.convs.0.conv.0.weight', 'GFF.0.weight'), _rdn),
)

_LOOKED_FOR = ('SwinIR (layers.0.residual_group.blocks.0.attn.*), DRCT (layers.0.swin1.*, layers.0.adjust1.*), '
               'HAT (...blocks.0.conv_block.cab.*, ...overlap_attn.*), RCAN (body.0.residual_group.0.rcab.* or '
               'head.0.* with body.0.body.0.body.3.conv_du.*), RDN (SFENet1.*, RDBs.0.convs.*)')


# ---------------------------------------------------------------------------------------------------------------
# matching a registered model

def _agree(a, b) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_agree(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= 1e-6 * max(1., abs(a), abs(b))
    return a == b


def _registered(family: str, args: Dict[str, Any]) -> Tuple[str, Dict[str, Any]]:
    """The registered configuration closest to ``args`` and the arguments that differ from it."""
    best, best_score = None, -1
    for name, config in FAMILY_CONFIGS[family].items():
        score = sum(_agree(config.get(key, _default(family, key)), value) for key, value in args.items())
        if score > best_score:
            best, best_score = name, score
    config = FAMILY_CONFIGS[family][best]
    overrides = {key: value for key, value in args.items()
                 if not _agree(config.get(key, _default(family, key)), value)}
    return best, overrides


def _default(family: str, key: str):
    defaults = dict(in_chans=3, num_in_ch=3, num_out_ch=3, num_feat=64)
    return defaults.get(key)


def sr_weights(state_dict: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """The tensors inside a BasicSR / KAIR / training checkpoint, without a ``module.`` prefix."""
    state = unwrap_checkpoint(dict(state_dict), 'params_ema')
    if not all(isinstance(value, torch.Tensor) for value in state.values()):
        found = ', '.join(sorted(str(key) for key in state)[:5])
        raise LoadError(f'the checkpoint holds no state dict of tensors (keys: {found}); expected the weights '
                        f'themselves or a dict with params / params_ema / state_dict / model')
    return {key[len('module.'):] if key.startswith('module.') else key: value for key, value in state.items()}


def detect_sr(state_dict: Mapping[str, Any], source: str = 'the checkpoint') -> DetectedSR:
    """The SR architecture and arguments of ``state_dict`` (a state dict or a release file's dict); a one-line
    ``LoadError`` says what was looked for when nothing fits."""
    state = sr_weights(state_dict)
    for family, layout, keys, read in _LAYOUTS:
        if all(key in state for key in keys):
            break
    else:
        sample = ', '.join(list(state)[:4]) or 'none'
        raise LoadError(f'{source} is not an SR checkpoint densezoo recognises: looked for {_LOOKED_FOR}; its '
                        f'first keys are {sample}')
    try:
        args = read(state)
    except (KeyError, IndexError, ValueError, ZeroDivisionError) as err:
        raise LoadError(f'{source} looks like a {family} checkpoint but lacks what its arguments are read from '
                        f'({type(err).__name__}: {err})') from None
    connection = _connection(state, source)
    if connection and layout == 'official':
        layout = 'densezoo'
    name, overrides = _registered(family, args)
    if connection:
        name = f'{name}_{connection}'
    return DetectedSR(family=family, name=name, kwargs=args, layout=layout, overrides=overrides,
                      connection=connection)


def _connection(state: Mapping[str, torch.Tensor], source: str) -> str:
    names = {key.split('.')[1] for key in state if key.startswith('connection.')}
    if not names:
        return ''
    kinds = {_CONNECTION_PARAMS[n] for n in names if n in _CONNECTION_PARAMS}
    if len(kinds) != 1:
        raise LoadError(f'{source} holds connection parameters ({", ".join(sorted(names))}) of no registered SR '
                        f'connection (dwa, mudd); load the run folder it came from, whose config names it')
    return kinds.pop()


def describe(family: str, args: Dict[str, Any], name: str, layout: str, connection: str = '') -> DetectedSR:
    """A ``DetectedSR`` for a model known by name and arguments (a densezoo run)."""
    _, overrides = _registered(family, args)
    return DetectedSR(family=family, name=name, kwargs=args, layout=layout, overrides=overrides,
                      connection=connection)


def registered_family(name: str) -> Optional[str]:
    """The SR family of registered model ``name`` (None for a model of another task): the family whose
    configurations hold the architecture its entrypoint builds."""
    base = name.split('.')[0]
    if not timm.models.is_model(base):
        return None
    arch = getattr(timm.models.model_entrypoint(base), 'arch', None)
    return next((family for family, configs in FAMILY_CONFIGS.items() if arch in configs), None)
