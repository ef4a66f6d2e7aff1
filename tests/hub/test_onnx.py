"""ONNX export of every family (densezoo.hub.program.export_onnx): exported once with dynamic height and width and
run in ONNX Runtime (CPUExecutionProvider) at two sizes, the file gives the eager model's output within 1e-4; bad
input gets a one-line error. Runs where the ``onnx`` extra (onnx, onnxscript, onnxruntime) is installed."""
import sys

import pytest
import torch

onnx = pytest.importorskip('onnx')
pytest.importorskip('onnxscript')
ort = pytest.importorskip('onnxruntime')

from densezoo.hub.program import export_onnx  # noqa: E402
from tests.helpers import one_line  # noqa: E402
from tests.hub.export_cases import MODELS, SR_MODELS, build, eager, exported, image, sizes  # noqa: E402

TOLERANCE = 1e-4


def _runtime(path):
    return ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])


@pytest.fixture(scope='module', params=MODELS)
def onnx_model(request, tmp_path_factory):
    """(name, model, ONNX Runtime inference of its exported file) per model, exported once for this file."""
    name = request.param
    model, program = exported(name)
    path = export_onnx(program, tmp_path_factory.mktemp('onnx') / f'{name}.onnx')
    return name, model, _runtime(path)


def test_onnx_matches_the_eager_model(onnx_model):
    name, model, runtime = onnx_model
    (graph_input,), (graph_output,) = runtime.get_inputs(), runtime.get_outputs()
    assert (graph_input.name, graph_output.name) == ('input', 'output')
    assert all(isinstance(dim, str) for dim in graph_input.shape[2:]), graph_input.shape  # dynamic H and W
    for seed, size in enumerate(sizes(name, model)):
        x = image(model, size, seed)
        expected = eager(model, x)
        out = torch.from_numpy(runtime.run(None, {'input': x.numpy()})[0])
        assert out.shape == expected.shape, (size, out.shape, expected.shape)
        if name in SR_MODELS:
            assert out.shape[-2:] == (size[0] * model.upscale, size[1] * model.upscale)
        difference = (out - expected).abs().max().item()
        print(f'onnx {name} {size[0]}x{size[1]}: max difference {difference:.1e}')
        assert difference <= TOLERANCE, (name, size, difference)


def test_a_model_exports_directly_with_an_opset(tmp_path):
    model = build('rdn_x2')
    path = export_onnx(model, tmp_path / 'sub' / 'rdn.onnx', opset=18)
    assert onnx.load(str(path)).opset_import[0].version == 18
    x = image(model, (7, 10))
    out = torch.from_numpy(_runtime(path).run(None, {'input': x.numpy()})[0])
    assert (out - eager(model, x)).abs().max() <= TOLERANCE


def test_a_static_file_has_the_example_shape(tmp_path):
    model = build('rcan_x2')
    x = image(model, (12, 16)).repeat(2, 1, 1, 1)
    runtime = _runtime(export_onnx(model, tmp_path / 'rcan.onnx', example=x, dynamic=False))
    assert runtime.get_inputs()[0].shape == [2, 3, 12, 16]
    out = torch.from_numpy(runtime.run(None, {'input': x.numpy()})[0])
    assert (out - eager(model, x)).abs().max() <= TOLERANCE


def test_bad_input_gets_one_line(tmp_path, monkeypatch):
    model = build('rcan_x2')
    with pytest.raises(ValueError) as error:
        export_onnx(model, tmp_path / 'rcan.pt2')
    assert one_line(error) == (f"ONNX files end in .onnx; got '{tmp_path / 'rcan.pt2'}'; use export_program for "
                               f".pt2 files")
    with pytest.raises(ValueError) as error:
        export_onnx(model, tmp_path / 'rcan.tflite')
    assert one_line(error) == f"ONNX files end in .onnx; got '{tmp_path / 'rcan.tflite'}'"
    monkeypatch.setitem(sys.modules, 'onnxscript', None)  # as if it were not installed
    with pytest.raises(RuntimeError) as error:
        export_onnx(model, tmp_path / 'rcan.onnx')
    assert one_line(error) == ('ONNX export needs the onnxscript package; pip install onnx onnxscript (or '
                               'densezoo[onnx])')
