"""PVT v1 and PVT v2: parameter counts, parity with timm and the official model, checkpoints, timm API, bad input.

How we know the numbers are right:
- Parameter counts of the plain models are those of the official configurations (PVT repository, classification/
  pvt.py and pvt_v2.py, instantiated: PVT-Tiny 13,229,288 ... PVTv2-B5 81,956,008; README 13.2M ... 82.0M).
  Connection parameters are counted here from the connections' definitions, independently of the library.
- PVT v2 reference: timm's own ``PyramidVisionTransformerV2`` with the same weights.
- PVT v1 reference: the official ``classification/pvt.py`` was run outside this repository with random weights
  (norm affine parameters and biases perturbed) on 224x224, 256x320 and 160x160 inputs and its state dict loaded
  through ``checkpoint_filter_fn``: PVT-Tiny and PVT-Small outputs matched to max |diff| 9.5e-7 with timm's fused
  (SDPA) attention and exactly (0.0) with timm's unfused attention path; ``pvt_tiny_mudd`` at initialisation
  matched the same way. The tests below check the official key layout (built from the official code's structure,
  see ``official_v1_state``) and the properties that parity rests on, without the official code.
"""
import copy
import io
import logging
import math
import sys

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import group_parameters
from timm.models.pvt_v2 import Block as TimmPvtV2Block, PyramidVisionTransformerV2

import densezoo
import densezoo.models.pvt as pvt
from densezoo.models.connect import model_family
from densezoo.models.pvt import PVT_ARCHS, PVT_V2_ARCHS, PvtBlock, block_streams
from tests.helpers import (assert_bfloat16_autocast_close, assert_checkpointing_keeps_gradients, one_line,
                           perturb_connections, perturb_norms, plain_state, traced_to_head)

KINDS = ('dwa', 'mudd', 'rir', 'dense')
BASES = [*PVT_ARCHS, *PVT_V2_ARCHS]
CONNECTED = [f'{base}_{kind}' for base in BASES for kind in KINDS]
NAMES = sorted([*PVT_ARCHS, *CONNECTED])

PUBLISHED = {  # official configurations, counted (README: 13.2M, 24.5M, 44.2M, 61.4M, 3.7M, 14.0M, 25.4M, ...)
    'pvt_tiny': 13_229_288, 'pvt_small': 24_485_864, 'pvt_medium': 44_208_104, 'pvt_large': 61_369_320,
    'pvt_v2_b0': 3_666_760, 'pvt_v2_b1': 14_009_000, 'pvt_v2_b2': 25_362_856, 'pvt_v2_b2_li': 22_553_512,
    'pvt_v2_b3': 45_238_696, 'pvt_v2_b4': 62_556_072, 'pvt_v2_b5': 81_956_008,
}


def split(name):
    base, kind = name.rsplit('_', 1)
    return (base, kind) if kind in KINDS else (name, None)


def arch(base):
    return PVT_ARCHS.get(base) or PVT_V2_ARCHS[base]


def small(base, **kwargs):
    """Reduced width and depth of ``base`` (keeping depths that its registered rir group size divides)."""
    depths = (2, 2, 2, 2) if math.gcd(*arch(base)['depths']) == 2 else (1, 2, 3, 2)
    args = dict(embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4), depths=depths)
    if base in PVT_ARCHS:
        args['img_size'] = 64
    return {**args, **kwargs}


def create(name, seed=0, connection_std=0.05, **kwargs):
    torch.manual_seed(seed)
    model = timm.create_model(name, **small(split(name)[0], **kwargs))
    return perturb_connections(perturb_norms(model, seed=seed), std=connection_std, seed=seed)


def image(batch=2, size=(64, 64), seed=1):
    return torch.randn((batch, 3, *size), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------------
# registry and structure at the registered size (meta device)

def test_registered_names_and_no_timm_name_is_shadowed():
    assert timm.list_models(module='pvt') == NAMES and len(NAMES) == 48
    timm_modules = [m for name, m in sys.modules.items() if name.startswith('timm.models.') and hasattr(m, '__all__')]
    for module in timm_modules:  # a timm model of the same name would be in its module's __all__
        assert not set(module.__all__) & set(NAMES), module.__name__
    assert 'timm.models.pvt' not in sys.modules


def _connection_params(kind, depths, dims, group_size):
    total = 0
    for depth, dim in zip(depths, dims):
        if kind == 'dwa':  # one scalar per (block, earlier output) pair
            total += depth * (depth + 3) // 2
        elif kind == 'mudd':  # 4 streams after every block but the last, hidden (C * L) // 64 * 64 + 64
            for i in range(depth):
                streams = 4 if i < depth - 1 else 1
                mixed = streams * (i + 2)
                hidden = mixed // 64 * 64 + 64
                total += hidden * dim + mixed * hidden + mixed
        elif kind == 'rir':  # a linear projection per group and one for the stage skip
            total += (depth // group_size + 1) * (dim * dim + dim)
        elif kind == 'dense':  # transition to 32 channels and fusion of D + 32 (i + 1) channels per block
            total += sum(32 * dim + 32 + dim * (dim + 32 * (i + 1)) + dim for i in range(depth))
    return total


def _meta(name, **kwargs):
    with torch.device('meta'):
        return timm.create_model(name, device='meta', **kwargs)


@pytest.fixture
def fast_meta_init(monkeypatch):
    """timm's PVT v2 initialises meta tensors through slow reference kernels, for values that do not exist: skip
    that (as densezoo's connected PVT v2 does)."""
    init = PyramidVisionTransformerV2._init_weights

    def skipping(self, module):
        if not any(p.is_meta for p in module.parameters(recurse=False)):
            init(self, module)

    monkeypatch.setattr(PyramidVisionTransformerV2, '_init_weights', skipping)


@pytest.mark.parametrize('base', BASES)
def test_every_registered_model_at_full_size(base, caplog, fast_meta_init):
    """Counts, names, cfgs and timm/plain weights of the four connected variants of ``base`` (meta device)."""
    plain = _meta(base)
    depths, dims = arch(base)['depths'], arch(base)['embed_dims']
    count = sum(p.numel() for p in plain.parameters())
    assert count == PUBLISHED[base]
    plain_state_dict = plain.state_dict()
    if base in PVT_ARCHS:
        assert plain.pretrained_cfg['url'] == f'https://github.com/whai362/PVT/releases/download/v2/{base}.pth'
    for kind in KINDS:
        model = _meta(f'{base}_{kind}')
        cfg = model.pretrained_cfg
        if base in PVT_V2_ARCHS:
            assert cfg['hf_hub_id'] == f'timm/{base}.in1k'
        else:
            assert cfg['url'] == plain.pretrained_cfg['url']
        assert cfg['first_conv'] + '.weight' in plain_state_dict and cfg['classifier'] + '.weight' in plain_state_dict
        group_size = math.gcd(*depths)
        assert sum(p.numel() for p in model.parameters()) == count + _connection_params(kind, depths, dims, group_size)
        assert [(n, p.shape) for n, p in model.named_parameters() if '.connection.' not in n] == \
               [(n, p.shape) for n, p in plain.named_parameters()]
        assert model.connection_args == {'dwa': {}, 'mudd': dict(num_streams=4), 'dense': dict(growth=32),
                                         'rir': dict(group_size=group_size, long_skip=True)}[kind]
        assert model_family(model) == ('PVT' if base in PVT_ARCHS else 'PVTv2')
        with caplog.at_level(logging.WARNING, logger='densezoo'):
            model.load_state_dict(plain_state_dict, strict=True)
        assert [i['num_chs'] for i in model.feature_info] == list(dims)
        assert [i['reduction'] for i in model.feature_info] == [4, 8, 16, 32]


# ---------------------------------------------------------------------------------------------------------------
# identity at initialisation, forward / backward

@pytest.mark.parametrize('base', BASES)
def test_connected_models_start_as_the_plain_one(base):
    plain = create(base).eval()
    x = image()
    with torch.no_grad():
        expected = plain(x)
    for kind in KINDS:
        torch.manual_seed(1)
        model = timm.create_model(f'{base}_{kind}', **small(base)).eval()
        model.load_state_dict(plain.state_dict(), strict=True)
        with torch.no_grad():
            out = model(x)
        assert (out - expected).abs().max() <= 1e-6, kind
        if kind == 'mudd':  # the streams start equal, so the 4-stream blocks reproduce the plain ones exactly
            assert torch.equal(out, expected)


@pytest.mark.parametrize('name', NAMES)
def test_forward_backward_reaches_every_parameter(name):
    model = create(name, num_classes=7).train()
    out = model(image())
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    model.eval()
    with torch.no_grad():
        before = model(image())
        model.set_grad_checkpointing()
        torch.testing.assert_close(model(image()), before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', ['pvt_v2_b2_li_mudd', 'pvt_small_mudd', 'pvt_v2_b1_dense'])
def test_grad_checkpointing_keeps_gradients(name):
    assert_checkpointing_keeps_gradients(create(name, drop_path_rate=0.), image())


# ---------------------------------------------------------------------------------------------------------------
# MUDD's four streams through spatial-reduction attention

BLOCKS = {
    'v2_sr4': lambda: TimmPvtV2Block(32, num_heads=2, sr_ratio=4, qkv_bias=True),
    'v2_sr1': lambda: TimmPvtV2Block(32, num_heads=2, sr_ratio=1, qkv_bias=True),
    'v2_linear': lambda: TimmPvtV2Block(32, num_heads=2, linear_attn=True, qkv_bias=True),
    'v1_sr2': lambda: PvtBlock(32, num_heads=2, sr_ratio=2),
    'v1_class_token': lambda: PvtBlock(32, num_heads=4, sr_ratio=1),
}


def _streams_reference(block, q, k, v, r, feat_size):
    """MUDD's stream semantics written with timm's modules as they are: the full kv projection of the reduced key
    (value) stream, keeping its key (value) half, and the unfused attention formula."""
    attn = block.attn
    B, N, C = q.shape

    def reduced(x):
        x = block.norm1(x)
        if attn.sr is None:
            return x
        x = x.transpose(1, 2).reshape(B, C, *feat_size)
        x = attn.sr(attn.pool(x) if attn.pool is not None else x).flatten(2).transpose(1, 2)
        return attn.act(attn.norm(x)) if attn.act is not None else attn.norm(x)

    heads = lambda t: t.unflatten(-1, (attn.num_heads, -1)).transpose(1, 2)  # noqa: E731
    keys, values = heads(attn.kv(reduced(k))[..., :C]), heads(attn.kv(reduced(v))[..., C:])
    weights = (heads(attn.q(block.norm1(q))) @ keys.transpose(-2, -1) * attn.head_dim ** -0.5).softmax(-1)
    h = r + attn.proj((weights @ values).transpose(1, 2).reshape(B, N, C))
    mlp_in = block.norm2(h)
    return h + (block.mlp(mlp_in, feat_size) if isinstance(block, TimmPvtV2Block) else block.mlp(mlp_in))


@pytest.mark.parametrize('kind', list(BLOCKS))
def test_block_streams(kind):
    torch.manual_seed(0)
    block = perturb_norms(BLOCKS[kind]()).eval()
    feat_size = (8, 6)
    tokens = 8 * 6 + (kind == 'v1_class_token')
    q, k, v, r = torch.randn(4, 2, tokens, 32, generator=torch.Generator().manual_seed(3)).unbind(0)
    with torch.no_grad():
        assert torch.equal(block_streams(block, r, r, r, r, feat_size), block(r, feat_size))
        out = block_streams(block, q, k, v, r, feat_size)
        torch.testing.assert_close(out, _streams_reference(block, q, k, v, r, feat_size), rtol=1e-5, atol=1e-5)
        for other in (block_streams(block, r, k, v, r, feat_size), block_streams(block, q, r, v, r, feat_size),
                      block_streams(block, q, k, r, r, feat_size)):
            assert not torch.allclose(other, out)  # every stream is used


# ---------------------------------------------------------------------------------------------------------------
# checkpoints

def official_v1_state(depths, embed_dims=(64, 128, 320, 512), mlp_ratios=(8, 8, 4, 4), sr_ratios=(8, 4, 2, 1),
                      img_size=224, in_chans=3, num_classes=1000, device='meta', seed=0):
    """A state dict with the entries (names, shapes and order) of the official ``PyramidVisionTransformer``.

    From the official classification/pvt.py: the constructor sets, for stage i = 1..4, ``patch_embed{i}`` (proj:
    Conv2d with kernel = stride = 4 in the first stage, 2 after; norm: LayerNorm), ``pos_embed{i}`` (1, patches,
    C; one more entry in the last stage, for the class token), ``block{i}`` (a ModuleList of Block: norm1,
    attn.q, attn.kv (C -> 2C), attn.sr and attn.norm when sr_ratio > 1, attn.proj, norm2, mlp.fc1, mlp.fc2), then
    ``norm``, ``cls_token`` (1, 1, C) and ``head``. The model's own parameters come first in its state dict. Running
    the official file gives 161 entries for PVT-Tiny and 301 for PVT-Small, as here.
    """
    generator = torch.Generator().manual_seed(seed)

    def tensor(*shape):
        return torch.randn(shape, generator=generator).to(device) * 0.1

    head, body = {}, {}
    grid = img_size // 4
    for i, (depth, dim, ratio, sr) in enumerate(zip(depths, embed_dims, mlp_ratios, sr_ratios), start=1):
        head[f'pos_embed{i}'] = tensor(1, grid * grid + (i == 4), dim)
        patch, prev = (4, in_chans) if i == 1 else (2, embed_dims[i - 2])
        body.update({f'patch_embed{i}.proj.weight': tensor(dim, prev, patch, patch),
                     f'patch_embed{i}.proj.bias': tensor(dim),
                     f'patch_embed{i}.norm.weight': tensor(dim), f'patch_embed{i}.norm.bias': tensor(dim)})
        for j in range(depth):
            p = f'block{i}.{j}.'
            body.update({p + 'norm1.weight': tensor(dim), p + 'norm1.bias': tensor(dim),
                         p + 'attn.q.weight': tensor(dim, dim), p + 'attn.q.bias': tensor(dim),
                         p + 'attn.kv.weight': tensor(2 * dim, dim), p + 'attn.kv.bias': tensor(2 * dim),
                         p + 'attn.proj.weight': tensor(dim, dim), p + 'attn.proj.bias': tensor(dim)})
            if sr > 1:
                body.update({p + 'attn.sr.weight': tensor(dim, dim, sr, sr), p + 'attn.sr.bias': tensor(dim),
                             p + 'attn.norm.weight': tensor(dim), p + 'attn.norm.bias': tensor(dim)})
            hidden = dim * ratio
            body.update({p + 'norm2.weight': tensor(dim), p + 'norm2.bias': tensor(dim),
                         p + 'mlp.fc1.weight': tensor(hidden, dim), p + 'mlp.fc1.bias': tensor(hidden),
                         p + 'mlp.fc2.weight': tensor(dim, hidden), p + 'mlp.fc2.bias': tensor(dim)})
        grid //= 2
    dim = embed_dims[-1]
    head['cls_token'] = tensor(1, 1, dim)
    body.update({'norm.weight': tensor(dim), 'norm.bias': tensor(dim),
                 'head.weight': tensor(num_classes, dim), 'head.bias': tensor(num_classes)})
    return {**head, **body}


@pytest.mark.parametrize('base', list(PVT_ARCHS))
def test_official_v1_checkpoint_loads_strictly(base):
    official = official_v1_state(arch(base)['depths'])
    assert len(official) == {'pvt_tiny': 161, 'pvt_small': 301}.get(base, len(official))
    assert sum(v.numel() for v in official.values()) == PUBLISHED[base]
    model = _meta(base)
    model.load_state_dict(pvt.checkpoint_filter_fn({'model': official}, model), strict=True)


def test_official_v1_checkpoint_values_land_in_place(tmp_path):
    official = official_v1_state((1, 2, 3, 2), embed_dims=(16, 32, 48, 64), img_size=64, device='cpu', num_classes=5)
    path = tmp_path / 'pvt_tiny.pth'
    torch.save({'model': official}, path)
    model = timm.create_model('pvt_small_dwa', pretrained=True, num_classes=5, **small('pvt_small'),
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=5))
    state = model.state_dict()
    for official_key, key in [('patch_embed1.proj.weight', 'patch_embed.proj.weight'),
                              ('patch_embed3.norm.bias', 'stages.2.downsample.norm.bias'),
                              ('pos_embed2', 'stages.1.pos_embed'), ('pos_embed4', 'stages.3.pos_embed'),
                              ('cls_token', 'stages.3.cls_token'),
                              ('block2.1.attn.kv.weight', 'stages.1.blocks.1.attn.kv.weight'),
                              ('block1.0.attn.sr.weight', 'stages.0.blocks.0.attn.sr.weight'),
                              ('block4.1.mlp.fc2.bias', 'stages.3.blocks.1.mlp.fc2.bias'),
                              ('norm.weight', 'norm.weight'), ('head.weight', 'head.weight')]:
        assert torch.equal(state[key], official[official_key]), official_key
    assert sum(v.numel() for v in official.values()) == sum(
        v.numel() for k, v in state.items() if '.connection.' not in k)


def _official_v2_state(state):
    """timm PVT v2 state in the official layout: ``patch_embed{1..4}``, ``block{s}.{j}``, ``norm{s}`` and
    ``mlp.dwconv.dwconv`` (timm's filter maps these to its names)."""
    out = {}
    for key, value in state.items():
        key = key.replace('patch_embed.', 'patch_embed1.').replace('mlp.dwconv.', 'mlp.dwconv.dwconv.')
        parts = key.split('.')
        if parts[0] == 'stages':
            stage = int(parts[1])
            if parts[2] == 'downsample':
                key = '.'.join([f'patch_embed{stage + 1}', *parts[3:]])
            elif parts[2] == 'blocks':
                key = '.'.join([f'block{stage + 1}', *parts[3:]])
            else:
                key = '.'.join([f'norm{stage + 1}', *parts[3:]])
        out[key] = value
    return out


@pytest.mark.parametrize('base', ['pvt_v2_b2_li', 'pvt_tiny'])
def test_timm_and_official_checkpoint_files_load_through_create_model(base, tmp_path):
    plain = create(base).eval()
    x = image()
    with torch.no_grad():
        expected = plain(x)
    files = {'native.safetensors': {k: v.contiguous() for k, v in plain.state_dict().items()}}
    if base in PVT_V2_ARCHS:
        files['official.pth'] = _official_v2_state(plain.state_dict())
        assert 'block1.0.mlp.dwconv.dwconv.weight' in files['official.pth'] and 'norm4.weight' in files['official.pth']
    for file_name, state in files.items():
        path = tmp_path / file_name
        save_file(state, str(path)) if file_name.endswith('safetensors') else torch.save(state, path)
        for kind in ('mudd', 'rir'):
            model = timm.create_model(f'{base}_{kind}', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                                      **small(base)).eval()
            with torch.no_grad():
                assert (model(x) - expected).abs().max() <= 1e-6, (file_name, kind)


def test_connected_checkpoint_round_trip():
    model = create('pvt_v2_b0_mudd')
    other = timm.create_model('pvt_v2_b0_mudd', **small('pvt_v2_b0'))
    other.load_state_dict(model.state_dict())
    assert all(torch.equal(other.state_dict()[k], v) for k, v in model.state_dict().items())
    buffer = io.BytesIO()
    torch.save(model.eval(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        expected = model(image())
        assert torch.equal(loaded(image()), expected) and torch.equal(copy.deepcopy(model)(image()), expected)


def test_v1_position_embeddings_follow_the_input_size(tmp_path):
    """Other input sizes resize the stored position embeddings bilinearly (as the official model does); a model
    created for that size from the same checkpoint, or resized with set_input_size, computes the same."""
    model = create('pvt_tiny_dwa').eval()
    x = image(size=(96, 128))
    path = tmp_path / 'pvt.safetensors'
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    sized = timm.create_model('pvt_tiny_dwa', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              **small('pvt_tiny', img_size=(96, 128), dynamic_img_size=False)).eval()
    assert sized.stages[0].pos_embed.shape == (1, 24 * 32, 16) and sized.stages[3].pos_embed.shape == (1, 1 + 12, 64)
    resized = copy.deepcopy(model)
    resized.set_input_size((96, 128))
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(resized(x), expected)
        torch.testing.assert_close(sized(x), expected, rtol=0, atol=1e-6)
        assert [tuple(f.shape[-2:]) for f in model.forward_intermediates(x, intermediates_only=True)] == \
               [(24, 32), (12, 16), (6, 8), (3, 4)]


# ---------------------------------------------------------------------------------------------------------------
# timm API

FEATURE_NAMES = ['pvt_v2_b0_dwa', 'pvt_v2_b2_li_mudd', 'pvt_v2_b5_rir', 'pvt_v2_b1_dense', 'pvt_tiny', 'pvt_small_mudd',
                 'pvt_medium_rir', 'pvt_large_dense']
#: every connection and both families, each path once
SOME_NAMES = ['pvt_v2_b0_dwa', 'pvt_v2_b2_li_mudd', 'pvt_v2_b1_dense', 'pvt_tiny', 'pvt_small_mudd', 'pvt_medium_rir']


@pytest.mark.parametrize('name', FEATURE_NAMES)
def test_features_and_intermediates(name):
    v1 = split(name)[0] in PVT_ARCHS
    model = create(name).eval()
    x = image()
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
        assert [tuple(m.shape) for m in maps] == [(2, 16, 16, 16), (2, 32, 8, 8), (2, 48, 4, 4), (2, 64, 2, 2)]
        torch.testing.assert_close(model.forward_intermediates(x, indices=2, intermediates_only=True), maps[2:])
        if v1:  # the class token goes first and is left out of the map; norm=True applies the final norm
            assert final.shape == (2, 1 + 4, 64)
            normed = model.forward_intermediates(x, indices=[3], norm=True, intermediates_only=True)[0]
            torch.testing.assert_close(normed, final[:, 1:].reshape(2, 2, 2, 64).permute(0, 3, 1, 2))
        for feature_cls in ([None, 'getter'] if not v1 else [None]):
            kwargs = {} if feature_cls is None else dict(feature_cls=feature_cls)
            features = create(name, features_only=True, **kwargs).eval()
            assert features.feature_info.reduction() == [4, 8, 16, 32]
            assert features.feature_info.channels() == [16, 32, 48, 64]
            for got, want in zip(features(x), maps):
                torch.testing.assert_close(got, want)
        last_two = create(name, features_only=True, out_indices=(2, 3)).eval()
        assert [tuple(f.shape) for f in last_two(x)] == [(2, 48, 4, 4), (2, 64, 2, 2)]


@pytest.mark.parametrize('name', SOME_NAMES)
def test_prune_intermediate_layers(name):
    model = create(name).eval()
    x = image()
    with torch.no_grad():
        expected = model(x)
        taps = model.forward_intermediates(x, intermediates_only=True)
        kept = copy.deepcopy(model)
        kept.prune_intermediate_layers([3], prune_head=False)
        torch.testing.assert_close(kept(x), expected)
    for i in range(4):
        with torch.no_grad():
            early = model.forward_intermediates(x, indices=[i], stop_early=True, intermediates_only=True)
            torch.testing.assert_close(early[0], taps[i])
        pruned = copy.deepcopy(model)
        assert pruned.prune_intermediate_layers([i], prune_norm=True) == [i] and len(pruned.stages) == i + 1
        pruned.train()
        selected = pruned.forward_intermediates(x, indices=[i], intermediates_only=True)[0]
        features = pruned.forward_features(x)
        torch.testing.assert_close(selected, taps[i])
        (selected.sum() + features.sum()).backward()
        assert not [n for n, p in pruned.named_parameters() if p.grad is None]
        with torch.no_grad():
            torch.testing.assert_close(pruned.eval()(x), features)  # no head, no pooling


@pytest.mark.parametrize('name', SOME_NAMES)
def test_fx_forward_and_backward(name):
    model = create(name, drop_path_rate=0.).train()
    x = image(size=(64, 96))  # another size than the stored position embeddings: resizing is in the graph
    traced_to_head(model, x, 'head', rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', ['pvt_v2_b2_li_mudd', 'pvt_small_dense', 'pvt_tiny'])
def test_autocast_bfloat16(name):
    # connections moved less far from identity: MUDD's generated weights at std 0.05 amplify bfloat16 rounding
    model = create(name, connection_std=0.01).eval()
    assert_bfloat16_autocast_close(model, image(), tolerance=0.03)  # measured: about 0.01


@pytest.mark.parametrize('name', ['pvt_v2_b0_mudd', 'pvt_tiny', 'pvt_small_dwa'])
def test_head_pooling_and_classifier_reset(name):
    model = create(name).eval()
    x = image()
    v1 = split(name)[0] in PVT_ARCHS
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == ((2, 5, 64) if v1 else (2, 64, 2, 2))  # v1: class token + 2 x 2 patch tokens
        pre_logits = model.forward_head(features, pre_logits=True)
        torch.testing.assert_close(pre_logits, features[:, 0] if v1 else features.mean((-1, -2)))
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pre_logits)
        model.reset_classifier(0, 'avg')
        torch.testing.assert_close(model(x), features[:, 1:].mean(1) if v1 else features.mean((-1, -2)))
        model.reset_classifier(0, '')
        torch.testing.assert_close(model(x), features)
        model.reset_classifier(3, 'avg')
        assert model(x).shape == (2, 3) and model.get_classifier().out_features == 3
        model.to(torch.bfloat16)
        assert model(x.bfloat16()).dtype == torch.bfloat16
    if v1:
        with torch.device('meta'):
            full = timm.create_model(name.replace('dwa', 'rir'), device='meta')
            assert full.forward_features(torch.empty(1, 3, 224, 224)).shape == (1, 50, 512)
    else:
        assert timm.create_model(name, num_classes=0, global_pool='', **small('pvt_v2_b0'))(
            torch.randn(1, 3, 224, 224)).shape == (1, 64, 7, 7)  # pool_size (7, 7) at the cfg's 224


@pytest.mark.parametrize('name', ['pvt_v2_b2_dwa', 'pvt_medium_mudd', 'pvt_large'])
def test_optimizer_groups_and_no_weight_decay(name):
    model = _meta(name)
    with pytest.raises(TypeError):
        timm.create_model(name, device='meta', not_a_model_arg=1)
    groups = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    coarse = group_parameters(model, model.group_matcher(coarse=True), reverse=True)
    assert len(set(coarse.values())) == 6  # stem, four stages (the final norm joins the last), head
    assert len(set(groups.values())) > len(model.stages) * 3
    for param_name, group in groups.items():
        if '.connection.' in param_name:  # right after the stage's blocks
            stage = param_name.split('.')[1]
            assert group == max(g for n, g in groups.items() if n.startswith(f'stages.{stage}.blocks.')) + 1
    no_decay = model.no_weight_decay()
    assert no_decay <= {n for n, _ in model.named_parameters()}
    assert ('stages.3.cls_token' in no_decay) == (split(name)[0] in PVT_ARCHS)
    assert any('.connection.' in n for n in no_decay) == (split(name)[1] in ('dwa', 'mudd'))


@pytest.mark.parametrize('name', ['pvt_tiny_mudd', 'pvt_v2_b0_dense'])
def test_meta_device_then_to_empty_and_init_weights(name):
    base = split(name)[0]
    model = timm.create_model(name, device='meta', **small(base))
    model = model.to_empty(device='cpu').eval()
    with torch.no_grad():
        for tensor in model.parameters():
            tensor.fill_(float('nan'))
    model.init_weights()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    plain = timm.create_model(base, **small(base)).eval()
    plain.load_state_dict(plain_state(model))
    with torch.no_grad():
        assert torch.equal(model(image()), plain(image()))


def test_plain_v1_compiles_with_torchscript():
    model = create('pvt_tiny').eval()
    scripted = torch.jit.script(model)
    x = image(size=(64, 96))
    with torch.no_grad():
        assert torch.equal(scripted(x), model(x))


def test_connect_rewires_plain_models_in_place():
    plain = timm.create_model('pvt_v2_b0', **small('pvt_v2_b0'))
    model = densezoo.connect(plain, 'mudd')
    assert model is plain and model.stages[0].connection.num_streams == 4
    single = densezoo.connect(timm.create_model('pvt_tiny', **small('pvt_tiny')), 'mudd', num_streams=1)
    assert single.stages[1].connection.num_streams == 1 and densezoo.connection_parameters(single)
    with pytest.raises(RuntimeError, match='cannot be compiled by TorchScript'):
        torch.jit.script(model)


# ---------------------------------------------------------------------------------------------------------------
# bad input

@pytest.mark.parametrize('name', ['pvt_v2_b0_dwa', 'pvt_tiny_mudd', 'pvt_tiny'])
@pytest.mark.parametrize('shape, message', [
    ((1, 1, 64, 64), r'^expected 3 input channels, got 1 \(input shape \(1, 1, 64, 64\)\); create the model with '
                     r'in_chans=1$'),
    ((3, 64, 64), r'^expected an image batch of shape \(B, 3, H, W\), got shape \(3, 64, 64\)$'),
])
def test_wrong_channels_or_dimensions(name, shape, message):
    model = create(name)
    features = create(name, features_only=True)
    for fn in (model, model.forward_features, model.forward_intermediates, features):
        with pytest.raises(ValueError, match=message) as info:
            fn(torch.randn(shape))
        one_line(info)


@pytest.mark.parametrize('kwargs, shape, message', [
    ({}, (1, 3, 64, 96), None),
    ({}, (1, 3, 70, 64), r'^input size 70x64 is not a multiple of 32, the total patch stride of PVT; resize or pad '
                         r'the image to a multiple of 32$'),
    (dict(dynamic_img_size=False), (1, 3, 96, 64),
     r'^input size 96x64 does not fit the position embeddings of img_size 64x64; create the model with '
     r'img_size=\(96, 64\) or dynamic_img_size=True, or call model\.set_input_size\(img_size=\(96, 64\)\)$'),
])
def test_v1_input_sizes(kwargs, shape, message):
    model = create('pvt_small_rir', **kwargs)
    if message is None:
        assert model(torch.randn(shape)).shape == (1, 1000)
        return
    for fn in (model, model.forward_intermediates, create('pvt_small_rir', features_only=True, **kwargs)):
        with pytest.raises(ValueError, match=message) as info:
            fn(torch.randn(shape))
        one_line(info)
    with pytest.raises(ValueError, match='is not a multiple of 32'):
        model.set_input_size((100, 64))


def test_checkpoint_of_another_size_names_the_first_entry_that_does_not_fit(tmp_path, fast_meta_init):
    model = _meta('pvt_tiny_dwa')
    with pytest.raises(ValueError, match=r"^checkpoint entry 'block1\.2\.norm1\.weight' \('stages\.0\.blocks\.2\."
                                         r"norm1\.weight' here\) has no place in this model; is it a checkpoint of "
                                         r"another model size\?$"):
        pvt.checkpoint_filter_fn(official_v1_state((3, 4, 6, 3)), model)
    with pytest.raises(ValueError, match=r"^the checkpoint has no entry for 'stages\.0\.blocks\.2\.norm1\.weight' "
                                         r"\(140 missing\); is it a checkpoint of another model size\?$"):
        pvt.checkpoint_filter_fn(official_v1_state((2, 2, 2, 2)), _meta('pvt_small'))
    b0 = _official_v2_state(timm.create_model('pvt_v2_b0', device='meta').state_dict())
    with pytest.raises(ValueError, match=r"^checkpoint entry 'patch_embed1\.proj\.weight' \('patch_embed\.proj\."
                                         r"weight' here\) has shape \(32, 3, 7, 7\) but the model expects \(64, 3, "
                                         r"7, 7\); is it a checkpoint of another model size\?$"):
        pvt.checkpoint_filter_fn(b0, _meta('pvt_v2_b1_mudd'))
    path = tmp_path / 'pvt_small.pth'
    torch.save(official_v1_state((3, 4, 6, 3), device='cpu', embed_dims=(16, 32, 48, 64), img_size=64), path)
    with pytest.raises(ValueError, match=r"^checkpoint entry 'block1\.2\.norm1\.weight'") as info:
        timm.create_model('pvt_tiny', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                          **small('pvt_tiny'))
    one_line(info)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match=r"^global_pool='max' is not allowed; choose one of \('token', 'avg', ''\)$"):
        create('pvt_tiny', global_pool='max')
    with pytest.raises(ValueError, match=r'^sr_ratios\[-1\]=2 is not allowed; the last stage holds the class token '
                                         r'and cannot reduce its tokens spatially, use 1$'):
        create('pvt_tiny', sr_ratios=(8, 4, 2, 2))
    with pytest.raises(ValueError, match=r'^mlp_ratios has 3 entries but depths has 4; give one per stage$'):
        create('pvt_tiny', mlp_ratios=(8, 8, 4))
    pruned = create('pvt_tiny')
    pruned.prune_intermediate_layers([1])
    with pytest.raises(ValueError, match=r"^global_pool='token' is not allowed; choose one of \('avg', ''\)$"):
        pruned.reset_classifier(3, 'token')
    with pytest.raises(ValueError, match=r"^output_fmt='NHWC' is not supported; PVT intermediates are 'NCHW'$"):
        pruned.forward_intermediates(image(), output_fmt='NHWC')
    with pytest.raises(ValueError, match=r'^stages\.0: group_size=2 does not divide the 1 blocks of the stage'):
        create('pvt_v2_b0_rir', depths=(1, 2, 2, 2))
