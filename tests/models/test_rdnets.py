"""RDNet connected variants (``dwa``, ``rir``): parity with timm's RDNet, connection parameter counts, checkpoints,
bad input (the timm model contract of every registered variant: tests/models/test_contract.py).

How we know the numbers are right: the plain reference is timm's own ``RDNet`` (timm 1.0.x) with the same weights;
``residual`` must reproduce it bitwise and ``dwa`` / ``rir`` at initialisation within 1e-6 (float32). Parameter
counts at the registered sizes are timm's (RDNet-T 23,863,008, the official code's count) plus the connection
parameters counted here from the stage widths. Numeric checks use a reduced RDNet (four dense stages of 2-3 narrow
blocks, 64x64 input) with layer scale 1, so that the blocks' growth is not hidden under timm's 1e-6 layer scale.
"""
import copy
import functools
import io
import logging

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models.rdnet import DenseStage
from torch import nn

import densezoo
import densezoo.models.rdnets  # noqa: F401  (registers the models)
from densezoo.layers.connections import DenseResidualInResidual
from densezoo.models.rdnets import BASE_ARCHS, CONNECTIONS, ConnectedRDNet
from tests.helpers import one_line, perturb_connections, perturb_norms

NAMES = [f'{arch}_{kind}' for arch in BASE_ARCHS for kind in CONNECTIONS]
SMALL = dict(num_init_features=16, growth_rates=(8, 8, 16, 16), num_blocks_list=(3, 2, 3, 3),
             is_downsample_block=(None, True, True, True), block_type=('Block', 'Block', 'BlockESE', 'BlockESE'),
             ls_init_value=1.0)
VARIANTS = [('dwa', {}), ('dwa', dict(dilation=2, period=1)), ('rir', {}),
            ('rir', dict(group_size=1, projection='conv3x3', residual_scale=0.5))]


def _plain(seed=0, **kwargs):
    torch.manual_seed(seed)
    return perturb_norms(timm.create_model('rdnet_tiny', **{**SMALL, **kwargs}), seed=seed).eval()


def _connected(kind, seed=0, connection_args=None, **kwargs):
    torch.manual_seed(seed)
    model = timm.create_model(f'rdnet_tiny_{kind}', connection_args=connection_args, **{**SMALL, **kwargs})
    return perturb_connections(perturb_norms(model, seed=seed), seed=seed).eval()


def _image(batch=2, size=64, seed=1):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _meta(name, **kwargs):
    with torch.device('meta'):
        return timm.create_model(name, device='meta', **kwargs)


@functools.lru_cache(maxsize=None)
def _meta_plain(base):
    return _meta(base)


def _connection_param_count(kind, plain):
    """Connection parameters from the widths of timm's dense stages (3 blocks each at the registered sizes)."""
    total = 0
    for stage in plain.modules():
        if isinstance(stage, DenseStage):
            blocks, growth, out_chs = len(stage), stage.dense_block0.growth_rate, stage.num_out_features
            if kind == 'dwa':  # DenseFormer's n(n + 3) / 2 over the n = blocks - 1 averaging blocks
                total += (blocks - 1) * (blocks + 2) // 2
            else:  # one group per stage: a 1x1 projection (blocks * growth -> out_chs) with bias
                total += out_chs * (blocks * growth + 1)
    return total


# ---------------------------------------------------------------------------------------------------------------
# registry and structure at the registered sizes (meta device)

def test_registered_names_do_not_shadow_timm():
    assert sorted(timm.list_models(module='rdnets')) == sorted(NAMES)
    assert not set(NAMES) & set(timm.list_models(module='rdnet'))
    assert timm.list_models('rdnet_large_dwa', pretrained=True, include_tags=True) == [
        'rdnet_large_dwa.nv_in1k', 'rdnet_large_dwa.nv_in1k_ft_in1k_384']


@pytest.mark.parametrize('name', NAMES)
def test_registered_size_connection_params_weights_and_features(name):
    base, kind = name.rsplit('_', 1)
    model, plain = _meta(name), _meta_plain(base)
    count, plain_count = (sum(p.numel() for p in m.parameters()) for m in (model, plain))
    assert count == plain_count + _connection_param_count(kind, plain)
    assert model.pretrained_cfg['hf_hub_id'] == f'naver-ai/{base}.nv_in1k'
    assert model.feature_info == plain.feature_info and model.stage_ends == plain.stage_ends
    assert model.no_weight_decay() == {n for n, _ in model.named_parameters() if '.connection.alphas.' in n}


def test_published_size_of_rdnet_tiny():
    """RDNet-T: 23,863,008 parameters (the official code's count; the README rounds to 22M).

    rir: sum of out_chs * (3 * growth + 1) over the dense stages (out_chs, growth) = (256, 64), (440, 104),
    (600, 128), (680, 128), (720, 128), (744, 128), (1040, 224).
    """
    assert sum(p.numel() for p in _meta('rdnet_tiny_dwa').parameters()) == 23_863_008 + 7 * 5
    assert sum(p.numel() for p in _meta('rdnet_tiny_rir').parameters()) == 23_863_008 + 1_943_488


# ---------------------------------------------------------------------------------------------------------------
# identity at initialisation and checkpoints

def test_residual_connection_is_exactly_timm():
    plain = _plain()
    model = densezoo.connect(copy.deepcopy(plain), 'residual')
    x = _image()
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in plain.named_parameters()]


@pytest.mark.parametrize('kind, options', VARIANTS)
def test_timm_weights_load_and_connection_starts_as_plain(kind, options, caplog):
    plain = _plain()
    model = timm.create_model(f'rdnet_tiny_{kind}', connection_args=options, **SMALL).eval()
    with caplog.at_level(logging.WARNING, logger='densezoo'):
        result = model.load_state_dict(plain.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    connection_keys = [k for k in model.state_dict() if '.connection.' in k]
    assert f'{len(connection_keys)} connection tensors are not in the checkpoint' in caplog.text
    x = _image()
    with torch.no_grad():
        expected = plain(x)
        assert (model(x) - expected).abs().max() <= 1e-6
        perturb_connections(model)  # the connection is at work: the output moves
        assert (model(x) - expected).abs().max() > 1e-3


def test_checkpoint_files_load_through_create_model(tmp_path):
    plain = _plain()
    x = _image()
    with torch.no_grad():
        expected = plain(x)
    timm_file = tmp_path / 'timm.safetensors'
    save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, str(timm_file))
    official = tmp_path / 'official.pth'  # NAVER's layout: 'stem.stem.*', everything under 'model'
    torch.save({'model': {k.replace('stem.', 'stem.stem.', 1) if k.startswith('stem.') else k: v
                          for k, v in plain.state_dict().items()}}, official)
    for path in (timm_file, official):
        for kind in CONNECTIONS:
            model = timm.create_model(f'rdnet_tiny_{kind}', pretrained=True, **SMALL,
                                      pretrained_cfg_overlay=dict(file=str(path))).eval()
            with torch.no_grad():
                assert (model(x) - expected).abs().max() <= 1e-6, (path.name, kind)


def test_connected_checkpoint_round_trip_and_user_reinit(caplog):
    model = _connected('rir')
    other = timm.create_model('rdnet_tiny_rir', **SMALL).eval()
    with caplog.at_level(logging.WARNING, logger='densezoo'):
        other.load_state_dict(model.state_dict())
    assert 'connection tensors' not in caplog.text
    x = _image()
    with torch.no_grad():
        assert torch.equal(other(x), model(x))

    def user_init(module):  # re-initialising convolutions leaves the connections' values alone
        if isinstance(module, nn.Conv2d):
            nn.init.xavier_uniform_(module.weight)

    fresh = timm.create_model('rdnet_tiny_dwa', **SMALL).eval().apply(user_init)
    plain = timm.create_model('rdnet_tiny', **SMALL).eval()
    plain.load_state_dict({k: v for k, v in fresh.state_dict().items() if '.connection.' not in k})
    with torch.no_grad():
        assert (fresh(x) - plain(x)).abs().max() <= 1e-6


def test_connect_rewires_a_plain_timm_rdnet_in_place():
    plain = timm.create_model('rdnet_tiny', **SMALL)
    names = [n for n, _ in plain.named_parameters()]
    model = densezoo.connect(plain, 'dwa', dilation=2)
    assert model is plain and model.connection_kind == 'dwa' and model.connection_args == dict(dilation=2)
    assert type(model) is ConnectedRDNet
    assert [n for n, _ in model.named_parameters() if '.connection.' not in n] == names
    assert sorted(densezoo.connection_parameters(model)) == [
        'dense_stages.0.0.connection.alphas.0', 'dense_stages.0.0.connection.alphas.1',
        'dense_stages.1.2.connection.alphas.0', 'dense_stages.2.2.connection.alphas.0',
        'dense_stages.2.2.connection.alphas.1', 'dense_stages.3.2.connection.alphas.0',
        'dense_stages.3.2.connection.alphas.1']
    # dilation 2: the average after block 2 sees g_1, g_3 (two weights), the one after block 1 g_2 alone
    assert [a.numel() for a in model.dense_stages[0][0].connection.alphas.values()] == [1, 2]


def test_pickle_and_deepcopy():
    model = _connected('dwa')
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    x = _image()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x)) and torch.equal(copy.deepcopy(model)(x), model(x))


# ---------------------------------------------------------------------------------------------------------------
# cost

def test_flop_count_sees_the_averages_over_growth():
    """The weighted sums of ``dwa`` run over growth maps (G channels), not over the stage input."""
    from densezoo.profile.flops import count
    report = count(_connected('dwa'), input_size=(3, 64, 64), activations=False)
    # per dense stage: (growth, blocks, side of the map); the averages after blocks 2 and 3 (2 + 3 terms)
    stages = [(8, 3, 16), (8, 2, 8), (16, 3, 4), (16, 3, 2)]
    assert report.mixing_macs == sum(g * s * s * sum(range(2, b + 1)) for g, b, s in stages)


# ---------------------------------------------------------------------------------------------------------------
# bad input

@pytest.mark.parametrize('shape, message', [
    ((1, 1, 64, 64), r'^expected 3 input channels, got 1 \(input shape \(1, 1, 64, 64\)\); create the model with '
                     r'in_chans=1$'),
    ((3, 64, 64), r'^expected an image batch of shape \(B, 3, H, W\), got shape \(3, 64, 64\)$'),
    ((1, 3, 31, 64), r'^input size 31x64 is too small; this RDNet needs at least 32x32$'),
])
def test_inputs_rdnet_cannot_take(shape, message):
    model = timm.create_model('rdnet_tiny_dwa', **SMALL)
    for fn in (model, model.forward_features, model.forward_intermediates):
        with pytest.raises(ValueError, match=message) as info:
            fn(torch.randn(shape))
        one_line(info)
    features = timm.create_model('rdnet_tiny_rir', features_only=True, **SMALL)
    with pytest.raises(ValueError, match=message):
        features(torch.randn(shape))
    with torch.no_grad():  # the smallest input that fits goes through
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


@pytest.mark.parametrize('kind, options, message', [
    ('mudd', {}, r"^RDNet takes no connection 'mudd'; choose one of residual, dwa, rir$"),
    ('densenet', {}, r"^unknown connection kind 'densenet'; choose one of residual, dwa, rir$"),
    ('dwa', dict(group_size=3), r"^dense_stages\.0\.0: option 'group_size' does not apply to connection 'dwa'; its "
                                r"options are: dilation, period$"),
    ('dwa', dict(dilation=0), r'^dense_stages\.0\.0: dilation=0 is not allowed; dilation must be a positive '
                              r'integer$'),
    ('rir', dict(long_skip=True), r"^dense_stages\.0\.0: option 'long_skip' does not apply to connection 'rir'; its "
                                  r"options are: group_size, projection, residual_scale$"),
    ('rir', dict(group_size=2), r'^dense_stages\.0\.0: group_size=2 does not divide the 3 blocks of the stage; '
                                r'group_size must be one of \[1, 3\] \(or None for one group\)$'),
    ('rir', dict(projection='conv1x1'), r"^dense_stages\.0\.0: projection='conv1x1' is not allowed; choose "
                                        r"'linear' or 'conv3x3'$"),
    ('rir', dict(residual_scale=0.), r'^dense_stages\.0\.0: residual_scale=0\.0 is not allowed'),
])
def test_bad_connections_and_options_are_refused(kind, options, message):
    model = timm.create_model('rdnet_tiny', **SMALL)
    before = list(model.state_dict())
    with pytest.raises(ValueError, match=message) as info:
        densezoo.connect(model, kind, **options)
    one_line(info)
    assert list(model.state_dict()) == before  # nothing changed
    with pytest.raises(ValueError, match=message):
        ConnectedRDNet(connection=kind, connection_args=options, **SMALL)


def test_other_refusals():
    model = densezoo.connect(timm.create_model('rdnet_tiny', **SMALL), 'dwa')
    with pytest.raises(ValueError, match=r"^dense_stages\.0\.0 is already connected \('dwa'\); connect a plain model"):
        densezoo.connect(model, 'rir')
    with pytest.raises(ValueError, match=r'^dense_stages\.1\.2: connection .dwa. runs over the growth of the blocks '
                                         r'after the first; this dense stage has 1 block, give it at least 2$'):
        timm.create_model('rdnet_tiny_dwa', **{**SMALL, 'num_blocks_list': (3, 1, 3, 3)})
    with pytest.raises(ValueError, match=r'^connect\(\) does not know how to rewire a ResNet; it supports: '):
        densezoo.connect(timm.create_model('resnet18'), 'dwa')
    with pytest.raises(RuntimeError, match='cannot be compiled by TorchScript.*use torch.compile or torch.export'):
        torch.jit.script(model)


def test_dense_rir_follows_the_connection_contract():
    """``depth`` and ``taps`` as every connection: the state after block i is the stage's concatenation there
    (projected at the end of a group), and a truncated connection ends where the full one is cut."""
    model = _connected('rir', connection_args=dict(group_size=1))
    stage = model.dense_stages[0][0]
    connection = stage.connection
    assert isinstance(connection, DenseResidualInResidual) and connection.num_blocks == 3
    x = torch.randn(2, 16, 16, 16)
    with torch.no_grad():
        taps = {0: None, 1: None, 2: None}
        full = connection(x, stage, taps=taps)
        assert torch.equal(taps[2], full)
        for depth in (1, 2):
            short = connection(x, stage, depth=depth)
            assert short.shape[1] == 16 + depth * 8
            assert torch.equal(short, taps[depth - 1])
            truncated = connection.truncated(depth)
            assert len(truncated.weight) == depth and torch.equal(truncated(x, stage), short)
    with pytest.raises(ValueError, match=r'^depth=4 is not allowed; it must be an integer from 1 to 3$'):
        connection(x, stage, depth=4)
