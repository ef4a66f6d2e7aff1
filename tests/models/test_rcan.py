"""RCAN: parity with BasicSR's RCAN on the shared fixture, the original (EDSR-PyTorch) checkpoint layout, the
registered configurations, timm's pretrained path, input sizes and one-line errors (the SR contract of every
registered model: tests/models/test_contract.py)."""
import inspect
import json
from pathlib import Path

import pytest
import timm
import torch

from densezoo.models.rcan import RCAB, RCAN, checkpoint_filter_fn
from tests.helpers import one_line

FIXTURE = Path(__file__).resolve().parent.parent / 'fixtures' / 'rcan_x4.pt'
#: the fixture's architecture (num_in_ch, num_out_ch, squeeze_factor, res_scale, img_range, rgb_mean at defaults)
SMALL = dict(num_feat=32, num_group=2, num_block=2)


@pytest.fixture(scope='module')
def fixture():
    data = torch.load(FIXTURE, weights_only=True)
    kwargs = json.loads(data['kwargs'])
    kwargs['rgb_mean'] = tuple(kwargs['rgb_mean'])
    assert data['class'] == 'RCAN'
    return data, kwargs


def _load(model, state_dict):
    model.load_state_dict(checkpoint_filter_fn(state_dict, model), strict=True)
    return model.eval()


def _run(model, x):
    with torch.no_grad():
        return model(x)


# ---------------------------------------------------------------------------------------------------------------
# parity with BasicSR's RCAN

def test_fixture_parity(fixture):
    data, kwargs = fixture
    model = _load(RCAN(**kwargs), data['state_dict'])
    assert sum(p.numel() for p in model.parameters()) == 178_123
    torch.testing.assert_close(_run(model, data['input']), data['output'], rtol=0, atol=1e-5)


def test_constructor_matches_basicsr():
    # BasicSR's RCAN(num_in_ch, num_out_ch, num_feat=64, num_group=10, num_block=16, squeeze_factor=16, upscale=4,
    # res_scale=1, img_range=255., rgb_mean=(0.4488, 0.4371, 0.4040)); num_in_ch / num_out_ch may be omitted here
    defaults = {name: p.default for name, p in inspect.signature(RCAN).parameters.items()}
    assert list(defaults)[:10] == ['num_in_ch', 'num_out_ch', 'num_feat', 'num_group', 'num_block',
                                   'squeeze_factor', 'upscale', 'res_scale', 'img_range', 'rgb_mean']
    assert defaults['num_feat'] == 64 and defaults['num_group'] == 10 and defaults['num_block'] == 16
    assert defaults['squeeze_factor'] == 16 and defaults['upscale'] == 4 and defaults['res_scale'] == 1
    assert defaults['img_range'] == 255. and tuple(defaults['rgb_mean']) == (0.4488, 0.4371, 0.4040)
    model = RCAN(3, 3, **SMALL)
    assert model.in_chans == 3 and model.num_out_ch == 3


def test_res_scale_scales_the_block_residual():
    torch.manual_seed(0)
    block = RCAB(16, squeeze_factor=4, res_scale=0.25).eval()
    x = torch.randn(1, 16, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x + 0.25 * block.rcab(x))


# ---------------------------------------------------------------------------------------------------------------
# the original RCAN checkpoint layout (yulunzhang/RCAN, EDSR-PyTorch: head / body / tail, mean-shift convs)

def to_original_layout(state_dict, num_group, num_block, mean=(0.4488, 0.4371, 0.4040), rgb_range=255.):
    """Rename a BasicSR-layout RCAN state dict to the original layout and add the two mean-shift convs."""
    out = {}
    for key, value in state_dict.items():
        parts = key.split('.')
        if parts[0] == 'conv_first':
            new = ['head', '0', *parts[1:]]
        elif parts[0] == 'conv_after_body':
            new = ['body', str(num_group), *parts[1:]]
        elif parts[0] == 'upsample':
            new = ['tail', '0', *parts[1:]]
        elif parts[0] == 'conv_last':
            new = ['tail', '1', *parts[1:]]
        elif parts[0] == 'body' and parts[2] == 'conv':
            new = ['body', parts[1], 'body', str(num_block), *parts[3:]]
        elif parts[0] == 'body' and parts[5] in ('0', '2'):  # body.G.residual_group.B.rcab.{0,2}.param
            new = ['body', parts[1], 'body', parts[3], 'body', parts[5], *parts[6:]]
        elif parts[0] == 'body' and parts[6] == 'attention':  # body.G.residual_group.B.rcab.3.attention.{1,3}.param
            new = ['body', parts[1], 'body', parts[3], 'body', '3', 'conv_du', str(int(parts[7]) - 1), *parts[8:]]
        else:
            raise AssertionError(f'unexpected key {key}')
        out['.'.join(new)] = value
    identity = torch.eye(3).view(3, 3, 1, 1)
    for name, sign in (('sub_mean', -1), ('add_mean', 1)):
        out[f'{name}.weight'] = identity.clone()
        out[f'{name}.bias'] = sign * rgb_range * torch.tensor(mean)
    return out


def test_original_layout_loads(fixture):
    data, kwargs = fixture
    original = to_original_layout(data['state_dict'], kwargs['num_group'], kwargs['num_block'])
    assert 'body.0.body.2.weight' in original and 'body.2.weight' in original and 'tail.0.2.weight' in original
    assert 'body.1.body.0.body.3.conv_du.2.bias' in original
    model = RCAN(**kwargs)
    filtered = checkpoint_filter_fn(original, model)
    assert filtered.keys() == data['state_dict'].keys()
    assert all(torch.equal(filtered[key], value) for key, value in data['state_dict'].items())
    model.load_state_dict(filtered, strict=True)
    torch.testing.assert_close(_run(model.eval(), data['input']), data['output'], rtol=0, atol=1e-5)


def test_original_layout_through_timm(fixture, tmp_path):
    data, kwargs = fixture
    path = tmp_path / 'RCAN_BIX4.pt'
    torch.save(to_original_layout(data['state_dict'], kwargs['num_group'], kwargs['num_block']), path)
    model = timm.create_model('rcan_x4', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **SMALL)
    torch.testing.assert_close(_run(model.eval(), data['input']), data['output'], rtol=0, atol=1e-5)


def test_original_layout_with_another_mean_shift_is_refused(fixture):
    data, kwargs = fixture
    flickr_mean = (0.4690, 0.4490, 0.4036)  # the original code's DIVFlickr2K mean
    original = to_original_layout(data['state_dict'], kwargs['num_group'], kwargs['num_block'], mean=flickr_mean)
    with pytest.raises(ValueError, match=r'sub_mean\.bias .*\(0\.4690, 0\.4490, 0\.4036\).*rgb_mean') as info:
        checkpoint_filter_fn(original, RCAN(**kwargs))
    assert '\n' not in str(info.value)
    # the same checkpoint fits a model created with that mean
    model = RCAN(**{**kwargs, 'rgb_mean': flickr_mean})
    model.load_state_dict(checkpoint_filter_fn(original, model), strict=True)

    trained = to_original_layout(data['state_dict'], kwargs['num_group'], kwargs['num_block'])
    trained['add_mean.weight'] = trained['add_mean.weight'] * 1.05
    with pytest.raises(ValueError, match=r'add_mean\.weight differs from the identity by 0\.05'):
        checkpoint_filter_fn(trained, RCAN(**kwargs))


def test_original_layout_with_a_slightly_drifted_mean_shift_warns(fixture, caplog):
    data, kwargs = fixture
    original = to_original_layout(data['state_dict'], kwargs['num_group'], kwargs['num_block'])
    original['sub_mean.weight'] = original['sub_mean.weight'] * (1 + 1e-4)
    original['add_mean.bias'] = original['add_mean.bias'] + 0.01
    model = RCAN(**kwargs)
    with caplog.at_level('WARNING', logger='densezoo.models.rcan'):
        model.load_state_dict(checkpoint_filter_fn(original, model), strict=True)
    assert 'sub_mean.weight by 0.0001' in caplog.text and 'add_mean.bias by 0.01' in caplog.text
    caplog.clear()
    checkpoint_filter_fn(to_original_layout(data['state_dict'], kwargs['num_group'], kwargs['num_block']), model)
    assert not caplog.text


# ---------------------------------------------------------------------------------------------------------------
# registry and timm's pretrained path

@pytest.mark.parametrize('name, count', [('rcan_x2', 15_444_643), ('rcan_x3', 15_629_283), ('rcan_x4', 15_592_355)])
def test_registered_parameter_counts(name, count):
    with torch.device('meta'):
        model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == count
    assert len(model.body) == 10 and len(model.body[0].residual_group) == 20 and model.num_feat == 64
    cfg = model.pretrained_cfg
    assert cfg['architecture'] == name and cfg['tag'] == 'div2k' and cfg['origin_url']
    assert f'RCAN_BIX{name[-1]}.pt' in ' '.join(cfg['notes'])


@pytest.mark.parametrize('wrap', ['params', 'params_ema', 'module', 'bare'])
def test_timm_pretrained_path(fixture, tmp_path, wrap):
    data, _ = fixture
    state = data['state_dict']
    if wrap == 'module':
        state = {f'module.{key}': value for key, value in state.items()}
    elif wrap != 'bare':
        state = {wrap: state}
    path = tmp_path / 'rcan.pth'
    torch.save(state, path)
    model = timm.create_model('rcan_x4', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **SMALL)
    torch.testing.assert_close(_run(model.eval(), data['input']), data['output'], rtol=0, atol=1e-5)


def test_grey_model_through_timm():
    model = timm.create_model('rcan_x2', num_in_ch=1, rgb_mean=(0.5,), **SMALL).eval()
    assert model.conv_first.in_channels == 1 and model.conv_last.out_channels == 1
    assert _run(model, torch.rand(1, 1, 5, 4)).shape == (1, 1, 10, 8)


# ---------------------------------------------------------------------------------------------------------------
# sizes

@pytest.mark.parametrize('scale', [1, 8])  # the registered scales 2, 3, 4: tests/models/test_contract.py
def test_odd_non_square_batch(scale):
    torch.manual_seed(scale)
    model = RCAN(num_feat=16, num_group=2, num_block=1, squeeze_factor=4, upscale=scale).eval()
    x = torch.rand(2, 3, 5, 7)
    y = _run(model, x)
    assert y.shape == (2, 3, 5 * scale, 7 * scale)
    torch.testing.assert_close(y[1:], _run(model, x[1:]), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# one-line errors

def test_unsupported_scale():
    with pytest.raises(ValueError, match='upscale=5 is not supported by RCAN') as info:
        RCAN(upscale=5, **SMALL)
    one_line(info)
    with pytest.raises(ValueError, match='upscale=5'):
        timm.create_model('rcan_x4', upscale=5, **SMALL)


def test_bad_arguments():
    with pytest.raises(ValueError, match='squeeze_factor=16 leaves no channels'):
        RCAN(num_feat=8, num_group=1, num_block=1)
    with pytest.raises(ValueError, match='num_in_ch=1 and in_chans=3 disagree'):
        RCAN(num_in_ch=1, in_chans=3, rgb_mean=(0.5,), **SMALL)
    with pytest.raises(ValueError, match='rgb_mean has 3 values'):
        RCAN(num_in_ch=1, **SMALL)


def test_checkpoint_of_another_scale(fixture, tmp_path):
    data, _ = fixture
    x3 = RCAN(upscale=3, **SMALL).state_dict()
    with pytest.raises(ValueError, match=r'upsample\.0\.weight has shape 288x32x3x3 in the checkpoint and '
                                         r'128x32x3x3 in the model') as info:
        checkpoint_filter_fn(x3, RCAN(upscale=4, **SMALL))
    one_line(info)
    with pytest.raises(ValueError, match=r'lacks upsample\.2\.weight'):
        checkpoint_filter_fn(RCAN(upscale=2, **SMALL).state_dict(), RCAN(upscale=4, **SMALL))
    path = tmp_path / 'rcan_x3.pth'
    torch.save({'params': x3}, path)
    with pytest.raises(ValueError, match=r'upsample\.0\.weight has shape 288x32x3x3'):
        timm.create_model('rcan_x4', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **SMALL)
