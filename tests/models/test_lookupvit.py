"""LookupViT: architecture against explicit references, parameter and multiply-add formulas, multi-resolution,
connected variants, its pooling and token outputs, and one-line errors (the timm model contract of every registered
model: tests/models/test_contract.py).

How we know the numbers are right: no official code exists, so the block is checked against a slow reference
written here from the paper's equations (explicit softmaxes, per-head einsums, float64); parameter counts and
multiply-adds against closed-form formulas of the architecture; the compressed-token initialisation against
hand-written resize filters; and the connected variants against the plain model with the same weights.
"""
import copy
import logging
import math
import pathlib
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.utils.flop_counter import FlopCounterMode

from densezoo.models.connect import connect
from densezoo.models.lookupvit import ARCHS, CONNECTED_ARCHS, CONNECTIONS, ConnectedLookupViT, compress_tokens
from densezoo.registry import check_model_names
from tests.helpers import assert_bfloat16_autocast_close, one_line, perturb_connections, perturb_norms, traced_to_head

TINY = 'lookupvit_tiny_patch16_224'
# reduced size for numerics: 8x8 lookup tokens of width 32, a 3x3 compressed grid, three blocks
SMALL = dict(img_size=64, patch_size=8, embed_dim=32, depth=3, num_heads=2, compressed_grid=3)
NAMES = sorted([*ARCHS, *(f'{arch}_{kind}' for arch in CONNECTED_ARCHS for kind in CONNECTIONS)])
VARIANTS = [TINY, f'{TINY}_dwa', f'{TINY}_mudd']


def _model(name=TINY, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = timm.create_model(name, **{**SMALL, **kwargs})
    return perturb_connections(perturb_norms(model, seed=seed), seed=seed).eval()


def _image(batch=2, size=(64, 64), seed=1, channels=3):
    return torch.randn(batch, channels, *size, generator=torch.Generator().manual_seed(seed))


def _meta(name, **kwargs):
    with torch.device('meta'):
        return timm.create_model(name, device='meta', **kwargs).eval()


def test_registered_names_are_ours_and_shadow_no_timm_model():
    assert sorted(timm.list_models('lookupvit*')) == NAMES == sorted(timm.list_models(module='lookupvit'))
    assert len(NAMES) == 12 and 'lookupvit_base_patch16_224_c7' in NAMES and f'{TINY}_mudd' in NAMES
    timm_sources = pathlib.Path(timm.__file__).parent / 'models'
    assert not [p.name for p in timm_sources.glob('*.py') if 'lookupvit' in p.read_text().lower()]
    cfg = timm.models.get_pretrained_cfg('lookupvit_base_patch16_224')
    assert cfg.tag == 'untrained' and not cfg.has_weights and cfg.hf_hub_id is None
    assert timm.list_pretrained('lookupvit*') == []


# ---------------------------------------------------------------------------------------------------------------
# explicit references

def _layer_norm(norm, t):
    return F.layer_norm(t, t.shape[-1:], norm.weight, norm.bias, norm.eps)


def _heads(t, num_heads):
    return t.reshape(*t.shape[:2], num_heads, -1).permute(0, 2, 1, 3)


def _merge(t):
    return t.permute(0, 2, 1, 3).flatten(2)


def _softmax(logits):
    e = (logits - logits.amax(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True)


def _linear(layer, t):
    return t @ layer.weight.t() + layer.bias


def _reference_block(block, tokens, num_compressed, reverse):
    """The paper's block written out: gather (z <- x), ViT block on z, infuse (x <- z) reusing the logits, MLP."""
    z, x = tokens[:, :num_compressed], tokens[:, num_compressed:]
    cross, h = block.cross_attn, block.cross_attn.num_heads
    dim = z.shape[-1]
    head_dim = dim // h
    q = _heads(_linear(cross.q, _layer_norm(block.gather_norm_compressed, z)), h)
    kv = _linear(cross.kv, _layer_norm(block.gather_norm_lookup, x))
    k, v = _heads(kv[..., :dim], h), _heads(kv[..., dim:], h)
    logits = torch.einsum('bhmd,bhnd->bhmn', q, k) / math.sqrt(head_dim)  # (B, h, M, N)
    weights = _softmax(logits)  # each compressed token over the N lookup tokens
    z = z + _linear(cross.proj, _merge(weights @ v))
    refine = block.refine
    qkv = _linear(refine.attn.qkv, _layer_norm(refine.norm1, z))
    q2, k2, v2 = (_heads(t, h) for t in qkv.split(dim, dim=-1))
    z = z + _linear(refine.attn.proj, _merge(_softmax(q2 @ k2.transpose(-1, -2) / math.sqrt(head_dim)) @ v2))
    z = z + _linear(refine.mlp.fc2, F.gelu(_linear(refine.mlp.fc1, _layer_norm(refine.norm2, z))))
    if reverse == 'logits':  # the same logits, transposed, normalised over the M compressed tokens
        reverse_weights = _softmax(logits.transpose(-1, -2))
    else:  # the gathering weights, transposed and renormalised over the M compressed tokens
        reverse_weights = weights.transpose(-1, -2) / weights.transpose(-1, -2).sum(-1, keepdim=True)
    values = _heads(_linear(cross.reverse_v, _layer_norm(block.infuse_norm, z)), h)
    x = x + _linear(cross.reverse_proj, _merge(reverse_weights @ values))
    x = x + _linear(block.mlp.fc2, F.gelu(_linear(block.mlp.fc1, _layer_norm(block.mlp_norm, x))))
    return torch.cat([z, x], 1), weights, reverse_weights


def _randomise(model, seed=0):
    """Unit-scale random weights, so that every branch moves the output (timm's init keeps branches tiny)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float64).to(param)
            param.copy_(noise / param.shape[-1] ** 0.5 if param.dim() > 1 else 0.1 * noise)
    return model


@pytest.mark.parametrize('reverse', ['logits', 'weights'])
@pytest.mark.parametrize('fused', [True, False])
def test_block_equals_explicit_reference(reverse, fused):
    model = _randomise(_model(reverse_attention=reverse)).double()
    block = model.blocks[0]
    for module in block.modules():
        if hasattr(module, 'fused_attn'):
            module.fused_attn = fused
    tokens = model.embed(_image().double())
    num_compressed = model.num_compressed
    expected, weights, reverse_weights = _reference_block(block, tokens, num_compressed, reverse)
    with torch.no_grad():
        torch.testing.assert_close(block(tokens, num_compressed), expected, rtol=1e-10, atol=1e-10)
        # the module's reverse attention is the transposed gathering attention, renormalised over M
        norm_z = block.gather_norm_compressed(tokens[:, :num_compressed])
        _, q, k = block.cross_attn.gather(norm_z, block.gather_norm_lookup(tokens[:, num_compressed:]))
        reused = block.cross_attn.reverse_weights(q, k)
    assert reused.shape == (2, 2, 64, 9) and weights.shape == (2, 2, 9, 64)
    torch.testing.assert_close(reused, reverse_weights, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(reused.sum(-1), torch.ones_like(reused[..., 0]))
    transposed = weights.transpose(-1, -2)
    # 'weights' is exactly A^T / rowsum(A^T); 'logits' is not (it renormalises exp(S) without the per-row sums)
    close = torch.allclose(reused, transposed / transposed.sum(-1, keepdim=True))
    assert close == (reverse == 'weights')


def test_float32_fused_and_explicit_paths_agree():
    model = _randomise(_model())
    x = _image()
    with torch.no_grad():
        fused = model(x)
        for module in model.modules():
            if hasattr(module, 'fused_attn'):
                module.fused_attn = False
        torch.testing.assert_close(model(x), fused, rtol=1e-5, atol=1e-5)


# reference filters for a 2x downsample of an 8x8 map to 4x4: an antialiased bilinear resize (triangle filter
# stretched to 4 taps, weights 1/8, 3/8, 3/8, 1/8, renormalised at the borders), and plain bilinear = 2x2 average
def _antialiased_halving(t):  # (B, H, W, D) -> (B, H/2, W/2, D), separable
    def along(t, axis):
        size = t.shape[axis]
        taps = torch.zeros(size // 2, size, dtype=t.dtype)
        for i in range(size // 2):
            for offset, w in zip((-1, 0, 1, 2), (1, 3, 3, 1)):
                if 0 <= 2 * i + offset < size:
                    taps[i, 2 * i + offset] = w
        taps /= taps.sum(1, keepdim=True)
        return torch.movedim(torch.tensordot(taps, torch.movedim(t, axis, 0), dims=1), 0, axis)
    return along(along(t, 1), 2)


def _average_halving(t):
    return t.unflatten(1, (t.shape[1] // 2, 2)).unflatten(3, (t.shape[2] // 2, 2)).mean((2, 4))


@pytest.mark.parametrize('mode, reference', [('bilinear_aa', _antialiased_halving), ('bilinear', _average_halving),
                                             ('avgpool', _average_halving)])
def test_compressed_tokens_are_a_resize_of_the_patch_grid(mode, reference):
    model = _model(compressed_grid=4, compress_resize=mode)
    x = _image()
    with torch.no_grad():
        tokens = model.embed(x)
        patches = F.conv2d(x, model.patch_embed.proj.weight, model.patch_embed.proj.bias, stride=8)
        lookup = patches.permute(0, 2, 3, 1) + model.pos_embed.reshape(1, 8, 8, -1)
    assert tokens.shape == (2, 16 + 64, 32)
    torch.testing.assert_close(tokens[:, 16:], lookup.flatten(1, 2))
    torch.testing.assert_close(tokens[:, :16], reference(lookup).flatten(1, 2), rtol=1e-5, atol=1e-6)
    # the full grid is the identity resize; a non-square grid keeps its (h, w) layout
    torch.testing.assert_close(compress_tokens(lookup, (8, 8), mode), lookup.flatten(1, 2), rtol=1e-5, atol=1e-6)
    assert compress_tokens(lookup, (2, 4), mode).shape == (2, 8, 32)


# ---------------------------------------------------------------------------------------------------------------
# parameters and multiply-adds, at the registered size on the meta device

def _plain_param_count(dim, depth, num_heads, lookup_mlp_ratio=0.5, mlp_ratio=4, patch=16, img=224, classes=1000):
    """Independent count from the architecture: patch embedding, position embedding, blocks, final norm, head."""
    def linear(fan_in, fan_out):
        return fan_in * fan_out + fan_out
    norm = 2 * dim
    hidden, lookup_hidden = int(dim * mlp_ratio), int(dim * lookup_mlp_ratio)
    gather = 2 * norm + linear(dim, dim) + linear(dim, 2 * dim) + linear(dim, dim)
    refine = 2 * norm + linear(dim, 3 * dim) + linear(dim, dim) + linear(dim, hidden) + linear(hidden, dim)
    infuse = norm + 2 * linear(dim, dim)
    lookup_mlp = norm + linear(dim, lookup_hidden) + linear(lookup_hidden, dim)
    tokens = (img // patch) ** 2
    embed = linear(3 * patch * patch, dim) + tokens * dim
    return embed + depth * (gather + refine + infuse + lookup_mlp) + norm + linear(dim, classes)


WIDTHS = {'tiny': (192, 3), 'small': (384, 6), 'base': (768, 12)}
# our counts; the paper's table could not be read, so these are not checked against it (a plain ViT-B/16 has
# 86.6 M: LookupViT adds the cross-attention's 6 D^2 and the lookup MLP's D^2 to its 12 D^2 per block)
PLAIN_COUNTS = {'tiny': 8_849_320, 'small': 34_507_624, 'base': 136_254_184}


@pytest.mark.parametrize('name', sorted(ARCHS))
def test_parameter_count_matches_the_architecture_formula(name):
    """The plain models (a connected one adds its connection's: tests/models/test_contract.py)."""
    model = _meta(name)
    size = name.split('_')[1]
    dim, heads = WIDTHS[size]
    expected = _plain_param_count(dim, 12, heads)
    assert expected == PLAIN_COUNTS[size]  # whatever the compressed grid: no parameter depends on it
    assert sum(p.numel() for p in model.parameters()) == expected
    # (18 + 2r) D^2 weights per block, plus biases and norms
    blocks = sum(p.numel() for p in model.blocks.parameters())
    assert 0 < blocks - 19 * dim ** 2 * 12 < 0.01 * blocks


def _block_macs(dim, tokens, compressed, lookup_mlp_ratio=0.5):
    """Multiply-adds of one block counted as matrix products (the reverse attention recomputes k q^T)."""
    m, n = compressed, tokens
    projections = dim * dim * (15 * m + 3 * n + 2 * lookup_mlp_ratio * n)
    attention = dim * (2 * m * n + 2 * m * m + 2 * n * m)
    return projections + attention


def _macs(model):
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.empty(1, 3, 224, 224, device='meta'))
    return counter.get_total_flops() // 2


def test_multiply_adds_match_the_formula_and_halve_vit_base():
    vit = _macs(_meta('vit_base_patch16_224'))
    assert vit == 17_563_828_224  # timm ViT-B/16, 17.56 GMACs
    model = _meta('lookupvit_base_patch16_224')
    ratios = {}
    for grid in (3, 5, 7, 10):
        model.set_compressed_grid(grid)
        expected = 196 * 768 * 768 + 12 * _block_macs(768, 196, grid * grid) + 768 * 1000
        macs = _macs(model)
        assert macs == expected, grid
        ratios[grid] = macs / vit
    # the paper's 2x reduction: 5x5 (and 3x3) at most half of ViT-B/16; 7x7 at 0.64x, 10x10 at 0.98x
    assert ratios[3] < ratios[5] <= 0.5 < ratios[7] < ratios[10] < 1
    assert round(ratios[5], 3) == 0.485


# ---------------------------------------------------------------------------------------------------------------
# multi-resolution: one set of weights, any compressed grid

def test_same_weights_run_with_any_compressed_grid():
    model = _model()
    x = _image()
    state = copy.deepcopy(model.state_dict())
    outputs = {}
    with torch.no_grad():
        for grid in [1, 2, (2, 5), 3, 4, 8]:
            model.set_compressed_grid(grid)
            features = model.forward_features(x)
            pair = grid if isinstance(grid, tuple) else (grid, grid)
            assert model.num_compressed == pair[0] * pair[1]
            assert features.shape == (2, pair[0] * pair[1] + 64, 32)
            outputs[pair] = model(x)
            assert torch.isfinite(outputs[pair]).all()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not torch.allclose(outputs[(3, 3)], outputs[(4, 4)])
    # a model built for another grid with the same weights computes the same function
    other = _model(compressed_grid=(2, 5))
    other.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(other(x), outputs[(2, 5)])
    model.set_input_size(compressed_grid=3)
    assert model.compressed_grid == (3, 3) and timm.models.get_model_args(model)['compressed_grid'] == (3, 3)
    with torch.no_grad():
        torch.testing.assert_close(model(x), outputs[(3, 3)])


def test_multi_resolution_training_steps_share_the_weights():
    model = _model(f'{TINY}_dwa').train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = _image()
    for grid in (2, 4, 3):
        model.set_compressed_grid(grid)
        optimizer.zero_grad()
        model(x).logsumexp(-1).mean().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        optimizer.step()


def test_other_image_sizes_keep_the_compressed_grid():
    model = _model(dynamic_img_size=True)
    with torch.no_grad():
        for size in [(64, 64), (96, 128), (32, 40)]:
            features = model.forward_features(_image(1, size))
            assert features.shape == (1, 9 + size[0] * size[1] // 64, 32)
    fixed = _model()
    x = _image(size=(96, 96))
    fixed.set_input_size(img_size=96, compressed_grid=(4, 6))
    assert fixed.pos_embed.shape == (1, 144, 32) and fixed.compressed_grid == (4, 6)
    with torch.no_grad():
        assert fixed(x).shape == (2, 1000)
        assert fixed.forward_intermediates(x, intermediates_only=True)[0].shape == (2, 32, 12, 12)


# ---------------------------------------------------------------------------------------------------------------
# connected variants

@pytest.mark.parametrize('kind', list(CONNECTIONS))
def test_connected_variant_starts_as_the_plain_model(kind, caplog):
    plain = _model()
    x = _image()
    with caplog.at_level(logging.WARNING, logger='densezoo'):
        connected = timm.create_model(f'{TINY}_{kind}', **SMALL).eval()
        result = connected.load_state_dict(plain.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    assert 'connection tensors are not in the checkpoint' in caplog.text
    assert [n for n, _ in connected.named_parameters() if not n.startswith('connection.')] == \
        [n for n, _ in plain.named_parameters()]
    with torch.no_grad():
        expected = plain(x)
        assert (connected(x) - expected).abs().max() <= 1e-6
        perturb_connections(connected, std=0.2)
        assert (connected(x) - expected).abs().max() > 1e-4
        connected.init_weights()  # timm's initialisation restores the identity start of the connection
        plain.init_weights()
        perturb_norms(connected)
        plain.load_state_dict({k: v for k, v in connected.state_dict().items() if not k.startswith('connection.')})
        assert (connected(x) - plain(x)).abs().max() <= 1e-6


@pytest.mark.parametrize('kind, options', [('residual', {}), ('rir', dict(group_size=1, long_skip=True)),
                                           ('dense', dict(growth=8)), ('laurel', {})])
def test_connect_rewires_a_plain_lookupvit_in_place(kind, options):
    plain = _model()
    x = _image()
    with torch.no_grad():
        expected = plain(x)
    model = connect(plain, kind, **options)
    assert model is plain and isinstance(model, ConnectedLookupViT) and model.connection.num_blocks == 3
    with torch.no_grad():
        assert (model(x) - expected).abs().max() <= 1e-6


@pytest.mark.parametrize('kind, options, message', [
    ('value_residual', {}, r"^connection 'value_residual' needs blocks that expose their attention values; "
                           r"LookupViT blocks do not$"),
    ('mudd', dict(num_streams=4), r"^connection 'mudd' needs blocks that take separate query, key and value inputs "
                                  r"\(use num_streams=1\); LookupViT blocks do not$"),
])
def test_connections_the_block_cannot_take(kind, options, message):
    with pytest.raises(ValueError, match=message) as err:
        connect(_model(), kind, **options)
    one_line(err)


def test_connection_spans_all_blocks_on_the_joint_token_tensor():
    model = _model(f'{TINY}_mudd')
    assert model.connection_kind == 'mudd' and model.connection.num_blocks == 3
    assert model.connection.num_streams == 1 and model.connection.dim == 32
    dwa = _model(f'{TINY}_dwa', connection_args=dict(dilation=2))
    assert dwa.connection.dilation == 2


# ---------------------------------------------------------------------------------------------------------------
# token outputs, pooling, weights

def test_intermediates_return_the_compressed_tokens():
    model = _model(f'{TINY}_mudd')
    x = _image()
    with torch.no_grad():
        taps = model.forward_intermediates(x, intermediates_only=True)
        pairs = model.forward_intermediates(x, indices=[0], return_compressed_tokens=True, norm=True,
                                            output_fmt='NLC', intermediates_only=True)
    assert pairs[0][0].shape == (2, 64, 32) and pairs[0][1].shape == (2, 9, 32)
    torch.testing.assert_close(pairs[0][0], model.norm(taps[0].flatten(2).transpose(1, 2)))


def test_fx_trace_holds_the_joint_token_tensor():
    out = traced_to_head(_model(f'{TINY}_dwa').train(), _image(), 'head', rtol=1e-5, atol=1e-6, block1='blocks.1')
    assert out['block1'].shape == (2, 9 + 64, 32)


@pytest.mark.parametrize('name', VARIANTS)
def test_autocast_bfloat16_with_unit_scale_weights(name):
    # timm's initialisation keeps the branches tiny (the contract's check at that scale sees little of them)
    assert_bfloat16_autocast_close(_randomise(_model(name, num_classes=7)), _image())


def test_head_pooling_and_classifier_reset():
    model = _model(global_pool='avg_both')
    x = _image()
    with torch.no_grad():
        tokens = model.forward_features(x)
        compressed, lookup = tokens[:, :9].mean(1), tokens[:, 9:].mean(1)
        torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), compressed + lookup)
        torch.testing.assert_close(model.pool(tokens, 'avg'), lookup)
        torch.testing.assert_close(model.pool(tokens, 'avg_compressed'), compressed)
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), compressed + lookup)
    meta = _meta(TINY)
    groups = timm.models.group_parameters(meta, meta.group_matcher(), reverse=True)
    assert len(set(groups.values())) == 14  # stem, 12 blocks, final norm
    assert meta.no_weight_decay() == {'pos_embed'}


def test_checkpoint_files_load_through_create_model(tmp_path):
    model = _model()
    x = _image()
    with torch.no_grad():
        expected = model(x)
    file = tmp_path / 'lookupvit.safetensors'
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(file))
    loaded = timm.create_model(TINY, pretrained=True, pretrained_cfg_overlay=dict(file=str(file)), **SMALL)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), expected)
    wrapped = tmp_path / 'train.pth'
    torch.save({'model': {f'module.{k}': v for k, v in model.state_dict().items()}}, wrapped)
    larger = timm.create_model(TINY, pretrained=True, pretrained_cfg_overlay=dict(file=str(wrapped)),
                               **{**SMALL, 'img_size': 96})
    assert larger.pos_embed.shape == (1, 144, 32)
    assert larger.eval()(_image(size=(96, 96))).shape == (2, 1000)


# ---------------------------------------------------------------------------------------------------------------
# one-line errors

@pytest.mark.parametrize('shape, kwargs, message', [
    ((1, 1, 64, 64), {}, r'^expected 3 input channels, got 1 \(input shape \(1, 1, 64, 64\)\); create the model '
                         r'with in_chans=1$'),
    ((1, 3, 72, 72), {}, r'^input size 72x72 does not match the model img_size 64x64; create the model with '
                         r'img_size=\(72, 72\) or strict_img_size=False'),
    ((1, 3, 68, 64), dict(dynamic_img_size=True), r'^input size 68x64 is not divisible by the patch size 8x8; '),
    ((1, 3, 16, 64), dict(dynamic_img_size=True), r'^compressed_grid 3x3 is larger than the 2x8 grid of lookup '
                                                  r'tokens \(input of 2x8 patches\); choose a compressed grid of at '
                                                  r'most 2x8 or a larger image$'),
])
def test_inputs_the_model_cannot_take(shape, kwargs, message):
    for name in (TINY, f'{TINY}_dwa'):
        model = _model(name, **kwargs)
        for fn in (model, model.forward_features, model.forward_intermediates):
            with pytest.raises(ValueError, match=message) as err:
                fn(torch.randn(shape))
            one_line(err)


@pytest.mark.parametrize('kwargs, message', [
    (dict(img_size=60), r'^img_size 60x60 is not divisible by the patch size 8x8; use a multiple of the patch size '
                        r'or dynamic_img_pad=True$'),
    (dict(compressed_grid=9), r'^compressed_grid 9x9 is larger than the 8x8 grid of lookup tokens \(image 64x64, '
                              r'patch 8\); choose a compressed grid of at most 8x8 or a larger image$'),
    (dict(compressed_grid=(0, 3)), r'^compressed_grid=\(0, 3\) is not allowed; give a positive int or a pair of '
                                   r'positive ints \(height, width\)$'),
    (dict(global_pool='token'), r"^global_pool='token' is not supported; choose one of '', 'avg', "
                                r"'avg_compressed', 'avg_both'$"),
    (dict(compress_resize='nearest'), r"^compress_resize='nearest' is not supported; choose one of 'bilinear_aa', "
                                      r"'bilinear', 'avgpool'$"),
    (dict(reverse_attention='post_softmax'), r"^reverse_attention='post_softmax' is not supported; choose one of "
                                             r"'logits', 'weights'$"),
    (dict(num_heads=3), r'^embed_dim=32 is not divisible by num_heads=3$'),
])
def test_bad_configurations(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        _model(**kwargs)
    one_line(err)


def test_bad_calls_and_names():
    model = _model()
    for call in (lambda: model.set_compressed_grid(12), lambda: model.set_input_size(img_size=16),
                 lambda: model.set_input_size(img_size=64, compressed_grid=9)):
        with pytest.raises(ValueError, match=r'^compressed_grid \d+x\d+ is larger than the \d+x\d+ grid') as err:
            call()
        one_line(err)
    assert model.compressed_grid == (3, 3) and model.pos_embed.shape == (1, 64, 32)  # nothing changed
    with pytest.raises(ValueError, match=r"^global_pool='max' is not supported"):
        model.reset_classifier(3, 'max')
    with pytest.raises(ValueError, match=r"^output_fmt='NHWC' is not supported; choose one of 'NCHW', 'NLC'$"):
        model.forward_intermediates(_image(), output_fmt='NHWC')
    with pytest.raises(ValueError, match=r'^no pretrained weights exist for lookupvit_base_patch16_224_c7 '
                                         r'\(LookupViT has no official release\); use pretrained=False, or load your '
                                         r'own weights with pretrained_cfg_overlay=dict\(file=PATH\)$'):
        timm.create_model('lookupvit_base_patch16_224_c7', pretrained=True)
    with pytest.raises(RuntimeError, match=r'Unknown model \(lookupvit_huge_patch16_224\)'):
        timm.create_model('lookupvit_huge_patch16_224')
    with pytest.raises(ValueError, match=r"^unknown model 'lookupvit_base_patch16_224_c8'; did you mean "
                                         r"lookupvit_base_patch16_224_c7, ") as err:
        check_model_names(['lookupvit_base_patch16_224_c8'])
    one_line(err)
    with pytest.raises(ValueError, match=r"^blocks: option 'growth' does not apply to connection 'dwa'; its options "
                                         r"are: dilation, period$"):
        timm.create_model(f'{TINY}_dwa', connection_args=dict(growth=4), **SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # torch deprecates torch.jit.script
        with pytest.raises(RuntimeError, match=r'^LookupViT cannot be compiled by TorchScript'):
            torch.jit.script(model)
