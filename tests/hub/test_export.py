"""Export to the official SR layouts and to timm model folders; ``tools/export.py``.

How we know the official layout is right: the fixtures hold the state dicts the official SwinIR / DRCT / HAT / BasicSR
RCAN classes produce, buffers included; the export of the same weights must equal them tensor for tensor (names,
dtypes, values), so the official classes load it strictly. spandrel (the loader of chaiNNer and ComfyUI) must
recognise every export and give the same output (run where spandrel is installed).
"""
import json

import pytest
import timm
import torch

import densezoo
from densezoo.hub.export import export_official, export_timm_dir, official_state_dict, open_model
from densezoo.hub.runs import LoadError
from densezoo.models._sr import checkpoint_filter_fn
from densezoo.models.rcan import RCAN, original_state_dict
from tests.helpers import load_fixture, load_tool, one_line
from tests.models.reduced import reduced_args, reduced_model

WINDOW_FIXTURES = ('swinir_classical_x2', 'swinir_lightweight_x3', 'swinir_realsr_x4', 'swinir_denoise_1conv',
                   'swinir_denoise_3conv', 'drct_x2', 'hat_x4')


def _tool():
    return load_tool('export')


@pytest.mark.parametrize('fixture', WINDOW_FIXTURES)
def test_official_export_equals_the_official_state_dict(fixture, tmp_path):
    data = load_fixture(f'{fixture}.pt')
    model = densezoo.load_sr(data['state_dict'])
    path = export_official(model, tmp_path / 'out.pth')
    written = torch.load(path, weights_only=True)
    assert list(written) == [model.checkpoint_key]
    state = written[model.checkpoint_key]
    assert sorted(state) == sorted(data['state_dict'])
    for key, value in data['state_dict'].items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), key


def test_rcan_exports_both_layouts():
    data = load_fixture('rcan_x4.pt')
    model = densezoo.load_sr(data['state_dict'])
    basicsr = official_state_dict(model, 'BasicSR')
    assert sorted(basicsr) == sorted(data['state_dict'])
    assert all(torch.equal(basicsr[k], v) for k, v in data['state_dict'].items())
    original = official_state_dict(model)  # the authors' layout by default
    assert 'head.0.weight' in original and 'tail.1.weight' in original
    mean = torch.tensor([0.4488, 0.4371, 0.4040]) * 255
    torch.testing.assert_close(original['sub_mean.bias'], -mean)
    torch.testing.assert_close(original['add_mean.bias'], mean)
    assert torch.equal(original['sub_mean.weight'], torch.eye(3).view(3, 3, 1, 1))
    # and back: the original layout loads into the model and gives the fixture's output
    again = RCAN(**json.loads(data['kwargs']))
    again.load_state_dict(densezoo.models.rcan.checkpoint_filter_fn(original, again))
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(data['input']), data['output'], rtol=0, atol=1e-5)
    with pytest.raises(ValueError) as error:
        official_state_dict(model, 'KAIR')
    assert one_line(error) == "layout='KAIR' is not one of RCAN's: EDSR-PyTorch, BasicSR"


def test_connected_and_non_sr_models_have_no_official_layout():
    with pytest.raises(ValueError) as error:
        official_state_dict(reduced_model('swinir_classical_x2_dwa'))
    assert one_line(error).startswith('ConnectedSwinIR has a dwa connection between its groups, which the official '
                                      'model lacks')
    with pytest.raises(ValueError) as error:
        official_state_dict(reduced_model('vit_small_patch16_224_dwa'))
    assert 'has no official layout' in one_line(error)


@pytest.mark.parametrize('name', ['swinir_light_x2', 'hat_s_x2_mudd', 'rcan_x3', 'rdn_x2',
                                  'swin_tiny_patch4_window7_224_dwa', 'vit_small_patch16_224_mudd',
                                  'pvt_v2_b0_dwa'])
def test_timm_dir_rebuilds_the_model(name, tmp_path):
    family, args, size = reduced_args(name)
    if not name.startswith(('swinir', 'hat', 'rcan', 'rdn')):
        args['num_classes'] = 7
    model = reduced_model(name, **args).eval()
    folder = export_timm_dir(model, tmp_path / name, model_args=args)
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == name
    assert (folder / 'model.safetensors').is_file()
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    assert type(loaded) is type(model)
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_run_folders_convert_to_timm_dir_and_official(sr_run, tmp_path, capsys):
    assert _tool().main([str(sr_run), '--format', 'timm-dir', '--out', str(tmp_path / 'dir')]) == 0
    loaded = timm.create_model(f'local-dir:{tmp_path / "dir"}', pretrained=True).eval()
    reference = densezoo.load_sr(sr_run)
    x = torch.rand(1, 3, 10, 9)
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x))
    assert _tool().main([str(sr_run), '--format', 'official', '--out', str(tmp_path / 'official.pth')]) == 0
    assert 'swinir_light_x2' in capsys.readouterr().out
    again = densezoo.load_sr(tmp_path / 'official.pth')
    assert again.detected.layout == 'official'
    with torch.no_grad():
        assert torch.equal(again(x), reference(x))


def test_a_classification_run_converts_to_timm_dir(tmp_path):
    from densezoo.engine import config_from_dict, train
    from tests.engine.conftest import make_dataset, tiny_config
    data = make_dataset(tmp_path / 'data', per_class=(3, 1))
    run = train(config_from_dict(tiny_config(data, tmp_path / 'runs', epochs=1)), run_dir=tmp_path / 'run',
                progress=False).run_dir
    opened = open_model(run)
    folder = export_timm_dir(opened.model, tmp_path / 'dir', opened.model_args)
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    assert loaded.num_classes == 3
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), opened.model(x))


def test_tool_errors_are_one_line(tmp_path, capsys):
    tool = _tool()
    assert tool.main(['swinir_light_x2', '--format', 'official', '--out', str(tmp_path / 'x.pth')]) == 2
    assert capsys.readouterr().err == ('error: swinir_light_x2: give the weights with --checkpoint FILE (or a run '
                                       'folder), or --pretrained for its registered weights\n')
    assert tool.main(['swinir_lite_x2', '--format', 'official', '--out', str(tmp_path / 'x.pth')]) == 2
    assert "unknown model 'swinir_lite_x2'; did you mean swinir_light_x2" in capsys.readouterr().err
    assert tool.main([str(tmp_path / 'missing.pth'), '--format', 'onnx', '--out', str(tmp_path / 'x.onnx')]) == 2
    assert capsys.readouterr().err == f"error: '{tmp_path / 'missing.pth'}' does not exist\n"
    weights = tmp_path / 'dwa.pth'
    torch.save(reduced_model('swinir_light_x2_dwa').state_dict(), weights)
    assert tool.main([str(weights), '--format', 'official', '--out', str(tmp_path / 'x.pth')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'only plain models have an official layout' in err
    assert not (tmp_path / 'x.pth').exists()


def test_name_with_a_weights_file(tmp_path):
    model = reduced_model('swinir_classical_x2').eval()
    weights = export_official(model, tmp_path / 'w.pth')
    args = reduced_args('swinir_classical_x2')[1]
    opened = open_model('swinir_classical_x2', weights, model_args=args)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(opened.model(x), model(x))
    assert opened.model_args == args


@pytest.mark.parametrize('name', ['swinir_classical_x2', 'swinir_light_x3', 'swinir_real_x4', 'swinir_denoise_gray',
                                  'swinir_jpeg_color', 'drct_x2', 'hat_s_x4', 'rcan_x2'])
def test_spandrel_recognises_the_official_export(name, tmp_path):
    spandrel = pytest.importorskip('spandrel')
    extra = dict(window_size=7, img_size=14) if 'jpeg' in name else {}
    if name.startswith('hat'):
        extra = dict(num_heads=(2, 2))
    model = reduced_model(name, **extra).eval()
    path = export_official(model, tmp_path / f'{name}.pth')
    descriptor = spandrel.ModelLoader().load_from_file(str(path))
    assert descriptor.scale == model.upscale
    x = torch.rand(1, model.in_chans, 16, 16)
    with torch.no_grad():
        # a copy: spandrel's RCAN scales its input in place
        torch.testing.assert_close(descriptor.model.eval()(x.clone()), model(x), rtol=0, atol=1e-5)


def test_filter_drops_what_the_export_adds():
    model = reduced_model('drct_x3').eval()
    state = official_state_dict(model)
    assert len(state) > len(model.state_dict())
    assert checkpoint_filter_fn(state, model).keys() == model.state_dict().keys()
    assert original_state_dict(reduced_model('rcan_x2')).keys() >= {'sub_mean.weight', 'add_mean.bias'}


def test_open_model_refuses_a_checkpoint_it_cannot_read(tmp_path):
    path = tmp_path / 'w.pth'
    path.write_bytes(b'not a checkpoint')
    with pytest.raises(LoadError) as error:
        open_model(path)
    assert str(path) in one_line(error)


def test_tool_writes_onnx_and_programs_for_any_size(sr_run, tmp_path, capsys):
    """A run folder to ONNX (checked in ONNX Runtime at two sizes) and a registered backbone with a weights file
    to a torch.export program (built with ``dynamic_img_size=True`` by the tool)."""
    onnxruntime = pytest.importorskip('onnxruntime')
    pytest.importorskip('onnxscript')
    assert _tool().main([str(sr_run), '--format', 'onnx', '--out', str(tmp_path / 'sr.onnx')]) == 0
    runtime = onnxruntime.InferenceSession(str(tmp_path / 'sr.onnx'), providers=['CPUExecutionProvider'])
    reference = densezoo.load_sr(sr_run)
    for size in ((12, 16), (21, 10)):
        x = torch.rand(1, 3, *size)
        out = torch.from_numpy(runtime.run(None, {'input': x.numpy()})[0])
        with torch.no_grad():
            assert out.shape == (1, 3, 2 * size[0], 2 * size[1])
            assert (out - reference(x)).abs().max() <= 1e-4
    args = dict(reduced_args('vit_small_patch16_224_dwa')[1], num_classes=7)
    model = reduced_model('vit_small_patch16_224_dwa', **args).eval()
    torch.save(model.state_dict(), tmp_path / 'vit.pth')
    kwargs = [f'{key}={value}' for key, value in args.items()]
    assert _tool().main(['vit_small_patch16_224_dwa', '--checkpoint', str(tmp_path / 'vit.pth'), '--format',
                         'export', '--out', str(tmp_path / 'vit.pt2'), '--model-kwargs', *kwargs]) == 0
    program = torch.export.load(str(tmp_path / 'vit.pt2')).module()
    dynamic = timm.create_model('vit_small_patch16_224_dwa', dynamic_img_size=True, **args).eval()
    dynamic.load_state_dict(model.state_dict())  # the same weights, position embedding resized per input
    for size in ((32, 32), (48, 24)):
        x = torch.rand(1, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(program(x), dynamic(x), rtol=0, atol=1e-5)
