"""ViT connected variants: identity at initialisation, the four-stream and value-residual blocks against
written-out references, what intermediates and pruning hold, register tokens, dynamic sizes, bad input (the timm
model contract, cfgs and parameter counts of every registered variant: tests/models/test_contract.py).

How we know the numbers are right: the plain reference is timm's own ``VisionTransformer`` (timm 1.0.x) loaded with
the same weights; connected variants must reproduce it at initialisation. The MUDD query/key/value/residual streams
and ResFormer's value mixing are checked against attention written out here from the timm weights (explicit
softmax, explicit stream sums).
"""
import copy
import functools
import logging
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models import group_parameters
from timm.models.vision_transformer import ResPostBlock

import densezoo
from densezoo.models import vit
from densezoo.models.vit import BASE_ARCHS, CONNECTIONS, ConnectedVisionTransformer
from tests.helpers import assert_checkpointing_keeps_gradients, one_line, perturb_connections, perturb_norms

KINDS = list(CONNECTIONS)
NAMES = [f'{arch}_{kind}' for arch in BASE_ARCHS for kind in KINDS]
BASE = 'vit_small_patch16_224'  # representative base of the numerical checks
REDUCED = dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2)
# register tokens, layer scale, prefix tokens without position embedding and qk-norm: timm's other ViT code paths
REGISTERS = dict(reg_tokens=2, init_values=0.1, no_embed_class=True, qk_norm=True)


def _split(name):
    kind = next(k for k in sorted(KINDS, key=len, reverse=True) if name.endswith('_' + k))
    return name[:-len(kind) - 1], kind


def _image(batch=2, size=(32, 32), seed=1):
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def _plain(seed=0, **kwargs):
    torch.manual_seed(seed)
    return perturb_norms(timm.create_model(BASE, **{**REDUCED, **kwargs}), seed=seed).eval()


def _connected(kind, seed=0, perturb=True, **kwargs):
    """A reduced connected ViT with the weights of ``_plain(seed)`` and (optionally) moved connection params."""
    plain = _plain(seed, **{k: v for k, v in kwargs.items() if k != 'connection_args'})
    model = timm.create_model(f'{BASE}_{kind}', **{**REDUCED, **kwargs})
    model.load_state_dict(plain.state_dict())
    return (perturb_connections(model, seed=seed) if perturb else model).eval()


def test_registered_names():
    assert sorted(timm.list_models(module='vit')) == sorted(NAMES)
    assert len(NAMES) == 24 and 'vit_base_patch16_224_value_residual' in NAMES


# ---------------------------------------------------------------------------------------------------------------
# structure at the registered size (meta device)

def _meta(name):
    with torch.device('meta'):
        return timm.create_model(name, device='meta')


_meta_plain = functools.lru_cache(maxsize=None)(_meta)


@pytest.mark.parametrize('name', NAMES)
def test_registered_class_connection_and_groups(name):
    base, kind = _split(name)
    model = _meta(name)
    assert isinstance(model, ConnectedVisionTransformer) and model.connection.kind == kind
    assert model.pretrained_cfg['hf_hub_id'].startswith('timm/' + base)
    groups = group_parameters(model, model.group_matcher(), reverse=True)
    last_block = max(g for n, g in groups.items() if n.startswith(f'blocks.{len(model.blocks) - 1}.'))
    connection_groups = {g for n, g in groups.items() if n.startswith('connection.')}
    assert connection_groups == {groups['norm.weight']} == {last_block + 1}  # with timm's final norm, after the blocks


@pytest.mark.parametrize('base', list(BASE_ARCHS))
def test_plain_parameter_counts_match_published(base):
    """ViT-Ti/S/B 16 (Dosovitskiy et al.; DeiT): 5.7M, 22.1M (22.2M at 384), 86.6M."""
    published = {'vit_tiny_patch16_224': 5.7e6, 'vit_small_patch16_224': 22.1e6, 'vit_base_patch16_224': 86.6e6,
                 'vit_small_patch16_384': 22.2e6}[base]
    count = sum(p.numel() for p in _meta_plain(base).parameters())
    assert abs(count - published) < 0.05e6


# ---------------------------------------------------------------------------------------------------------------
# identity at initialisation and timm checkpoints

@pytest.mark.parametrize('extra', [{}, REGISTERS], ids=['plain', 'registers'])
@pytest.mark.parametrize('kind', KINDS)
def test_timm_weights_load_and_connected_model_equals_timm(kind, extra, caplog):
    plain = _plain(**extra)
    model = timm.create_model(f'{BASE}_{kind}', **REDUCED, **extra).eval()
    with caplog.at_level(logging.WARNING, logger='densezoo'):
        result = model.load_state_dict(plain.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert f'{len(model.connection.state_dict())} connection tensors are not in the checkpoint' in caplog.text
    x = _image()
    with torch.no_grad():
        assert (model(x) - plain(x)).abs().max() <= 1e-6
        _, taps = model.forward_intermediates(x, output_fmt='NLC', return_prefix_tokens=True)
        _, expected = plain.forward_intermediates(x, output_fmt='NLC', return_prefix_tokens=True)
    for (patches, prefix), (patches_ref, prefix_ref) in zip(taps, expected):
        assert prefix.shape[1] == 1 + extra.get('reg_tokens', 0)
        assert (patches - patches_ref).abs().max() <= 1e-6 and (prefix - prefix_ref).abs().max() <= 1e-6


def test_value_residual_variants_start_as_plain_and_paper_setting_does_not():
    """Registered variants learn lambda from 0 (the plain ViT); ResFormer's fixed 0.5 changes the function."""
    model = _connected('value_residual', perturb=False)
    assert model.connection.learnable and torch.equal(model.connection.weights, torch.zeros(3))
    paper = _connected('value_residual', perturb=False, connection_args=dict(lambda_init=0.5, learnable=False))
    assert not paper.connection.weights.requires_grad
    x = _image()
    with torch.no_grad():
        assert (paper(x) - _plain()(x)).abs().max() > 1e-3


def test_connect_rewires_a_plain_timm_vit_in_place():
    plain = _plain()
    names = [n for n, _ in plain.named_parameters()]
    x = _image()
    with torch.no_grad():
        expected = plain(x)
    model = densezoo.connect(copy.deepcopy(plain), 'residual')
    assert type(model) is ConnectedVisionTransformer and [n for n, _ in model.named_parameters()] == names
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    model = densezoo.connect(plain, 'mudd')
    assert model is plain and model.connection.num_streams == 4  # the ViT family's default
    with pytest.raises(ValueError, match=r"^blocks is already connected \('mudd'\); connect a plain model instead$"):
        densezoo.connect(model, 'dwa')


# ---------------------------------------------------------------------------------------------------------------
# the four-stream and value-residual blocks against written-out attention

def reference_attention(attn, q_in, k_in, v_in, first_values=None, lam=None):
    """Multi-head attention from timm ``Attention`` weights, written out; returns (output, own values)."""
    width, heads = attn.attn_dim, attn.num_heads
    weight, bias = attn.qkv.weight, attn.qkv.bias
    q, k, v = (t @ weight[i * width:(i + 1) * width].t() + bias[i * width:(i + 1) * width]
               for i, t in enumerate((q_in, k_in, v_in)))
    own = v
    if first_values is not None:
        v = (1 - lam) * v + lam * first_values

    def split(t):
        return t.reshape(t.shape[0], t.shape[1], heads, width // heads).transpose(1, 2)

    q, k, v = attn.q_norm(split(q)), attn.k_norm(split(k)), split(v)
    scores = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(width // heads), dim=-1)
    out = (scores @ v).transpose(1, 2).reshape(q_in.shape[0], q_in.shape[1], width)
    return out @ attn.proj.weight.t() + attn.proj.bias, own


def reference_block(block, q, k, v, r, first_values=None, lam=None):
    norm = block.norm1
    out, own = reference_attention(block.attn, norm(q), norm(k), norm(v), first_values, lam)
    x = r + block.ls1(out)
    return x + block.ls2(block.mlp(block.norm2(x))), own


def _tokens(model, x):
    return model._pos_embed(model.patch_embed(x))


def mudd_reference(model, x):
    conn, h = model.connection, _tokens(model, x)
    outputs, streams = [h], [h] * 4
    for i, block in enumerate(model.blocks):
        y, _ = reference_block(block, *streams)
        outputs.append(y)
        normed = y / torch.sqrt(y.pow(2).mean(-1, keepdim=True) + conn.eps)
        mixed = F.gelu(normed @ conn.w1[i].t()) @ conn.w2[i].t()
        weights = mixed.reshape(*y.shape[:-1], *conn.bias[i].shape) + conn.bias[i]  # (B, N, C, i + 2)
        streams = list(torch.einsum('bncj,jbnd->cbnd', weights, torch.stack(outputs)).unbind(0))
        assert len(streams) == (4 if i < len(model.blocks) - 1 else 1)
    return model.forward_head(model.norm(streams[0]))


def value_residual_reference(model, x):
    h, first = _tokens(model, x), None
    for i, block in enumerate(model.blocks):
        lam = model.connection.weights[i - 1] if i else None
        h, own = reference_block(block, h, h, h, h, first, lam)
        first = own if i == 0 else first
    return model.forward_head(model.norm(h))


@pytest.mark.parametrize('extra', [{}, REGISTERS], ids=['plain', 'registers'])
@pytest.mark.parametrize('kind, reference', [('mudd', mudd_reference), ('value_residual', value_residual_reference)])
def test_stream_and_value_blocks_match_written_out_attention(kind, reference, extra):
    model = _connected(kind, **extra)
    x = _image()
    with torch.no_grad():
        out, expected = model(x), reference(model, x)
        assert (out - _plain(**extra)(x)).abs().max() > 1e-3, 'perturbed connections must change the output'
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('kind', ['dwa', 'mudd', 'value_residual'])
def test_attention_mask_reaches_every_block(kind):
    """A boolean mask (keys 12.. hidden) gives timm's masked output at initialisation, in every block kind."""
    plain, model = _plain(), _connected(kind, perturb=False)
    mask = torch.ones(17, 17, dtype=torch.bool)
    mask[:, 12:] = False
    x = _image()
    with torch.no_grad():
        expected = plain(x, attn_mask=mask)
        assert (expected - plain(x)).abs().max() > 1e-3
        assert (model(x, attn_mask=mask) - expected).abs().max() <= 1e-6
        final, taps = model.forward_intermediates(x, attn_mask=mask, output_fmt='NLC')
        final_ref, taps_ref = plain.forward_intermediates(x, attn_mask=mask, output_fmt='NLC')
    torch.testing.assert_close(final, final_ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(taps, taps_ref, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# training, intermediates, pruning, features

@pytest.mark.parametrize('kind', KINDS)
def test_register_tokens_backward_reaches_every_parameter_with_and_without_checkpointing(kind):
    model = _connected(kind, num_classes=5, **REGISTERS)  # timm's other token layout (the contract: the plain one)
    x = _image()
    with torch.no_grad():
        before = model(x)
        model.set_grad_checkpointing()
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-6)
        model.set_grad_checkpointing(False)
    assert before.shape == (2, 5)
    assert_checkpointing_keeps_gradients(model, x)  # every parameter gets a non-zero gradient, same with checkpoints


def _record_block_inputs(model):
    """Make the model record the residual input each block receives from the connection."""
    inputs = {}
    for method, position in (('run_block', 1), ('run_block_streams', 4), ('run_block_values', 1)):
        original = getattr(model, method)

        def recording(index, *args, _original=original, _position=position):
            inputs[index] = args[_position - 1]
            return _original(index, *args)

        setattr(model, method, recording)
    return inputs


@pytest.mark.parametrize('kind', KINDS)
def test_intermediates_are_the_states_passed_on_and_pruning_keeps_them(kind):
    model = _connected(kind)
    x = _image()
    inputs = _record_block_inputs(model)
    with torch.no_grad():
        final, taps = model.forward_intermediates(x, output_fmt='NLC', return_prefix_tokens=True)
    del model.run_block, model.run_block_streams, model.run_block_values
    states = [torch.cat([prefix, patches], 1) for patches, prefix in taps]
    for i in range(3):  # the state after block i is what block i + 1 receives (MUDD: the residual stream)
        assert torch.equal(states[i], inputs[i + 1]), i
    with torch.no_grad():
        torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
        torch.testing.assert_close(model.norm(states[-1]), final, rtol=0, atol=0)
        maps = model.forward_intermediates(x, intermediates_only=True)
    assert [tuple(m.shape) for m in maps] == [(2, 32, 4, 4)] * 4
    torch.testing.assert_close(maps[2], taps[2][0].transpose(1, 2).reshape(2, 32, 4, 4))

    for i in range(4):  # the pruned connection ends where the full one is cut
        pruned = copy.deepcopy(model)
        assert pruned.prune_intermediate_layers([i], prune_norm=True) == [i]
        assert len(pruned.blocks) == pruned.connection.num_blocks == i + 1
        with torch.no_grad():
            torch.testing.assert_close(pruned.forward_features(x), states[i], rtol=0, atol=1e-6)
    kept = copy.deepcopy(model)
    kept.prune_intermediate_layers([3], prune_head=False)
    assert kept.connection is not None and kept.connection.num_blocks == 4


def test_pruned_mudd_keeps_the_residual_stream_of_the_last_block():
    model = _connected('mudd')
    pruned = copy.deepcopy(model)
    pruned.prune_intermediate_layers([1])
    conn, full = pruned.connection, model.connection
    assert [tuple(b.shape) for b in conn.bias] == [(4, 2), (1, 3)]
    assert conn.w1[1] is not full.w1[1] and torch.equal(conn.w1[1], full.w1[1])  # copied with the model
    torch.testing.assert_close(conn.w2[1], full.w2[1][-3:], rtol=0, atol=0)
    torch.testing.assert_close(conn.bias[1], full.bias[1][-1:], rtol=0, atol=0)


@pytest.mark.parametrize('kind', ['dwa', 'mudd', 'rir'])
def test_features_only_gives_the_intermediates(kind):
    options = dict(connection_args=dict(group_size=2) if kind == 'rir' else None, dynamic_img_size=True)
    model = _connected(kind, **options)
    features = timm.create_model(f'{BASE}_{kind}', features_only=True, out_indices=(0, 2), **REDUCED,
                                 **options).eval()
    assert features.feature_info.channels() == [32, 32] and features.feature_info.reduction() == [8, 8]
    truncated = copy.deepcopy(model)
    truncated.prune_intermediate_layers((0, 2), prune_norm=True)
    features.model.load_state_dict(truncated.state_dict())
    x = _image(size=(32, 48))
    with torch.no_grad():
        expected = model.forward_intermediates(x, indices=(0, 2), intermediates_only=True)
        out = features(x)
    assert [tuple(f.shape) for f in out] == [(2, 32, 4, 6)] * 2
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_input_size_and_dynamic_size():
    model = _connected('dense')
    with torch.no_grad():
        model.reset_classifier(0, '')
        model.set_input_size(img_size=(48, 40))
        assert model(_image(size=(48, 40))).shape == (2, 1 + 6 * 5, 32)
    plain = _plain(dynamic_img_size=True)
    dynamic = timm.create_model(f'{BASE}_laurel', dynamic_img_size=True, **REDUCED).eval()
    dynamic.load_state_dict(plain.state_dict())
    with torch.no_grad():
        wide = _image(size=(24, 40))
        assert (dynamic(wide) - plain(wide)).abs().max() <= 1e-6
        assert dynamic.forward_intermediates(wide, intermediates_only=True)[0].shape == (2, 32, 3, 5)
    with torch.no_grad(), pytest.raises(RuntimeError, match='cannot be compiled by TorchScript'):
        torch.jit.script(model)


# ---------------------------------------------------------------------------------------------------------------
# bad input

@pytest.mark.parametrize('shape, kwargs, message', [
    ((1, 1, 32, 32), {}, r'^expected 3 input channels, got 1 \(input shape \(1, 1, 32, 32\)\); create the model with '
                         r'in_chans=1$'),
    ((1, 3, 36, 32), dict(dynamic_img_size=True), r'^input size 36x32 is not divisible by the patch size 8x8; resize '
                                                  r'or pad the image to a multiple of 8x8$'),
    ((1, 3, 48, 48), {}, r'^input size 48x48 does not match the model img_size 32x32; create the model with '
                         r'img_size=\(48, 48\) or strict_img_size=False, or call '
                         r'model\.set_input_size\(img_size=\(48, 48\)\)$'),
])
def test_images_a_vit_cannot_take(shape, kwargs, message):
    model = timm.create_model(f'{BASE}_mudd', **REDUCED, **kwargs)
    features = timm.create_model(f'{BASE}_mudd', features_only=True, **REDUCED, **kwargs)
    for fn in (model, model.forward_intermediates, features):
        with pytest.raises(ValueError, match=message) as info:
            fn(torch.randn(shape))
        one_line(info)


def _res_post_vit():
    return timm.create_model(BASE, block_fn=ResPostBlock, **REDUCED)


@pytest.mark.parametrize('make, kind, options, message', [
    (_plain, 'densenet', {}, r"^unknown connection kind 'densenet'; choose one of residual, dwa, mudd, rir, dense, "
                             r"laurel, rezero, value_residual$"),
    (_plain, 'dense', dict(dilation=2), r"^blocks: option 'dilation' does not apply to connection 'dense'; its "
                                        r"options are: growth$"),
    (_plain, 'rir', dict(group_size=3), r'^blocks: group_size=3 does not divide the 4 blocks of the stage; '
                                        r'group_size must be one of \[1, 2, 4\]$'),
    (_plain, 'value_residual', dict(lambda_init=1.5), r'^blocks: lambda_init=1.5 is not allowed; it must lie in '
                                                      r'\[0, 1\]$'),
    (_res_post_vit, 'mudd', {}, r"^connection 'mudd' needs blocks that take separate query, key and value inputs "
                                r"\(use num_streams=1\); ViT blocks do not$"),
    (_res_post_vit, 'value_residual', {}, r"^connection 'value_residual' needs blocks that expose their attention "
                                          r"values; ViT blocks do not$"),
])
def test_connect_rejects_what_a_vit_cannot_use(make, kind, options, message):
    model = make()
    with pytest.raises(ValueError, match=message) as info:
        densezoo.connect(model, kind, **options)
    one_line(info)
    assert type(model) is not ConnectedVisionTransformer and not hasattr(model, 'connection')


def test_non_standard_blocks_still_take_single_stream_connections():
    plain = _res_post_vit().eval()
    x = _image()
    with torch.no_grad():
        expected = plain(x)
    model = densezoo.connect(plain, 'mudd', num_streams=1)
    with torch.no_grad():
        assert (model(x) - expected).abs().max() <= 1e-6


def test_registered_variant_rejects_unfit_arguments():
    with pytest.raises(ValueError, match=r'^blocks: group_size=4 does not divide the 6 blocks of the stage') as info:
        timm.create_model(f'{BASE}_rir', **{**REDUCED, 'depth': 6})
    one_line(info)
    with pytest.raises(ValueError, match=r"^output_fmt='NHWC' is not allowed; choose 'NCHW' or 'NLC'$"):
        timm.create_model(f'{BASE}_dwa', **REDUCED).forward_intermediates(_image(), output_fmt='NHWC')
    assert vit.FAMILY_DEFAULTS['mudd'] == CONNECTIONS['mudd']
