"""``densezoo.load_sr`` / ``detect_sr``: an SR checkpoint is recognised from its tensors alone.

How we know: the fixtures (tests/fixtures, written by the official SwinIR / DRCT / HAT / BasicSR RCAN code) hold the
official state dicts and outputs; detection must give back the official constructor arguments and, built and loaded
strictly, the official output. Every registered SR configuration is detected as itself with no override.
"""
import json

import pytest
import timm
import torch

import densezoo
from densezoo.hub.detect import detect_sr
from densezoo.hub.export import export_official, official_state_dict
from densezoo.hub.runs import LoadError
from densezoo.models.rcan import original_state_dict
from densezoo.registry import list_models
from tests.helpers import load_fixture, one_line
from tests.models.reduced import reduced_model

FIXTURES = ('swinir_classical_x2', 'swinir_lightweight_x3', 'swinir_realsr_x4', 'swinir_denoise_1conv',
            'swinir_denoise_3conv', 'drct_x2', 'hat_x4', 'rcan_x4')

#: constructor arguments no tensor holds (the releases fix them: docs/sr-models.md)
UNREADABLE = {'conv_scale', 'compress_ratio', 'squeeze_factor', 'overlap_ratio'}


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)):
        return list(a) == list(b)
    return a == b


@pytest.mark.parametrize('fixture', FIXTURES)
def test_official_checkpoints_are_recognised_and_give_the_official_output(fixture):
    data = load_fixture(f'{fixture}.pt')
    official = json.loads(data['kwargs'])
    detected = detect_sr(data['state_dict'])
    assert detected.family == data['class']
    for key, value in official.items():
        if key == 'depths' and detected.family == 'DRCT':
            assert len(detected.kwargs['depths']) == len(value)  # DRCT's depths only set drop-path rates
        elif key in detected.kwargs:
            assert _same(detected.kwargs[key], value), key
        elif detected.family != 'DRCT':  # DRCT's constructor also takes HAT's unused arguments
            assert key in UNREADABLE | {'num_out_ch', 'img_size', 'img_range'}, key
    model = densezoo.load_sr(data['state_dict'])
    assert type(model).__name__ == data['class']
    with torch.no_grad():
        out = model(data['input'])
    torch.testing.assert_close(out, data['output'], rtol=0, atol=1e-5)


@pytest.mark.parametrize('name', [n for n in list_models(task='sr') if not n.startswith('rcan_')])
def test_every_registered_configuration_is_detected_as_itself(name):
    """Full-size models on the meta device, as the official code stores them (derived buffers included)."""
    with torch.device('meta'):
        model = timm.create_model(name, device='meta')
    connected = name.endswith(('_dwa', '_mudd'))
    state = model.state_dict() if connected else official_state_dict(model)
    detected = detect_sr(state)
    assert (detected.name, detected.overrides) == (name, {})
    assert detected.layout == ('densezoo' if connected else 'EDSR-PyTorch' if name.startswith('rdn_') else 'official')


@pytest.mark.parametrize('scale', [2, 3, 4])
@pytest.mark.parametrize('layout', ['BasicSR', 'EDSR-PyTorch'])
def test_rcan_is_recognised_in_both_layouts(scale, layout):
    model = timm.create_model(f'rcan_x{scale}').eval()
    state = original_state_dict(model) if layout == 'EDSR-PyTorch' else model.state_dict()
    detected = detect_sr(state)
    assert (detected.name, detected.overrides, detected.layout) == (f'rcan_x{scale}', {}, layout)


@pytest.mark.parametrize('name', ['swinir_classical_x3', 'swinir_light_x4', 'swinir_real_l_x4', 'swinir_jpeg',
                                  'swinir_denoise_gray', 'drct_l_x3', 'hat_s_x2', 'hat_l_x4', 'rcan_x2', 'rdn_x3',
                                  'swinir_classical_x2_dwa', 'hat_x2_mudd', 'drct_x4_dwa'])
def test_loaded_model_equals_the_model_it_came_from(tmp_path, name):
    """Reduced, perturbed weights through a file: the recognised model gives the same output. (The JPEG models
    keep their release window of 7, which is how their 0..255 working range is recognised.)"""
    model = reduced_model(name, **(dict(window_size=7, img_size=14) if name == 'swinir_jpeg' else {})).eval()
    path = tmp_path / 'weights.pth'
    if name.endswith(('_dwa', '_mudd')):
        torch.save({'params': model.state_dict()}, path)
    else:
        export_official(model, path)
    loaded = densezoo.load_sr(path)
    assert type(loaded) is type(model)
    assert loaded.detected.connection == (name.rsplit('_', 1)[1] if name.endswith(('_dwa', '_mudd')) else '')
    x = torch.rand(1, model.in_chans, 13, 10)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_report_names_family_scale_widths_and_window():
    data = load_fixture('hat_x4.pt')
    detected = detect_sr({'params_ema': data['state_dict']})
    assert str(detected) == ('HAT x4, 3 channels, width 24, depth 2x2, window 4, upsampler pixelshuffle (official '
                             'layout); built as hat_x4 with embed_dim=24, depths=(2, 2), num_heads=(3, 3), '
                             'window_size=4, squeeze_factor=6')
    assert detected.summary() == dict(family='HAT', name='hat_x4', scale=4, channels=3, width=24, depths=[2, 2],
                                      heads=[3, 3], window=4, upsampler='pixelshuffle', layout='official')


def test_unrecognised_file_says_what_was_looked_for(tmp_path):
    path = tmp_path / 'resnet.pth'
    torch.save({'conv1.weight': torch.zeros(8, 3, 7, 7), 'fc.weight': torch.zeros(10, 8)}, path)
    with pytest.raises(LoadError) as error:
        densezoo.load_sr(path)
    message = one_line(error)
    assert message.startswith(f"'{path}' is not an SR checkpoint densezoo recognises: looked for SwinIR")
    for family in ('DRCT', 'HAT', 'RCAN', 'RDN'):
        assert family in message
    assert message.endswith('its first keys are conv1.weight, fc.weight')


def test_damaged_and_missing_files_are_one_line(tmp_path):
    missing = tmp_path / 'nothing.pth'
    with pytest.raises(LoadError) as error:
        densezoo.load_sr(missing)
    assert one_line(error) == f"checkpoint '{missing}' does not exist"
    damaged = tmp_path / 'damaged.pth'
    damaged.write_bytes(b'PK\x03\x04 not really a zip')
    with pytest.raises(LoadError) as error:
        densezoo.load_sr(damaged)
    assert str(damaged) in one_line(error)


def test_truncated_checkpoint_names_the_missing_tensor():
    state = official_state_dict(reduced_model('swinir_classical_x2'))
    del state['layers.1.residual_group.blocks.0.mlp.fc2.weight']
    with pytest.raises(LoadError) as error:
        densezoo.load_sr(state)
    assert 'layers.1.residual_group.blocks.0.mlp.fc2.weight' in one_line(error)


def test_densezoo_run_folder_loads_with_its_arguments(tmp_path, sr_run):
    model = densezoo.load_sr(sr_run)
    assert model.detected.layout == 'densezoo'
    assert model.detected.name == 'swinir_light_x2'
    reference = timm.create_model('swinir_light_x2', **_run_kwargs(sr_run))
    from densezoo.checkpoint_io import load_weights_file
    reference.load_state_dict(load_weights_file(sr_run / 'checkpoints' / 'last' / 'ema.safetensors'))
    x = torch.rand(1, 3, 9, 11)
    with torch.no_grad():
        assert torch.equal(model(x), reference.eval()(x))


def _run_kwargs(run):
    import yaml
    return yaml.safe_load((run / 'config.yaml').read_text())['model']['kwargs']
