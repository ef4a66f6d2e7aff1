"""HAT: official parity on the fixture, official parameter counts, checkpoints, input sizes, connections, errors (the SR
contract of every registered model: tests/models/test_contract.py)."""
import json
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from densezoo.models._sr import checkpoint_filter_fn
from densezoo.models.hat import HAT, OCAB, overlap_position_index
from tests.helpers import one_line, perturb_connections

FIXTURE = Path(__file__).resolve().parent.parent / 'fixtures' / 'hat_x4.pt'
DERIVED = ('relative_position_index_SA', 'relative_position_index_OCA')
#: a small configuration for the checks that do not need the fixture's weights
SMALL = dict(img_size=8, window_size=4, embed_dim=12, depths=(2, 1, 1), num_heads=(2, 3, 2), compress_ratio=3,
             squeeze_factor=4, mlp_ratio=2, upsampler='pixelshuffle')


@pytest.fixture(scope='module')
def fixture():
    return torch.load(FIXTURE, weights_only=True)


@pytest.fixture(scope='module')
def kwargs(fixture):
    return json.loads(fixture['kwargs'])


@pytest.fixture(scope='module')
def official(fixture, kwargs):
    """The fixture's official weights in densezoo's HAT, in eval mode."""
    model = HAT(**kwargs)
    model.load_state_dict(checkpoint_filter_fn(fixture['state_dict'], model))
    return model.eval()


def test_fixture_parity(fixture, kwargs):
    assert fixture['class'] == 'HAT'
    model = HAT(**kwargs)
    model.load_state_dict(checkpoint_filter_fn(fixture['state_dict'], model), strict=True)
    model.eval()
    with torch.no_grad():
        out = model(fixture['input'])
    torch.testing.assert_close(out, fixture['output'], rtol=0, atol=1e-5)


def test_derived_buffers_dropped_and_recomputed(fixture, official):
    stored = fixture['state_dict']
    filtered = checkpoint_filter_fn(stored, official)
    assert set(stored) - set(filtered) == set(DERIVED)
    assert set(filtered) == set(official.state_dict())  # every other official key, nothing more
    for key in DERIVED:
        assert torch.equal(getattr(official, key), stored[key]), key
    window = official.window_size
    assert torch.equal(overlap_position_index(window, window + window // 2), stored['relative_position_index_OCA'])
    for module in official.modules():
        if isinstance(module, OCAB):
            # the block's own index reads the same table entries as the official (partly negative) one
            table = module.relative_position_bias_table
            assert module.relative_position_index.min() >= 0
            assert torch.equal(table[module.relative_position_index.view(-1)],
                               table[stored['relative_position_index_OCA'].view(-1)])
        elif hasattr(module, 'relative_position_index'):
            assert torch.equal(module.relative_position_index, stored['relative_position_index_SA'])


@pytest.mark.parametrize('name, count', [
    ('hat_s_x2', 9_473_471), ('hat_s_x3', 9_658_111), ('hat_s_x4', 9_621_183),
    ('hat_x2', 20_624_795), ('hat_x3', 20_809_435), ('hat_x4', 20_772_507),
    ('hat_l_x2', 40_698_863), ('hat_l_x3', 40_883_503), ('hat_l_x4', 40_846_575)])
def test_official_parameter_counts(name, count):
    with torch.device('meta'):
        model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == count
    assert model.window_size == 16 and model.layers[0].residual_group.overlap_attn.overlap_win_size == 24


def test_registry_and_release_cfgs():
    names = timm.list_models('hat_*')
    for arch in ('hat_s', 'hat', 'hat_l'):
        for scale in (2, 3, 4):
            for suffix in ('', '_dwa', '_mudd'):
                assert f'{arch}_x{scale}{suffix}' in names
    cfg = timm.models.get_pretrained_cfg('hat_x4')
    assert cfg.url == '' and 'HAT_SRx4.pth' in ' '.join(cfg.notes)
    assert cfg.origin_url == 'https://github.com/XPixelGroup/HAT'
    assert 'HAT-L_SRx4_ImageNet-pretrain.pth' in ' '.join(timm.models.get_pretrained_cfg('hat_l_x4').notes)
    assert 'HAT-S_SRx3.pth' in ' '.join(timm.models.get_pretrained_cfg('hat_s_x3_dwa').notes)
    imagenet = timm.models.get_pretrained_cfg('hat_x4.imagenet_df2k')
    assert 'HAT_SRx4_ImageNet-pretrain.pth' in ' '.join(imagenet.notes)
    assert HAT.checkpoint_key == 'params_ema'


@pytest.mark.parametrize('wrap', ['params_ema', 'module'])
def test_timm_pretrained_file(fixture, kwargs, tmp_path, wrap):
    state = fixture['state_dict']
    if wrap == 'module':
        content = {f'module.{key}': value for key, value in state.items()}
    else:
        content = {'params_ema': dict(state), 'params': {key: torch.zeros_like(v) for key, v in state.items()}}
    path = tmp_path / 'hat.pth'
    torch.save(content, path)
    model = timm.create_model('hat_x4', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
    with torch.no_grad():
        out = model.eval()(fixture['input'])
    torch.testing.assert_close(out, fixture['output'], rtol=0, atol=1e-5)


def test_odd_and_non_square_sizes_and_batch(official):
    x = torch.rand(2, 3, 13, 18, generator=torch.Generator().manual_seed(0))
    window, scale = official.window_size, official.upscale
    with torch.no_grad():
        out = official(x)
        padded = F.pad(x, (0, (-18) % window, 0, (-13) % window), 'reflect')
        reference = official(padded)[..., :13 * scale, :18 * scale]
        single = official(x[1:])
    assert out.shape == (2, 3, 13 * scale, 18 * scale)
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-6)
    torch.testing.assert_close(out[1:], single, rtol=0, atol=1e-5)
    with torch.no_grad():
        tiny = official(torch.rand(1, 3, 3, 5))  # smaller than a window: padded by repeated reflection
    assert tiny.shape == (1, 3, 3 * scale, 5 * scale)


def test_img_range_255(fixture, kwargs):
    """With the input scaling folded into conv_first and the output scaling into conv_last, img_range=255 gives the
    img_range=1 outputs."""
    state = dict(fixture['state_dict'])
    state['conv_first.weight'] = state['conv_first.weight'] / 255.
    state['conv_last.weight'] = state['conv_last.weight'] * 255.
    state['conv_last.bias'] = state['conv_last.bias'] * 255.
    model = HAT(**{**kwargs, 'img_range': 255.})
    model.load_state_dict(checkpoint_filter_fn(state, model))
    with torch.no_grad():
        out = model.eval()(fixture['input'])
    torch.testing.assert_close(out, fixture['output'], rtol=0, atol=2e-5)


@pytest.mark.parametrize('scale', [2, 3])
def test_x2_x3_heads(scale):
    torch.manual_seed(0)
    model = HAT(upscale=scale, **SMALL).eval()
    upsample = model.upsample[0].weight.shape
    assert upsample == ((4 if scale == 2 else 9) * 64, 64, 3, 3) and len(model.upsample) == 2
    with torch.no_grad():
        out = model(torch.rand(1, 3, 10, 7))
    assert out.shape == (1, 3, 10 * scale, 7 * scale) and torch.isfinite(out).all()


@pytest.mark.parametrize('kind', ['dwa', 'mudd'])
def test_connected_variants_start_as_plain(kind):
    torch.manual_seed(0)
    plain = timm.create_model('hat_x2', **SMALL).eval()
    connected = timm.create_model(f'hat_x2_{kind}', **SMALL).eval()
    connected.load_state_dict(plain.state_dict())  # connection parameters keep their initial values
    assert type(connected).__name__ == 'ConnectedHAT' and connected.connection.kind == kind
    x = torch.rand(2, 3, 9, 11, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (connected(x) - plain(x)).abs().max() <= 1e-6
        perturb_connections(connected)
        assert (connected(x) - plain(x)).abs().max() > 1e-4  # the connection is in the computation


def test_backward_with_gradient_checkpointing():
    torch.manual_seed(0)
    model = HAT(upscale=2, use_checkpoint=True, **SMALL)
    model(torch.rand(1, 3, 8, 8)).square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize('upsampler', ['', 'pixelshuffledirect', 'nearest+conv'])
def test_unsupported_upsampler(upsampler):
    with pytest.raises(ValueError) as err:
        HAT(**{**SMALL, 'upsampler': upsampler})
    assert f'upsampler={upsampler!r}' in one_line(err) and 'pixelshuffle' in str(err.value)


@pytest.mark.parametrize('options, words', [
    (dict(upscale=5), 'upscale=5'),
    (dict(resi_connection='3conv'), "resi_connection='3conv'"),
    (dict(window_size=6, img_size=12, embed_dim=12), 'overlap_ratio=0.5 with window_size=6'),
    (dict(img_size=2), 'img_size=2'),
    (dict(num_heads=(5, 3, 2)), 'divisible'),
])
def test_bad_configuration(options, words):
    with pytest.raises(ValueError) as err:
        HAT(**{**SMALL, **options})
    assert words in one_line(err)


@pytest.mark.parametrize('scale, words', [
    (2, ['upsample.2.weight', 'lacks']),
    (3, ['upsample.0.weight', '256x64x3x3', '576x64x3x3']),
])
def test_checkpoint_of_another_scale(fixture, kwargs, tmp_path, scale, words):
    model = HAT(**{**kwargs, 'upscale': scale})
    with pytest.raises(ValueError) as err:
        checkpoint_filter_fn(fixture['state_dict'], model)
    message = one_line(err)
    assert all(word in message for word in words), message
    path = tmp_path / 'hat_x4.pth'
    torch.save({'params_ema': fixture['state_dict']}, path)
    with pytest.raises(ValueError, match=words[0]):
        timm.create_model(f'hat_x{scale}', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                          **{**kwargs, 'upscale': scale})
