"""The model contract, checked on every registered model: timm's model API for the classification families, the
image-to-image contract for the super-resolution ones. The family files check what is specific to a family.

How we know the expectations are right: they are timm's model API (timm 1.0.x: default cfgs, ``forward_features``
/ ``forward_head``, ``reset_classifier``, ``group_matcher``, ``no_weight_decay``, ``set_grad_checkpointing``,
features_only through the default and the getter path, ``forward_intermediates``, ``prune_intermediate_layers``,
FX tracing), checked against timm's own models where a plain counterpart exists (the name without its
``_<kind>`` suffix: timm's model for Swin, ViT, PVT v2 and RDNet, densezoo's plain model for PVT v1 and LookupViT):
same parameter names and shapes, same cfg, and a parameter count of the plain model plus the connection's, the
latter also counted here from each connection's definition. Where a family departs from the others it does so as
timm's own model of that family does (``FAMILIES``, one entry per family: its output format, its features_only
paths, its head); the sizes its reduced model must give (channels and strides of its intermediates) are written
down from its architecture, not read from the model. An SR model takes any image size (padded inside forward,
cropped to the scaled size), treats the samples of a batch independently, refuses classifier options and bad input
with one-line errors, and its cfg names where the official weights are.

Structural checks (cfg, parameter count, API) run on every registered name, at the registered size on the meta
device. Numerical checks run on real tensors at the family's reduced width and depth (``tests/models/reduced.py``),
with norms and connection parameters moved away from their initial values; they run once per distinct reduced
construction (family, connection kind and options, and the construction arguments left after the reduction),
since registered models that differ only in what the reduction sets (width, depth, heads, window or patch size)
are the same model there.
"""
import collections
import copy
import dataclasses
import functools
import inspect
import math
from typing import Callable, Optional, Tuple

import pytest
import timm
import torch
from timm.models import group_parameters
from torch import nn

import densezoo
from densezoo.layers.connections import StageConnection
from tests.helpers import assert_bfloat16_autocast_close, traced_to_head
from tests.models.reduced import reduced_args, reduced_input, reduced_model, representatives

CLASSIFICATION = densezoo.list_models(task='classification')
SR = densezoo.list_models(task='sr')
CLASSIFICATION_NUMERICS = representatives(CLASSIFICATION)
SR_NUMERICS = representatives(SR)


@dataclasses.dataclass(frozen=True)
class Family:
    """How a classification family presents timm's contract, at its reduced size where sizes are given."""
    count: int  #: registered models
    stages: str  #: attribute of the stages (or, isotropic, the blocks) that pruning shortens
    features: str  #: format of forward_features: 'NHWC', 'NCHW', or 'NLC' tokens with prefix tokens first
    channels: Tuple[int, ...]  #: channels of the intermediates of the reduced model
    reductions: Tuple[int, ...]  #: their strides
    head: str  #: the classifier module (FX tracing target)
    feature_cls: Tuple[Optional[str], ...] = (None,)  #: features_only paths: the family's default, 'getter'
    default_features: str = 'NCHW'  #: format of features_only's default path
    prefix: Callable[[nn.Module], int] = lambda model: 0  #: prefix tokens of an 'NLC' forward_features
    connection_group: Tuple[str, int] = ('blocks.', 1)  #: a connection's layer-decay group: that of the blocks
    #: (this key after the connection's owner) plus the offset
    input_options: dict = dataclasses.field(default_factory=dict)  #: constructor options for other input sizes
    input_sizes: Tuple[Tuple[int, int], ...] = ((64, 96), (96, 64))  #: other input sizes the reduced model takes
    set_input_size: bool = True  #: whether the model can be resized with set_input_size(img_size=...)
    fx_size: Optional[Tuple[int, int]] = None  #: input size of the FX trace (default: the reduced input)
    autocast: Tuple[float, float] = (0.05, 0.05)  #: connection perturbation and tolerance under bfloat16
    connection_formula: bool = True  #: connections over block outputs, counted by connection_parameter_count
    #: output of the head without pooling or classes, from forward_features (timm's RDNet head norms it)
    unpooled: Callable[[nn.Module, torch.Tensor], torch.Tensor] = lambda model, features: features


_SWIN = dict(count=12, stages='layers', features='NHWC', channels=(16, 32, 64, 128), reductions=(4, 8, 16, 32),
             head='head.fc', feature_cls=(None, 'getter'), default_features='NHWC',
             input_options=dict(strict_img_size=False), input_sizes=((64, 96), (96, 64), (36, 68)))
_PVT = dict(stages='stages', channels=(16, 32, 48, 64), reductions=(4, 8, 16, 32), head='head', fx_size=(64, 96),
            autocast=(0.01, 0.03))  # MUDD's generated weights at std 0.05 amplify bfloat16 rounding (measured 0.01)
FAMILIES = {
    'Swin': Family(**_SWIN),
    'SwinV2': Family(**dict(_SWIN, count=24)),
    'PVT': Family(count=20, features='NLC', prefix=lambda model: model.stages[-1].num_prefix_tokens, **_PVT),
    'PVTv2': Family(count=28, features='NCHW', feature_cls=(None, 'getter'), set_input_size=False, **_PVT),
    'ViT': Family(count=24, stages='blocks', features='NLC', channels=(32,) * 4, reductions=(8,) * 4, head='head',
                  prefix=lambda model: model.num_prefix_tokens, input_options=dict(dynamic_img_size=True),
                  input_sizes=((24, 40), (48, 32))),
    'LookupViT': Family(count=12, stages='blocks', features='NLC', channels=(32,) * 3, reductions=(8,) * 3,
                        head='head', prefix=lambda model: model.num_compressed,
                        input_options=dict(dynamic_img_size=True), input_sizes=((96, 128), (32, 40))),
    'RDNet': Family(count=8, stages='dense_stages', features='NCHW', channels=(40, 32, 64, 80),
                    reductions=(4, 8, 16, 32), head='head.fc', feature_cls=(None, 'getter'),
                    connection_group=('dense_block', 0), input_sizes=((64, 96), (40, 72)), set_input_size=False,
                    connection_formula=False,  # its connections run over growth maps: see test_rdnets.py
                    unpooled=lambda model, features: model.head.norm(features)),
}
#: SR families and their registered models
SR_COUNTS = {'SwinIR': 39, 'DRCT': 18, 'HAT': 27, 'RCAN': 3, 'RDN': 3}


def family(name):
    return reduced_args(name)[0]


def layout(name) -> Family:
    return FAMILIES[family(name)]


def split(name):
    """``(plain counterpart, connection kind)``; ``(None, None)`` for a plain model."""
    for kind in sorted(densezoo.CONNECTION_KINDS, key=len, reverse=True):
        if name.endswith('_' + kind):
            return name[:-len(kind) - 1], kind
    return None, None


def test_registry_lists_every_family_and_connection():
    assert collections.Counter(map(family, CLASSIFICATION)) == {f: spec.count for f, spec in FAMILIES.items()}
    for kind in ('dwa', 'mudd', 'rir', 'dense'):
        assert f'swin_tiny_patch4_window7_224_{kind}' in CLASSIFICATION
        assert f'swinv2_base_window16_256_{kind}' in CLASSIFICATION
    assert collections.Counter(map(family, SR)) == SR_COUNTS
    for name in ('swinir_classical_x2', 'swinir_classical_x4', 'swinir_light_x2', 'swinir_real_x4',
                 'swinir_denoise_color', 'swinir_jpeg', 'drct_x4', 'drct_l_x4', 'swinir_light_x2_dwa',
                 'drct_x4_mudd'):
        assert name in SR, name
    assert not set(SR) & set(CLASSIFICATION)
    # one numerical run per reduced construction: fewer than the names, every family and connection kind kept
    for names, numerics in ((CLASSIFICATION, CLASSIFICATION_NUMERICS), (SR, SR_NUMERICS)):
        assert len(numerics) < len(names)
        assert {(family(n), split(n)[1]) for n in numerics} == {(family(n), split(n)[1]) for n in names}


# ---------------------------------------------------------------------------------------------------------------
# structure at the registered size, on the meta device

@functools.lru_cache(maxsize=None)
def _meta_cached(name):
    """A registered model on the meta device, shared by the checks that do not change it."""
    with torch.device('meta'):
        return timm.create_model(name, device='meta').eval()


def as_map(features, fmt, prefix, grid):
    """forward_features output as an NCHW map (prefix tokens dropped)."""
    if fmt == 'NHWC':
        return features.permute(0, 3, 1, 2)
    if fmt == 'NLC':
        assert features.shape[1] == prefix + math.prod(grid)
        return features[:, prefix:].transpose(1, 2).reshape(features.shape[0], -1, *grid)
    return features


@pytest.mark.parametrize('name', CLASSIFICATION)
def test_default_cfg_and_feature_shape_at_registered_size(name):
    model, info = _meta_cached(name), layout(name)
    cfg = model.pretrained_cfg
    assert cfg['architecture'] == name and model.default_cfg == cfg
    assert cfg.get('hf_hub_id') or cfg.get('url') or cfg.get('tag') == 'untrained', 'the cfg says where the weights are'
    assert model.in_chans == cfg['input_size'][0] == len(cfg['mean']) == len(cfg['std'])
    assert model.num_classes == cfg['num_classes'] == 1000 and cfg['crop_pct'] and cfg['interpolation']
    assert model.num_features > 0 and model.head_hidden_size > 0
    state = model.state_dict()
    assert cfg['classifier'] + '.weight' in state and cfg['first_conv'] + '.weight' in state
    assert all(t.device.type == 'meta' for t in [*model.parameters(), *model.buffers()])
    plain_name, _ = split(name)
    if plain_name:  # the connected model is used as its plain counterpart is (weights, preprocessing)
        plain_cfg = _meta_cached(plain_name).pretrained_cfg
        for key in ('hf_hub_id', 'url', 'input_size', 'mean', 'std', 'crop_pct', 'interpolation', 'first_conv',
                    'classifier', 'pool_size'):
            assert cfg.get(key) == plain_cfg.get(key), key

    x = torch.empty((2, *cfg['input_size']), device='meta')
    features = model.forward_features(x)
    reduction = model.feature_info[-1]['reduction']
    grid = tuple(s // reduction for s in cfg['input_size'][-2:])
    assert grid == (cfg.get('pool_size') or grid)
    feature_map = as_map(features, info.features, info.prefix(model), grid)
    assert feature_map.shape == (2, model.num_features, *grid)
    assert model.forward_head(features, pre_logits=True).shape == (2, model.head_hidden_size)
    assert model.forward_head(features).shape == (2, 1000)


def _connection_no_weight_decay(model):
    return {f'{owner}.{n}'.lstrip('.') for owner, module in model.named_modules()
            if isinstance(module, StageConnection) for n in module.no_weight_decay_names()}


@pytest.mark.parametrize('name', CLASSIFICATION)
def test_api_contract(name):
    model, info = copy.deepcopy(_meta_cached(name)), layout(name)  # changed below
    with pytest.raises(TypeError):  # an unknown argument fails, as it does for timm's own models
        timm.create_model(name, device='meta', not_a_model_arg=1)
    assert inspect.signature(model.reset_classifier).parameters['global_pool'].default is None  # keeps the pool
    groups = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    assert len(set(groups.values())) > 1 and groups.keys() == {n for n, _ in model.named_parameters()}
    blocks, offset = info.connection_group
    for param_name, group in groups.items():  # connection parameters join their blocks' layer-decay group
        if param_name.startswith('connection.') or '.connection.' in param_name:
            owner = param_name[:param_name.index('connection.')]
            assert group == max(g for n, g in groups.items() if n.startswith(owner + blocks)) + offset, param_name
    names = {n for n, _ in model.named_parameters()}
    no_decay, connection_no_decay = set(model.no_weight_decay()), _connection_no_weight_decay(model)
    assert connection_no_decay <= names and connection_no_decay <= no_decay
    plain_name, kind = split(name)
    assert bool(connection_no_decay) == (kind in ('dwa', 'mudd', 'value_residual', 'laurel'))
    if plain_name:  # the plain model's, and the connection's (timm's ViT also names tokens it may not have)
        plain = _meta_cached(plain_name)
        plain_no_decay = set(plain.no_weight_decay()) if hasattr(plain, 'no_weight_decay') else set()
        assert no_decay == plain_no_decay | connection_no_decay
    else:
        assert no_decay <= names

    model.set_grad_checkpointing()
    model.requires_grad_(False)
    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), nn.Identity)
    if info.set_input_size:
        model.set_input_size(img_size=tuple(2 * s for s in model.pretrained_cfg['input_size'][-2:]))
    assert not [n for n, p in model.named_parameters() if p.requires_grad]
    model.to(dtype=torch.float64)
    model.reset_classifier(3)
    assert {(p.device.type, p.dtype) for p in model.get_classifier().parameters()} == {('meta', torch.float64)}


def connection_parameter_count(kind, options, stages):
    """Parameters of a connection over ``stages`` [(blocks, width)], counted from its definition."""
    total = 0
    for depth, dim in stages:
        if kind == 'dwa':  # one weight per (block, earlier output) pair: n (n + 3) / 2
            total += depth * (depth + 3) // 2
        elif kind == 'mudd':  # streams after every block but the last (one there), hidden (streams * inputs) // 64
            for i in range(depth):  # * 64 + 64
                mixed = (options.get('num_streams', 1) if i < depth - 1 else 1) * (i + 2)
                hidden = mixed // 64 * 64 + 64
                total += hidden * dim + mixed * hidden + mixed
        elif kind == 'rir':  # a linear projection per group and one for the stage's long skip
            total += (depth // options['group_size'] + options['long_skip']) * (dim * dim + dim)
        elif kind == 'dense':  # a transition to the growth and a fusion of D + growth * (i + 1) channels per block
            growth = options['growth']
            total += sum(growth * dim + growth + dim * (dim + growth * (i + 1)) + dim for i in range(depth))
        elif kind == 'value_residual':  # one lambda per block after the first
            total += depth - 1
        elif kind == 'laurel':  # alpha, beta and a rank-r pair per block
            total += depth * (2 + 2 * options['rank'] * dim)
        else:
            raise AssertionError(kind)
    return total


def _stages(model, info):
    """[(blocks, width)] per stage; an isotropic model is one stage of ``embed_dim``."""
    container = getattr(model, info.stages)
    if info.stages == 'blocks':
        return [(len(container), model.embed_dim)]
    return [(len(stage.blocks), feature['num_chs']) for stage, feature in zip(container, model.feature_info)]


def _assert_plain_plus_connection(name, model):
    """Parameters of the plain counterpart (names, shapes, which load strictly) plus the connection's."""
    plain_name, kind = split(name)
    connection = densezoo.connection_parameters(model)
    assert getattr(model, 'connection_kind', None) == kind
    if not plain_name:
        assert not connection and not any('connection.' in n for n, _ in model.named_parameters())
        return None
    plain = _meta_cached(plain_name)
    assert connection and not densezoo.connection_parameters(plain)
    assert [(n, p.shape) for n, p in model.named_parameters() if n not in connection] == \
        [(n, p.shape) for n, p in plain.named_parameters()]
    count, plain_count = (sum(p.numel() for p in m.parameters()) for m in (model, plain))
    connection_count = sum(p.numel() for p in connection.values())
    assert count == plain_count + connection_count
    model.load_state_dict(plain.state_dict(), strict=True)  # connection parameters keep their start
    return plain, kind, connection_count


@pytest.mark.parametrize('name', CLASSIFICATION)
def test_parameter_count_is_plain_plus_connection(name):
    model, info = _meta_cached(name), layout(name)
    result = _assert_plain_plus_connection(name, model)
    if result and info.connection_formula:
        plain, kind, connection_count = result
        assert connection_count == connection_parameter_count(kind, model.connection_args, _stages(plain, info))


# ---------------------------------------------------------------------------------------------------------------
# numerics on real tensors (reduced width and depth), once per reduced construction

def image(name, model, batch=2, size=None, seed=1):
    if size is None:
        return reduced_input(name, model, batch=batch, seed=seed)
    return torch.randn((batch, model.in_chans, *size), generator=torch.Generator().manual_seed(seed))


def _taps(name):
    info = layout(name)
    return len(info.channels)


def _expected_taps(name, batch, size):
    info = layout(name)
    return [(batch, c, size[0] // r, size[1] // r) for c, r in zip(info.channels, info.reductions)]


@pytest.mark.parametrize('name', CLASSIFICATION_NUMERICS)
def test_head_reset_and_dtype(name):
    model, info = reduced_model(name).eval(), layout(name)
    x = image(name, model)
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        assert pre_logits.shape == (2, model.head_hidden_size)
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pre_logits)
        model.reset_classifier(0, '')
        torch.testing.assert_close(model(x), info.unpooled(model, features))  # no pooling: forward_features
        model.reset_classifier(3, 'avg')
        assert model(x).shape == (2, 3) and model.get_classifier().out_features == 3
        assert reduced_model(name, num_classes=0).eval()(x).shape == pre_logits.shape
        assert reduced_model(name, num_classes=0, global_pool='').eval()(x).shape == features.shape
        model.to(torch.bfloat16)
        assert model(x.to(torch.bfloat16)).dtype == torch.bfloat16
    double = reduced_model(name, dtype=torch.float64)
    assert {p.dtype for p in double.parameters()} == {torch.float64}
    assert double(x.double()).dtype == torch.float64


def _gradients(model, x, seed=3):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same stochastic depth in both runs
    model(x).logsumexp(-1).mean().backward()
    return {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize('name', CLASSIFICATION_NUMERICS)
def test_forward_backward_and_checkpointing(name):
    model = reduced_model(name, num_classes=7, drop_path_rate=0.1).train()
    x = image(name, model, batch=8)  # stochastic depth leaves no block without a sample
    out = model(x)
    assert out.shape == (8, 7) and torch.isfinite(out).all()
    grads = _gradients(model, x)
    unused = [n for n, g in grads.items() if g is None or not torch.isfinite(g).all() or not g.abs().sum() > 0]
    assert not unused, unused
    model.set_grad_checkpointing()
    for param_name, grad in _gradients(model, x).items():  # the same gradients with checkpointing
        torch.testing.assert_close(grad, grads[param_name], rtol=1e-4, atol=1e-6, msg=param_name)
    model.eval()
    with torch.no_grad():
        checkpointed = model(x)
        model.set_grad_checkpointing(False)
        torch.testing.assert_close(checkpointed, model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', CLASSIFICATION_NUMERICS)
def test_autocast_bfloat16(name):
    std, tolerance = layout(name).autocast
    model = reduced_model(name, num_classes=7, connection_std=std).eval()
    assert_bfloat16_autocast_close(model, image(name, model), tolerance=tolerance)


@pytest.mark.parametrize('name', CLASSIFICATION_NUMERICS)
def test_forward_intermediates(name):
    model, info = reduced_model(name).eval(), layout(name)
    x = image(name, model)
    size = tuple(x.shape[-2:])
    last = _taps(name) - 1
    with torch.no_grad():
        final, taps = model.forward_intermediates(x)
        features = model.forward_features(x)
        torch.testing.assert_close(final, features, rtol=1e-5, atol=1e-6)
        assert [tuple(t.shape) for t in taps] == _expected_taps(name, 2, size)
        torch.testing.assert_close(model.forward_intermediates(x, indices=2, intermediates_only=True), taps[-2:])
        # forward_features is the last intermediate with the final norm, in the family's output format
        normed = model.forward_intermediates(x, indices=[last], norm=True, intermediates_only=True)[0]
        grid = tuple(s // info.reductions[-1] for s in size)
        torch.testing.assert_close(as_map(features, info.features, info.prefix(model), grid), normed)
        model.set_grad_checkpointing()
        final_checkpointed, _ = model.forward_intermediates(x)
        torch.testing.assert_close(final_checkpointed, final, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name', CLASSIFICATION_NUMERICS)
def test_features_only_default_and_getter_paths(name):
    """features_only gives the intermediates of the same model (same seed, same weights), in the path's format."""
    model, info = reduced_model(name).eval(), layout(name)
    x = image(name, model)
    all_taps = tuple(range(_taps(name)))
    with torch.no_grad():
        taps = model.forward_intermediates(x, intermediates_only=True)
        for feature_cls in info.feature_cls:
            options = {} if feature_cls is None else dict(feature_cls=feature_cls)
            features = reduced_model(name, features_only=True, out_indices=all_taps, **options).eval()
            assert features.feature_info.channels() == list(info.channels)
            assert features.feature_info.reduction() == list(info.reductions)
            fmt = info.default_features if feature_cls is None else 'NCHW'
            out = features(x)
            assert len(out) == len(taps)
            for got, want in zip(out, taps):
                torch.testing.assert_close(got.permute(0, 3, 1, 2) if fmt == 'NHWC' else got, want,
                                           msg=str(feature_cls))
        last_two = reduced_model(name, features_only=True, out_indices=all_taps[-2:]).eval()
        assert [tuple(f.shape) for f in last_two(x)] == [tuple(t.shape) if info.default_features == 'NCHW' else
                                                         tuple(t.permute(0, 2, 3, 1).shape) for t in taps[-2:]]


@pytest.mark.parametrize('name', CLASSIFICATION_NUMERICS)
def test_prune_intermediate_layers(name):
    model, info = reduced_model(name).eval(), layout(name)
    x = image(name, model)
    last = _taps(name) - 1
    with torch.no_grad():
        expected = model(x)
        taps = model.forward_intermediates(x, intermediates_only=True)
        kept = copy.deepcopy(model)
        assert kept.prune_intermediate_layers([last], prune_head=False) == [last]
        torch.testing.assert_close(kept(x), expected)
    for i in range(last + 1):
        with torch.no_grad():
            early = model.forward_intermediates(x, indices=[i], stop_early=True, intermediates_only=True)
            torch.testing.assert_close(early[0], taps[i])
        pruned = copy.deepcopy(model)
        assert pruned.prune_intermediate_layers([i], prune_norm=True) == [i]
        assert len(getattr(pruned, info.stages)) == i + 1
        with torch.no_grad():
            selected = pruned.forward_intermediates(x, indices=[i], intermediates_only=True)[0]
            torch.testing.assert_close(selected, taps[i])
            torch.testing.assert_close(pruned(x), pruned.forward_features(x))  # no head, no pooling
        pruned.train()
        selected = pruned.forward_intermediates(x, indices=[i], intermediates_only=True)[0]
        (selected.sum() + pruned.forward_features(x).sum()).backward()
        assert not [n for n, p in pruned.named_parameters() if p.grad is None]


@pytest.mark.parametrize('name', CLASSIFICATION_NUMERICS)
def test_fx_forward_and_backward(name):
    # without stochastic depth the train-mode graph is also the eval-mode one: one trace checks both
    model, info = reduced_model(name, drop_path_rate=0.).train(), layout(name)
    traced_to_head(model, image(name, model, size=info.fx_size), info.head, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name', CLASSIFICATION_NUMERICS)
def test_input_size_options(name):
    info = layout(name)
    model = reduced_model(name, **info.input_options).eval()
    with torch.no_grad():
        for size in info.input_sizes:
            x = image(name, model, batch=1, size=size)
            assert model(x).shape == (1, 1000)
            taps = model.forward_intermediates(x, intermediates_only=True)
            assert taps[0].shape[-2:] == (size[0] // info.reductions[0], size[1] // info.reductions[0])
    if info.set_input_size:
        size = reduced_args(name)[2]
        resized = reduced_model(name).eval()
        new_size = (2 * size, size + size // 2)
        resized.set_input_size(img_size=new_size)
        with torch.no_grad():
            assert resized(image(name, resized, batch=1, size=new_size)).shape == (1, 1000)


def test_torch_compile_smoke():
    name = 'swin_tiny_patch4_window7_224_mudd'
    model = reduced_model(name).eval()
    x = image(name, model)
    compiled = torch.compile(model, backend='aot_eager')
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
    model.train()
    compiled(x).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


# ---------------------------------------------------------------------------------------------------------------
# super-resolution (image-to-image) models

@pytest.mark.parametrize('name', SR)
def test_sr_cfg_and_structure_at_registered_size(name):
    model = _meta_cached(name)
    cfg = model.pretrained_cfg
    assert cfg['architecture'] == name and cfg['num_classes'] == 0 and cfg['classifier'] is None
    assert cfg['url'] or cfg['notes'], 'the cfg names where the official weights are'
    assert cfg['origin_url'].startswith('https://') and cfg['first_conv'] in dict(model.named_modules())
    assert cfg['input_size'][0] == model.in_chans and model.num_classes == 0
    assert model.upscale >= 1 and model.pad_multiple >= 1
    _assert_plain_plus_connection(name, model)


@pytest.mark.parametrize('name', SR_NUMERICS)
def test_sr_forward_backward_at_odd_sizes(name):
    model = reduced_model(name)
    channels, scale = model.in_chans, model.upscale
    x = torch.rand(2, channels, 9, 14, generator=torch.Generator().manual_seed(1))
    out = model.train()(x)
    assert out.shape == (2, channels, 9 * scale, 14 * scale) and torch.isfinite(out).all()
    out.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    unused = [n for n, p in model.named_parameters() if n not in grads or not grads[n].abs().sum()]
    assert not unused, unused
    model.zero_grad()
    model.set_grad_checkpointing()
    model(x).square().mean().backward()  # the same gradients with checkpointing
    for param_name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, grads[param_name], rtol=1e-5, atol=1e-6, msg=param_name)
    model.set_grad_checkpointing(False)
    model.eval()
    with torch.no_grad():
        first = model(x)
        torch.testing.assert_close(model(x[1:]), first[1:], rtol=0, atol=5e-5)


#: one name per SR family and connection kind
SR_ERRORS = list({(family(n), split(n)[1]): n for n in reversed(SR)}.values())


@pytest.mark.parametrize('name', SR_ERRORS)
def test_sr_wrong_input_and_arguments_are_one_line_errors(name):
    model = reduced_model(name, perturb=False)
    with pytest.raises(ValueError, match=f'expected {model.in_chans} input channels') as info:
        model(torch.rand(1, model.in_chans + 1, 8, 8))
    assert '\n' not in str(info.value)
    with pytest.raises(ValueError, match=rf'^expected an image batch of shape \(B, {model.in_chans}, H, W\), got '
                                         rf'shape \({model.in_chans}, 8, 8\)$'):
        model(torch.rand(model.in_chans, 8, 8))
    with pytest.raises(TypeError):
        timm.create_model(name, device='meta', definitely_not_an_argument=1)
    for option in (dict(num_classes=10), dict(features_only=True)):
        with pytest.raises(TypeError, match=f'image-to-image model; {next(iter(option))}=') as info:
            timm.create_model(name, device='meta', **option)
        assert '\n' not in str(info.value)
