"""densezoo.models.split_streams against the timm forwards it re-implements (timm 1.0.31).

How we know the numbers are right: given the same tensor for every stream, each function must compute exactly what
timm's own module computes (``torch.equal``), with fused (SDPA) and unfused attention, in eval mode and in train
mode with dropout and stochastic depth on (same random seed), and with attention masks. A timm update that changes
one of these forwards fails here. With different streams, the four-stream blocks are checked against attention
written out here from the timm weights (the full key/value projection of each reduced stream, keeping its half).
"""
import copy
import itertools

import pytest
import timm
import torch
from timm.layers import Attention, LayerNorm
from timm.models.pvt_v2 import Attention as PvtAttention, Block as TimmPvtV2Block
from timm.models.vision_transformer import Block

import densezoo
from densezoo.models.pvt import PvtBlock
from densezoo.models.split_streams import (pvt_block_streams, spatial_reduction_attention, split_attention,
                                           vit_block_streams, vit_block_values)
from tests.helpers import perturb_norms

DIM, HEADS, TOKENS = 32, 4, 17


def _tokens(*shape, seed=3):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _set_fused(module, fused):
    for m in module.modules():
        if hasattr(m, 'fused_attn'):
            m.fused_attn = fused
    return module


def _same_under_seed(fn, reference, *args, seed=7):
    """``fn(*args)`` and ``reference(*args)`` with the same random state (dropout draws the same masks)."""
    torch.manual_seed(seed)
    out = fn(*args)
    torch.manual_seed(seed)
    return out, reference(*args)


def _assert_random_in_training(module, fn, *args):
    """In train mode the dropout draws change ``fn``'s output from one seed to the next (so the parity above
    covers dropout); in eval mode they do not."""
    outputs = []
    for seed in (7, 8):
        torch.manual_seed(seed)
        outputs.append(fn(*args))
    assert torch.equal(*outputs) != module.training


MODES = list(itertools.product([True, False], ['eval', 'train']))
MODE_IDS = [f'{"fused" if fused else "unfused"}-{mode}' for fused, mode in MODES]


# ---------------------------------------------------------------------------------------------------------------
# ViT: timm.layers.Attention, timm.models.vision_transformer.Block

VIT_BLOCKS = {
    'plain': dict(qkv_bias=True),
    'qk_norm_layer_scale': dict(qkv_bias=True, qk_norm=True, init_values=0.1),
    'scale_norm_no_bias': dict(qkv_bias=False, scale_attn_norm=True, proj_bias=False),
}
VIT_DROPOUT = dict(attn_drop=0.2, proj_drop=0.1, drop_path=0.3)


def _vit_block(config, mode, fused):
    torch.manual_seed(0)
    block = Block(DIM, HEADS, norm_layer=LayerNorm, **VIT_BLOCKS[config], **(VIT_DROPOUT if mode == 'train' else {}))
    return _set_fused(perturb_norms(block), fused).train(mode == 'train')


@pytest.mark.parametrize('fused, mode', MODES, ids=MODE_IDS)
@pytest.mark.parametrize('config', list(VIT_BLOCKS))
def test_vit_block_streams_and_values_equal_the_timm_block_on_one_stream(config, fused, mode):
    block = _vit_block(config, mode, fused)
    x = _tokens(2, TOKENS, DIM)
    with torch.no_grad():
        out, expected = _same_under_seed(lambda t: vit_block_streams(block, t, t, t, t), block, x)
        assert torch.equal(out, expected)
        (out, values), expected = _same_under_seed(lambda t: vit_block_values(block, t, None, None), block, x)
        assert torch.equal(out, expected)
        own = block.attn.qkv(block.norm1(x))[..., 2 * DIM:]
        assert torch.equal(values, own)
        _assert_random_in_training(block, lambda t: vit_block_streams(block, t, t, t, t), x)


@pytest.mark.parametrize('fused', [True, False], ids=['fused', 'unfused'])
@pytest.mark.parametrize('masking', ['bool_mask', 'float_mask', 'causal'])
def test_vit_block_streams_and_values_take_timm_masks(masking, fused):
    block = _vit_block('qk_norm_layer_scale', 'eval', fused)
    x = _tokens(2, TOKENS, DIM)
    mask = torch.ones(TOKENS, TOKENS, dtype=torch.bool)
    mask[:, 12:] = False
    kwargs = dict(bool_mask=dict(attn_mask=mask), causal=dict(is_causal=True),
                  float_mask=dict(attn_mask=_tokens(TOKENS, TOKENS, seed=5)))[masking]
    with torch.no_grad():
        expected = block(x, **kwargs)
        assert (expected - block(x)).abs().max() > 1e-3
        assert torch.equal(vit_block_streams(block, x, x, x, x, **kwargs), expected)
        assert torch.equal(vit_block_values(block, x, None, None, **kwargs)[0], expected)


@pytest.mark.parametrize('fused, mode', MODES, ids=MODE_IDS)
@pytest.mark.parametrize('gated', [False, True], ids=['ungated', 'gated'])
def test_split_attention_equals_timm_attention_on_one_input(gated, fused, mode):
    torch.manual_seed(0)
    attn = Attention(DIM, HEADS, qkv_bias=True, gated=gated, attn_drop=0.2 if mode == 'train' else 0.,
                     proj_drop=0.1 if mode == 'train' else 0.)
    attn = _set_fused(attn, fused).train(mode == 'train')
    x = _tokens(2, TOKENS, DIM)
    with torch.no_grad():
        (out, _), expected = _same_under_seed(lambda t: split_attention(attn, t, t, t), attn, x)
        assert torch.equal(out, expected)
        _assert_random_in_training(attn, lambda t: split_attention(attn, t, t, t)[0], x)
        # separate tensors of the same values take the sliced projections: the same numbers up to rounding
        torch.testing.assert_close(split_attention(attn.eval(), x, x.clone(), x.clone())[0], attn(x),
                                   rtol=1e-5, atol=1e-6)


def test_split_attention_mixes_first_values_by_lerp():
    torch.manual_seed(0)
    attn = _set_fused(Attention(DIM, HEADS, qkv_bias=True), False).eval()
    x, first = _tokens(2, TOKENS, DIM), _tokens(2, TOKENS, DIM, seed=4)
    weight = torch.tensor(0.3)
    with torch.no_grad():
        out, values = split_attention(attn, x, x, x, first, weight)
        q, k, v = attn.qkv(x).chunk(3, dim=-1)
        mixed = (1 - weight) * v + weight * first
        heads = lambda t: t.unflatten(-1, (HEADS, -1)).transpose(1, 2)  # noqa: E731
        scores = (heads(q) @ heads(k).transpose(-2, -1) * (DIM // HEADS) ** -0.5).softmax(-1)
        expected = attn.proj((scores @ heads(mixed)).transpose(1, 2).flatten(2))
    assert torch.equal(values, v)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2)
INTERMEDIATE_OPTIONS = [
    dict(),
    dict(indices=2, norm=True),
    dict(indices=[0, 2], stop_early=True, output_fmt='NLC'),
    dict(indices=[1], return_prefix_tokens=True, intermediates_only=True),
    dict(return_prefix_tokens=True, output_dict=True),
    dict(indices=[1, 3], output_dict=True, intermediates_only=True, output_fmt='NLC'),
    dict(norm=True, attn_mask='mask', output_fmt='NLC'),
    dict(is_causal=True, stop_early=True, indices=[2]),
]


@pytest.mark.parametrize('extra', [{}, dict(reg_tokens=2, no_embed_class=True), dict(class_token=False,
                                                                                        global_pool='avg')],
                         ids=['class_token', 'registers', 'no_prefix'])
@pytest.mark.parametrize('options', INTERMEDIATE_OPTIONS, ids=lambda o: '-'.join(f'{k}' for k in o) or 'default')
def test_vit_forward_intermediates_equals_timm(options, extra):
    """A ViT connected by the plain residual connection: ``vit_forward_intermediates`` gives timm's outputs."""
    torch.manual_seed(0)
    plain = perturb_norms(timm.create_model('vit_small_patch16_224', **VIT, **extra)).eval()
    model = densezoo.connect(copy.deepcopy(plain), 'residual').eval()
    x = _tokens(2, 3, 32, 32)
    options = dict(options)
    if options.get('attn_mask') == 'mask':
        tokens = 16 + plain.num_prefix_tokens
        options['attn_mask'] = torch.ones(tokens, tokens, dtype=torch.bool).tril()
    with torch.no_grad():
        out, expected = model.forward_intermediates(x, **options), plain.forward_intermediates(x, **options)
    assert type(out) is type(expected)
    if isinstance(expected, dict):
        assert out.keys() == expected.keys()
        out, expected = list(out.values()), list(expected.values())
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# PVT: timm.models.pvt_v2.Attention and Block (and densezoo's PVT v1 block, built on that attention)

PVT_BLOCKS = {
    'v2_sr4': lambda **kw: TimmPvtV2Block(32, num_heads=2, sr_ratio=4, qkv_bias=True, **kw),
    'v2_sr1': lambda **kw: TimmPvtV2Block(32, num_heads=2, sr_ratio=1, qkv_bias=True, **kw),
    'v2_linear': lambda **kw: TimmPvtV2Block(32, num_heads=2, linear_attn=True, qkv_bias=True, **kw),
    'v1_sr2': lambda **kw: PvtBlock(32, num_heads=2, sr_ratio=2, **kw),
    'v1_class_token': lambda **kw: PvtBlock(32, num_heads=4, sr_ratio=1, **kw),
}
PVT_DROPOUT = dict(attn_drop=0.2, proj_drop=0.1, drop_path=0.3)
FEAT_SIZE = (8, 6)


def _pvt_block(kind, mode='eval', fused=True):
    torch.manual_seed(0)
    block = PVT_BLOCKS[kind](**(PVT_DROPOUT if mode == 'train' else {}))
    return _set_fused(perturb_norms(block), fused).train(mode == 'train')


def _pvt_streams(kind):
    tokens = FEAT_SIZE[0] * FEAT_SIZE[1] + (kind == 'v1_class_token')
    return _tokens(4, 2, tokens, 32).unbind(0)


@pytest.mark.parametrize('fused, mode', MODES, ids=MODE_IDS)
@pytest.mark.parametrize('kind', list(PVT_BLOCKS))
def test_pvt_block_streams_and_attention_equal_timm_on_one_stream(kind, fused, mode):
    block = _pvt_block(kind, mode, fused)
    r = _pvt_streams(kind)[3]
    with torch.no_grad():
        out, expected = _same_under_seed(lambda t: pvt_block_streams(block, t, t, t, t, FEAT_SIZE),
                                         lambda t: block(t, FEAT_SIZE), r)
        assert torch.equal(out, expected)
        h = block.norm1(r)
        assert isinstance(block.attn, PvtAttention)
        out, expected = _same_under_seed(lambda t: spatial_reduction_attention(block.attn, t, t, t, FEAT_SIZE),
                                         lambda t: block.attn(t, FEAT_SIZE), h)
        assert torch.equal(out, expected)
        _assert_random_in_training(block, lambda t: pvt_block_streams(block, t, t, t, t, FEAT_SIZE), r)
        _assert_random_in_training(block, lambda t: spatial_reduction_attention(block.attn, t, t, t, FEAT_SIZE), h)


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


@pytest.mark.parametrize('kind', list(PVT_BLOCKS))
def test_pvt_block_streams_on_four_streams(kind):
    block = _pvt_block(kind)
    q, k, v, r = _pvt_streams(kind)
    with torch.no_grad():
        out = pvt_block_streams(block, q, k, v, r, FEAT_SIZE)
        torch.testing.assert_close(out, _streams_reference(block, q, k, v, r, FEAT_SIZE), rtol=1e-5, atol=1e-5)
        for other in (pvt_block_streams(block, r, k, v, r, FEAT_SIZE), pvt_block_streams(block, q, r, v, r, FEAT_SIZE),
                      pvt_block_streams(block, q, k, r, r, FEAT_SIZE)):
            assert not torch.allclose(other, out)  # every stream is used
