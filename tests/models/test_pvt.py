"""PVT v1 and PVT v2: parameter counts, parity with timm and the official model, checkpoints, PVT's pooling and
optimizer groups, bad input (the timm model contract of every registered model: tests/models/test_contract.py).

How we know the numbers are right:
- Parameter counts of the plain models are those of the official configurations (PVT repository, classification/
  pvt.py and pvt_v2.py, instantiated: PVT-Tiny 13,229,288 ... PVTv2-B5 81,956,008; README 13.2M ... 82.0M).
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
import math
import sys

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import group_parameters
from timm.models.pvt_v2 import PyramidVisionTransformerV2

import densezoo
from densezoo.models import pvt, pvtv2
from densezoo.models.connect import model_family
from densezoo.models.pvt import PVT_ARCHS
from densezoo.models.pvtv2 import PVT_V2_ARCHS
from tests.helpers import one_line, perturb_connections, perturb_norms, plain_state

KINDS = ('dwa', 'mudd', 'rir', 'dense')
BASES = [*PVT_ARCHS, *PVT_V2_ARCHS]
CONNECTED = [f'{base}_{kind}' for base in BASES for kind in KINDS]
NAMES = sorted([*PVT_ARCHS, *CONNECTED])
V1_NAMES = sorted([*PVT_ARCHS, *(f'{base}_{kind}' for base in PVT_ARCHS for kind in KINDS)])
V2_NAMES = sorted(f'{base}_{kind}' for base in PVT_V2_ARCHS for kind in KINDS)

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


def create(name, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = timm.create_model(name, **small(split(name)[0], **kwargs))
    return perturb_connections(perturb_norms(model, seed=seed), seed=seed)


def image(batch=2, size=(64, 64), seed=1):
    return torch.randn((batch, 3, *size), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------------
# registry and structure at the registered size (meta device)

def test_registered_names_and_no_timm_name_is_shadowed():
    assert timm.list_models(module='pvt') == V1_NAMES and len(V1_NAMES) == 20
    assert timm.list_models(module='pvtv2') == V2_NAMES and len(V2_NAMES) == 28
    assert sorted(V1_NAMES + V2_NAMES) == NAMES
    timm_modules = [m for name, m in sys.modules.items() if name.startswith('timm.models.') and hasattr(m, '__all__')]
    for module in timm_modules:  # a timm model of the same name would be in its module's __all__
        assert not set(module.__all__) & set(NAMES), module.__name__
    assert 'timm.models.pvt' not in sys.modules


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
def test_every_registered_model_at_full_size(base, fast_meta_init):
    """Published counts, weights, connection options and feature info of the four connected variants of ``base``
    (meta device; their parameters are the plain model's plus the connection's: tests/models/test_contract.py)."""
    plain = _meta(base)
    depths, dims = arch(base)['depths'], arch(base)['embed_dims']
    assert sum(p.numel() for p in plain.parameters()) == PUBLISHED[base]
    if base in PVT_ARCHS:
        assert plain.pretrained_cfg['url'] == f'https://github.com/whai362/PVT/releases/download/v2/{base}.pth'
    for kind in KINDS:
        model = _meta(f'{base}_{kind}')
        if base in PVT_V2_ARCHS:
            assert model.pretrained_cfg['hf_hub_id'] == f'timm/{base}.in1k'
        group_size = math.gcd(*depths)
        assert model.connection_args == {'dwa': {}, 'mudd': dict(num_streams=4), 'dense': dict(growth=32),
                                         'rir': dict(group_size=group_size, long_skip=True)}[kind]
        assert model_family(model) == ('PVT' if base in PVT_ARCHS else 'PVTv2')
        assert [i['num_chs'] for i in model.feature_info] == list(dims)
        assert [i['reduction'] for i in model.feature_info] == [4, 8, 16, 32]


# ---------------------------------------------------------------------------------------------------------------
# identity at initialisation

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
# PVT's pooling and optimizer groups

@pytest.mark.parametrize('name', ['pvt_v2_b0_mudd', 'pvt_tiny', 'pvt_small_dwa'])
def test_head_pooling(name):
    """PVT v1 pools its class token by default and averages the patch tokens with 'avg'; PVT v2 averages."""
    model = create(name).eval()
    x = image()
    v1 = split(name)[0] in PVT_ARCHS
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == ((2, 5, 64) if v1 else (2, 64, 2, 2))  # v1: class token + 2 x 2 patch tokens
        pre_logits = model.forward_head(features, pre_logits=True)
        torch.testing.assert_close(pre_logits, features[:, 0] if v1 else features.mean((-1, -2)))
        model.reset_classifier(0, 'avg')
        torch.testing.assert_close(model(x), features[:, 1:].mean(1) if v1 else features.mean((-1, -2)))


@pytest.mark.parametrize('name', ['pvt_v2_b2_dwa', 'pvt_medium_mudd', 'pvt_large'])
def test_optimizer_groups_and_no_weight_decay(name):
    model = _meta(name)
    groups = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    coarse = group_parameters(model, model.group_matcher(coarse=True), reverse=True)
    assert len(set(coarse.values())) == 6  # stem, four stages (the final norm joins the last), head
    assert len(set(groups.values())) > len(model.stages) * 3
    assert ('stages.3.cls_token' in model.no_weight_decay()) == (split(name)[0] in PVT_ARCHS)


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
        pvtv2.checkpoint_filter_fn(b0, _meta('pvt_v2_b1_mudd'))
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
