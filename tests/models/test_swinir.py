"""SwinIR: official parameter counts, outputs equal to the official implementation, checkpoints, input sizes (the SR
contract of every registered model: tests/models/test_contract.py).

How we know: the fixtures hold outputs of the official ``models/network_swinir.py`` (JingyunLiang/SwinIR, commit in
each file) for random weights; the counts are those of the official configurations (../research anchors: SwinIR-M
×4 11,900,199, SwinIR-S ×2 910,152, ...), which do not depend on ``img_size``.
"""
import json

import pytest
import timm
import torch
import torch.nn.functional as F

import densezoo
from densezoo.layers.window_attention import relative_position_index, shifted_window_mask
from densezoo.models._sr import checkpoint_filter_fn
from densezoo.models.swinir import SwinIR
from tests.helpers import load_fixture, perturb_connections, scale_preserving_weights

FIXTURES = ['swinir_classical_x2.pt', 'swinir_lightweight_x3.pt', 'swinir_realsr_x4.pt', 'swinir_denoise_1conv.pt',
            'swinir_denoise_3conv.pt']

OFFICIAL_COUNTS = {
    'swinir_classical_x2': 11_752_487, 'swinir_classical_x3': 11_937_127, 'swinir_classical_x4': 11_900_199,
    'swinir_light_x2': 910_152, 'swinir_light_x3': 918_267, 'swinir_light_x4': 929_628,
    'swinir_real_x4': 11_715_559, 'swinir_real_l_x4': 28_013_059,
    'swinir_denoise_gray': 11_497_681, 'swinir_denoise_color': 11_504_163,
    'swinir_jpeg': 11_485_585, 'swinir_jpeg_color': 11_492_067,
}

SMALL = dict(img_size=16, window_size=4, depths=(2, 2), embed_dim=16, num_heads=(2, 2), mlp_ratio=2)


def _fixture_model(data, **overrides):
    model = SwinIR(**{**json.loads(data['kwargs']), **overrides}).eval()
    model.load_state_dict(checkpoint_filter_fn(dict(data['state_dict']), model), strict=True)
    return model


@pytest.mark.parametrize('fixture', FIXTURES)
def test_output_equals_official(fixture):
    data = load_fixture(fixture)
    model = _fixture_model(data)
    assert sum(p.numel() for p in model.parameters()) == sum(
        v.numel() for k, v in data['state_dict'].items() if 'attn_mask' not in k and 'relative_position_index' not in k)
    with torch.no_grad():
        out = model(data['input'])
    torch.testing.assert_close(out, data['output'], rtol=0, atol=1e-5)


@pytest.mark.parametrize('fixture', FIXTURES)
def test_stored_masks_and_indices_are_what_the_model_computes(fixture):
    """The filter drops the official derived buffers; they equal the values the model computes on the fly."""
    data = load_fixture(fixture)
    model = _fixture_model(data)
    kwargs = json.loads(data['kwargs'])
    size, window = kwargs['img_size'], kwargs['window_size']
    derived = {k: v for k, v in data['state_dict'].items() if 'attn_mask' in k or 'relative_position_index' in k}
    assert derived and not set(derived) & set(model.state_dict())
    for key, value in derived.items():
        block = model.get_submodule(key.split('.attn')[0])
        if key.endswith('attn_mask'):
            assert torch.equal(value, shifted_window_mask(size, size, window, block.shift_size))
        else:
            assert torch.equal(value, relative_position_index(window))
            assert torch.equal(value, block.attn.relative_position_index)


def test_the_trained_img_size_does_not_tie_the_weights_to_one_size():
    """A checkpoint stored with masks for 16x16 loads into a model built for 64x64 and gives the same output."""
    data = load_fixture('swinir_classical_x2.pt')
    reference = _fixture_model(data)
    model = _fixture_model(data, img_size=64)
    x = data['input']
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


@pytest.mark.parametrize('name', sorted(OFFICIAL_COUNTS))
def test_official_parameter_counts(name):
    with torch.device('meta'):
        model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_COUNTS[name]
    assert model.pretrained_cfg['url'].startswith('https://github.com/JingyunLiang/SwinIR/releases/')


@pytest.mark.parametrize('wrap', ['bare', 'params', 'params_ema', 'module'])
def test_official_checkpoints_load_through_timm(tmp_path, wrap):
    data = load_fixture('swinir_lightweight_x3.pt')
    state = dict(data['state_dict'])
    if wrap == 'module':
        state = {'params': {f'module.{k}': v for k, v in state.items()}}
    elif wrap != 'bare':
        state = {wrap: state, 'other': {'weights': torch.zeros(1)}} if wrap == 'params_ema' else {wrap: state}
    path = tmp_path / 'release.pth'
    torch.save(state, path)
    kwargs = json.loads(data['kwargs'])
    model = timm.create_model('swinir_light_x3', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              **{k: v for k, v in kwargs.items() if k != 'upscale'}).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(data['input']), data['output'], rtol=0, atol=1e-5)


def test_release_files_holding_params_and_params_ema_use_the_models_key():
    data = load_fixture('swinir_realsr_x4.pt')
    model = SwinIR(**json.loads(data['kwargs']))
    zeros = {k: torch.zeros_like(v) for k, v in data['state_dict'].items()}
    assert model.checkpoint_key == 'params_ema'  # real-world SR releases are evaluated with their EMA weights
    loaded = checkpoint_filter_fn({'params': zeros, 'params_ema': dict(data['state_dict'])}, model)
    assert torch.equal(loaded['conv_first.weight'], data['state_dict']['conv_first.weight'])
    light = SwinIR(**json.loads(load_fixture('swinir_lightweight_x3.pt')['kwargs']))
    assert light.checkpoint_key == 'params'


def test_checkpoint_of_another_scale_names_the_first_mismatching_key(tmp_path):
    data = load_fixture('swinir_lightweight_x3.pt')
    kwargs = {**json.loads(data['kwargs']), 'upscale': 2}
    with pytest.raises(ValueError, match=r'upsample\.0\.weight has shape 27x30x3x3 in the checkpoint and '
                                         r'12x30x3x3 in the model; is it a checkpoint of another scale'):
        checkpoint_filter_fn(dict(data['state_dict']), SwinIR(**kwargs))
    other = SwinIR(**{**json.loads(data['kwargs']), 'upsampler': '', 'upscale': 1})
    with pytest.raises(ValueError, match=r'checkpoint does not fit SwinIR: it has key upsample.0.weight '
                                         r'\(27x30x3x3\) that the model lacks'):
        checkpoint_filter_fn(dict(data['state_dict']), other)
    with pytest.raises(ValueError, match=r'has shape \(16, 16\), but the model computes \(64, 64\); create the '
                                         r'model with the window_size'):
        checkpoint_filter_fn(dict(data['state_dict']), SwinIR(**{**json.loads(data['kwargs']), 'window_size': 8}))


@pytest.mark.parametrize('size', [(19, 23), (16, 16), (5, 30), (1, 1)])
def test_any_input_size_pads_inside_forward(size):
    """Official forward: reflect-pad bottom/right to the window multiple, run, crop to (H·s, W·s)."""
    torch.manual_seed(0)
    model = scale_preserving_weights(SwinIR(upscale=3, upsampler='pixelshuffle', **SMALL)).eval()
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, 3, size[0] * 3, size[1] * 3)
        if min(size) > 4:
            padded = F.pad(x, (0, (-size[1]) % 4, 0, (-size[0]) % 4), mode='reflect')
            expected = model(padded)[..., :size[0] * 3, :size[1] * 3]
            torch.testing.assert_close(out, expected, rtol=0, atol=0)
        torch.testing.assert_close(out[1:], model(x[1:]), rtol=0, atol=1e-5)  # samples are independent


@pytest.mark.parametrize('upsampler,scale', [('pixelshuffle', 2), ('pixelshuffle', 3), ('pixelshuffle', 8),
                                             ('pixelshuffledirect', 4), ('nearest+conv', 2), ('nearest+conv', 4),
                                             ('', 1)])
def test_upsamplers_and_scales(upsampler, scale):
    model = SwinIR(upscale=scale, upsampler=upsampler, in_chans=1, **SMALL).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, 12, 8)).shape == (1, 1, 12 * scale, 8 * scale)


@pytest.mark.parametrize('upsampler,scale,message', [
    ('pixelshuffle', 5, r"upscale=5 is not supported by upsampler='pixelshuffle'; it supports 3 or a power of 2"),
    ('nearest+conv', 3, r"upscale=3 is not supported by upsampler='nearest\+conv'; it supports 2 or 4"),
    ('bilinear', 2, r"upsampler='bilinear' is not known"),
])
def test_unsupported_scales_and_upsamplers_are_one_line_errors(upsampler, scale, message):
    with pytest.raises(ValueError, match=message) as info:
        SwinIR(upscale=scale, upsampler=upsampler, **SMALL)
    assert '\n' not in str(info.value)


def test_wrong_inputs_are_one_line_errors():
    model = SwinIR(upscale=2, upsampler='pixelshuffledirect', **SMALL)
    with pytest.raises(ValueError, match=r'expected 3 input channels, got 1 .*create the model with in_chans=1'):
        model(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match='resi_connection=.2conv. is not known'):
        SwinIR(resi_connection='2conv', **SMALL)


def test_img_range_and_mean():
    """Forward normalises with (x − mean)·img_range and undoes it: a zero body leaves the input (denoising head)."""
    model = SwinIR(upscale=1, upsampler='', img_range=255., **SMALL).eval()
    torch.nn.init.zeros_(model.conv_last.weight)
    torch.nn.init.zeros_(model.conv_last.bias)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), x, rtol=0, atol=1e-6)
    assert torch.equal(model.mean.flatten(), torch.tensor([0.4488, 0.4371, 0.4040]))
    grey = SwinIR(in_chans=1, **SMALL)  # the official defaults: upsampler '' keeps the size whatever upscale says
    assert torch.equal(grey.mean.flatten(), torch.zeros(1)) and grey.upscale == 1
    assert grey(torch.rand(1, 1, 8, 8)).shape == (1, 1, 8, 8)


@pytest.mark.parametrize('kind', ['dwa', 'mudd'])
def test_connected_variants_start_as_the_plain_model(kind):
    torch.manual_seed(0)
    plain = scale_preserving_weights(timm.create_model('swinir_light_x2', **SMALL)).eval()
    model = timm.create_model(f'swinir_light_x2_{kind}', **SMALL).eval()
    assert type(model).__name__ == 'ConnectedSwinIR' and model.connection_kind == kind
    model.load_state_dict(plain.state_dict(), strict=True)  # the plain weights, connection started at identity
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        assert (model(x) - plain(x)).abs().max() <= 1e-6
        perturb_connections(model)
        assert (model(x) - plain(x)).abs().max() > 1e-4
    model.train()
    model(x).square().mean().backward()
    for name, param in densezoo.connection_parameters(model).items():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_training_and_inference_paths_agree():
    """Training runs attention through its own backward; outputs equal the inference path's."""
    torch.manual_seed(0)
    model = scale_preserving_weights(SwinIR(upscale=2, upsampler='pixelshuffle', drop_path_rate=0., **SMALL))
    x = torch.rand(2, 3, 8, 12)
    with torch.no_grad():
        expected = model.eval()(x)
    torch.testing.assert_close(model.train()(x), expected, rtol=0, atol=1e-5)
