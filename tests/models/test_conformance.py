"""The timm model contract, checked on every registered Swin and Swin V2 model (the other families check it in their
own test files, with their own reduced configurations and feature layouts).

Written from timm's model API (forward, backward, default cfgs, features_only through the default and the getter
path, forward_intermediates, prune_intermediate_layers, FX). Structure and shapes are checked at the registered
size on the meta device; numerical checks run on real tensors with a reduced width and depth (same family, same
connection and options) and with connection parameters moved away from their identity start.
"""
import copy
import functools
import inspect
import math

import pytest
import timm
import torch
from timm.layers import get_channel_dim, get_spatial_dim
from timm.models import group_parameters

import densezoo
from tests.helpers import assert_bfloat16_autocast_close, perturb_connections, traced_to_head

MODELS = densezoo.list_models('swin*', task='classification')
REDUCED = dict(img_size=64, embed_dim=16, depths=(2, 2, 4, 2), num_heads=(1, 1, 2, 4))


def reduced(name, seed=0, **kwargs):
    torch.manual_seed(seed)
    return perturb_connections(timm.create_model(name, **{**REDUCED, **kwargs}), seed=seed)


def image(batch=1, size=(64, 64), seed=0):
    return torch.randn((batch, 3, *size), generator=torch.Generator().manual_seed(seed))


def test_registry_lists_every_family_and_connection():
    assert len(MODELS) == 36
    for kind in ('dwa', 'mudd', 'rir', 'dense'):
        assert f'swin_tiny_patch4_window7_224_{kind}' in MODELS
        assert f'swinv2_base_window16_256_{kind}' in MODELS


# ---------------------------------------------------------------------------------------------------------------
# structure at the registered size, on the meta device

@functools.lru_cache(maxsize=None)
def _meta_plain(name):
    return _meta(name)


def _meta(name, **kwargs):
    with torch.device('meta'):
        return timm.create_model(name, device='meta', dtype=torch.float32, **kwargs).eval()


@pytest.mark.parametrize('name', MODELS)
def test_default_cfg_and_feature_shape_at_registered_size(name):
    model = _meta(name)
    cfg = model.pretrained_cfg
    assert cfg['hf_hub_id'].startswith('timm/') and cfg['hf_hub_id'].count('/') == 1
    assert model.in_chans == cfg['input_size'][0] and model.num_classes == cfg['num_classes'] == 1000
    assert model.num_features > 0 and model.head_hidden_size > 0
    state = model.state_dict()
    assert cfg['classifier'] + '.weight' in state and cfg['first_conv'] + '.weight' in state
    assert all(t.device.type == 'meta' for t in [*model.parameters(), *model.buffers()])

    features = model.forward_features(torch.randn((1, *cfg['input_size']), device='meta'))
    spatial, channel = get_spatial_dim(model.output_fmt), get_channel_dim(model.output_fmt)
    assert tuple(features.shape[d] for d in spatial) == cfg['pool_size']
    assert features.shape[channel] == model.num_features
    assert model.forward_head(features, pre_logits=True).shape == (1, model.head_hidden_size)


@pytest.mark.parametrize('name', MODELS)
def test_head_reset_and_dtype(name):
    model = reduced(name).eval()
    x = image()
    with torch.no_grad():
        pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pre_logits.shape == (1, model.head_hidden_size)
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pre_logits)
        model.reset_classifier(0, '')
        unpooled = model(x)
        assert unpooled.shape == (1, 2, 2, model.num_features)  # NHWC, pool_size of the reduced model
        model.to(torch.bfloat16)
        assert model(x.to(torch.bfloat16)).dtype == torch.bfloat16
        assert reduced(name, num_classes=0).eval()(x).shape == pre_logits.shape
        assert reduced(name, num_classes=0, global_pool='').eval()(x).shape == unpooled.shape
    model.to(device='meta', dtype=torch.float64)
    model.reset_classifier(3)
    assert {(p.device.type, p.dtype) for p in model.get_classifier().parameters()} == {('meta', torch.float64)}


def _rejects_unknown_argument(name):
    try:
        timm.create_model(name, device='meta', not_a_model_arg=1)
    except TypeError:
        return True
    return False


@pytest.mark.parametrize('name', MODELS)
def test_api_contract(name):
    model = _meta(name)
    # an unknown argument fails as it does for timm's own model (timm < 1.0.31's Swin ignored it)
    assert _rejects_unknown_argument(name) == _rejects_unknown_argument(name.rsplit('_', 1)[0])
    assert inspect.signature(model.reset_classifier).parameters['global_pool'].default is None
    groups = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    assert len(set(groups.values())) > 1
    # connection parameters join the layer-decay group right after their stage's blocks
    for param_name, group in groups.items():
        if '.connection.' in param_name:
            stage = int(param_name.split('.')[1])
            last_block = max(g for n, g in groups.items() if n.startswith(f'layers.{stage}.blocks.'))
            assert group == last_block + 1, param_name
    names = {n for n, _ in model.named_parameters()}
    no_decay = model.no_weight_decay()
    assert no_decay <= names
    assert any('.connection.' in n for n in no_decay) == (model.connection_kind in ('dwa', 'mudd'))

    model.requires_grad_(False)
    model.reset_classifier(0)
    model.set_input_size(img_size=tuple(2 * s for s in model.pretrained_cfg['input_size'][-2:]))
    assert not [n for n, p in model.named_parameters() if p.requires_grad]


def _connection_param_count(kind, depths, dims):
    total = 0
    for depth, dim in zip(depths, dims):
        if kind == 'dwa':
            total += depth * (depth + 3) // 2
        elif kind == 'mudd':
            hidden = [((i + 2) // 64 + 1) * 64 for i in range(depth)]
            total += sum(h * dim + (i + 2) * h + (i + 2) for i, h in enumerate(hidden))
        elif kind == 'rir':
            total += (depth // 2 + 1) * (dim * dim + dim)
        elif kind == 'dense':
            total += sum(32 * dim + 32 + dim * (dim + 32 * (i + 1)) + dim for i in range(depth))
    return total


@pytest.mark.parametrize('name', MODELS)
def test_parameter_count_is_timm_plus_connection(name):
    base, kind = name.rsplit('_', 1)
    model, plain = _meta(name), _meta_plain(base)
    depths = [len(stage.blocks) for stage in plain.layers]
    dims = [stage.blocks[0].dim for stage in plain.layers]
    count = sum(p.numel() for p in model.parameters())
    plain_count = sum(p.numel() for p in plain.parameters())
    assert count == plain_count + _connection_param_count(kind, depths, dims)
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in model.named_parameters()
                                                        if '.connection.' not in n]


# ---------------------------------------------------------------------------------------------------------------
# numerics on real tensors (reduced width and depth)

@pytest.mark.parametrize('name', MODELS)
def test_forward_backward(name):
    model = reduced(name, num_classes=42).train()
    out = model(image(batch=2))
    assert out.shape == (2, 42) and torch.isfinite(out).all()
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing

    model.eval()
    with torch.no_grad():
        before = model(image())
        model.set_grad_checkpointing()
        torch.testing.assert_close(model(image()), before, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name', MODELS)
def test_autocast_bfloat16(name):
    assert_bfloat16_autocast_close(reduced(name, num_classes=42).eval(), image(batch=2))


@pytest.mark.parametrize('name', MODELS)
def test_features_only_default_and_getter_paths(name):
    default = reduced(name, features_only=True).eval()
    getter = reduced(name, features_only=True, feature_cls="getter").eval()
    assert default.feature_info.channels() == getter.feature_info.channels() == [16, 32, 64, 128]
    assert default.feature_info.reduction() == [4, 8, 16, 32]
    x = image()
    with torch.no_grad():
        nhwc, nchw = default(x), getter(x)
    for feature, map_, channels, reduction in zip(nhwc, nchw, default.feature_info.channels(), [4, 8, 16, 32]):
        assert feature.shape == (1, 64 // reduction, 64 // reduction, channels)  # NHWC, as timm's Swin
        assert map_.shape == (1, channels, 64 // reduction, 64 // reduction)
        torch.testing.assert_close(feature.permute(0, 3, 1, 2), map_)


@pytest.mark.parametrize('name', MODELS)
def test_forward_intermediates(name):
    model = reduced(name).eval()
    x = image()
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x), rtol=1e-5, atol=1e-8)
        assert [tuple(t.shape) for t in intermediates] == [(1, 16, 16, 16), (1, 32, 8, 8), (1, 64, 4, 4),
                                                           (1, 128, 2, 2)]
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        torch.testing.assert_close(last_two, intermediates[2:])
        model.set_grad_checkpointing()
        final_ckpt, _ = model.forward_intermediates(x)
        torch.testing.assert_close(final_ckpt, final, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name', MODELS)
def test_prune_intermediate_layers(name):
    model = reduced(name).eval()
    x = image(batch=2)
    with torch.no_grad():
        expected = model(x)
        taps = model.forward_intermediates(x, intermediates_only=True)
        pruned = copy.deepcopy(model)
        pruned.prune_intermediate_layers([3], prune_head=False)
        torch.testing.assert_close(pruned(x), expected)
    for i in range(4):
        with torch.no_grad():
            early = model.forward_intermediates(x, indices=[i], stop_early=True, intermediates_only=True)
            torch.testing.assert_close(early[0], taps[i])
        pruned = copy.deepcopy(model)
        kept = pruned.prune_intermediate_layers([i], prune_norm=True)
        assert len(pruned.layers) == i + 1 and kept == [i]
        pruned.train()
        selected = pruned.forward_intermediates(x, indices=kept, intermediates_only=True)
        features = pruned.forward_features(x)
        (selected[0].sum() + features.sum()).backward()
        assert not [n for n, p in pruned.named_parameters() if p.grad is None]


@pytest.mark.parametrize('name', MODELS)
def test_fx_forward_and_backward(name):
    # without stochastic depth the train-mode graph is also the eval-mode one: one trace checks both
    model = reduced(name, drop_path_rate=0.).train()
    traced_to_head(model, image(batch=2), 'head.fc', rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name', MODELS)
def test_input_size_options(name):
    model = reduced(name, strict_img_size=False).eval()
    with torch.no_grad():
        for size in [(64, 96), (96, 64), (36, 68)]:
            assert model(image(size=size)).shape == (1, 1000)
            features = model.forward_intermediates(image(size=size), intermediates_only=True)
            assert features[0].shape[-2:] == (size[0] // 4, size[1] // 4)
    fixed = reduced(name, img_size=128).eval()  # timm < 1.0.31's Swin V2 fails at 96 with 16-token windows
    assert fixed.patch_embed.img_size == (128, 128)
    fixed.set_input_size(img_size=(256, 256))
    with torch.no_grad():
        assert fixed(image(size=(256, 256))).shape == (1, 1000)
    double = reduced(name, dtype=torch.float64)
    assert {p.dtype for p in double.parameters()} == {torch.float64}
    assert double(image().double()).dtype == torch.float64


def test_torch_compile_smoke():
    name = 'swin_tiny_patch4_window7_224_mudd'
    model = reduced(name).eval()
    x = image(batch=2)
    compiled = torch.compile(model, backend='aot_eager')
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
    model.train()
    compiled(x).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_spatial_checks_are_not_vacuous():
    """Sanity for the reduced configuration used above: four stages, windows padded at 16x16 tokens."""
    model = reduced(MODELS[0])
    assert [len(s.blocks) for s in model.layers] == [2, 2, 4, 2]
    assert math.prod(model.patch_embed.grid_size) == 256
