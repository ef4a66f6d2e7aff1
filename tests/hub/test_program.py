"""``torch.export`` programs of every family (densezoo.hub.program): exported once with dynamic height and width,
saved, loaded with ``torch.export.load`` and run at two sizes, they give the eager model's output within 1e-5;
bad input gets a one-line error that says what to do."""
import pytest
import timm
import torch
from torch import nn

from densezoo.hub import program as hub_program
from densezoo.hub.program import InputSizes, export, export_program, input_sizes
from tests.helpers import one_line
from tests.hub.export_cases import MODELS, SR_MODELS, build, eager, exported, image, sizes

TOLERANCE = 1e-5


@pytest.fixture(scope='module', params=MODELS)
def loaded(request, tmp_path_factory):
    """(name, model, the saved and loaded program) per model, once per module."""
    name = request.param
    model, program = exported(name)
    path = export_program(program, tmp_path_factory.mktemp('programs') / f'{name}.pt2')
    return name, model, torch.export.load(path)


def test_loaded_program_matches_the_eager_model(loaded):
    name, model, program = loaded
    for seed, size in enumerate(sizes(name, model)):
        x = image(model, size, seed)
        expected = eager(model, x)
        with torch.no_grad():
            out = program.module()(x)
        assert out.shape == expected.shape, (size, out.shape, expected.shape)
        if name in SR_MODELS:
            assert out.shape[-2:] == (size[0] * model.upscale, size[1] * model.upscale)
        difference = (out - expected).abs().max().item()
        print(f'program {name} {size[0]}x{size[1]}: max difference {difference:.1e}')
        assert difference <= TOLERANCE, (name, size, difference)


def test_input_sizes_per_family():
    assert input_sizes(build('swinir_classical_x2')) == InputSizes(1, 5, (11, 13))  # reduced window 4
    assert input_sizes(build('hat_x2')).minimum == 5
    assert input_sizes(build('rcan_x2')) == InputSizes(1, 2, (11, 13))
    # reduced Swin: stages of windows 7, 7, 4, 2 at strides 4, 8, 16, 32: from 96, the third stage has 2 windows
    assert input_sizes(build('swin_tiny_patch4_window7_224_dwa')) == InputSizes(32, 96, (128, 160))
    assert input_sizes(build('swinv2_tiny_window8_256')) == InputSizes(32, 96, (128, 160))
    assert input_sizes(build('vit_tiny_patch16_224')) == InputSizes(8, 16, (24, 32))  # reduced patch 8
    assert input_sizes(build('lookupvit_tiny_patch16_224')) == InputSizes(8, 24, (32, 40))  # 3x3 compressed grid
    for name in ('pvt_tiny', 'pvt_v2_b0', 'rdnet_tiny'):
        assert input_sizes(build(name)) == InputSizes(32, 64, (96, 128)), name
    sizes_ = input_sizes(build('pvt_tiny'))
    assert sizes_.accepts(64, 96) and not sizes_.accepts(64, 80) and not sizes_.accepts(32, 64)
    assert str(sizes_) == 'heights and widths that are multiples of 32 from 64'
    full = timm.create_model('swin_tiny_patch4_window7_224', dynamic_img_size=True)  # windows of 7 at stride 32
    assert input_sizes(full) == InputSizes(32, 256, (288, 320))
    assert str(input_sizes(build('rdn_x2'))) == 'any height and width from 2'


def test_static_program_takes_the_example_size_and_batch(tmp_path):
    model = build('rcan_x2')
    x = image(model, (12, 16)).repeat(2, 1, 1, 1)
    program = torch.export.load(export_program(model, tmp_path / 'rcan.pt2', example=x, dynamic=False))
    with torch.no_grad():
        assert (program.module()(x) - eager(model, x)).abs().max() <= TOLERANCE
    with pytest.raises((AssertionError, RuntimeError), match='16'):  # torch.export's check of the input size
        program.module()(image(model, (12, 20)).repeat(2, 1, 1, 1))


def test_the_example_gives_batch_and_dtype_and_the_model_stays_in_training(tmp_path):
    model = build('rdn_x2').train()
    x = image(model, (9, 7)).repeat(3, 1, 1, 1)
    program = export(model, example=x)
    assert model.training
    with torch.no_grad():
        out = program.module()(x)
        assert (out - eager(model.eval(), x)).abs().max() <= TOLERANCE


class _DataDependent(nn.Module):
    def forward(self, x):
        return x * 2 if x.mean() > 0.5 else x


def test_bad_input_gets_one_line(tmp_path, monkeypatch):
    model = build('rcan_x2')
    with pytest.raises(ValueError) as error:
        export_program(model, tmp_path / 'rcan.onnx')
    assert one_line(error) == (f"torch.export program files end in .pt2; got '{tmp_path / 'rcan.onnx'}'; use "
                               f"export_onnx for .onnx files")
    with pytest.raises(ValueError) as error:
        export(model, example=torch.rand(1, 1, 12, 16))
    assert one_line(error) == ('example has 1 channels and rcan_x2 takes 3; give an example of shape (B, 3, H, W)')
    with pytest.raises(ValueError, match='^example must be an image batch'):
        export(model, example=torch.rand(3, 12, 16))
    with pytest.raises(ValueError) as error:
        export(build('swinir_light_x2'), example=torch.rand(1, 3, 4, 16))
    assert one_line(error) == ('example size 4x16 is not one swinir_light_x2 accepts when exported (any height and '
                               'width from 5)')
    fixed = build('swin_tiny_patch4_window7_224')
    fixed.patch_embed.strict_img_size = True
    fixed.dynamic_img_size = False
    with pytest.raises(ValueError) as error:
        export(fixed)
    assert one_line(error) == ('swin_tiny_patch4_window7_224 takes 64x64 inputs only; create it with '
                               'dynamic_img_size=True (timm.create_model(..., dynamic_img_size=True)) to export it '
                               'for other sizes, or export it with dynamic=False')
    with pytest.raises(ValueError) as error:
        export(nn.Conv2d(3, 3, 3))
    assert one_line(error) == 'the input sizes of Conv2d are not known to densezoo; export it with dynamic=False'
    with pytest.raises(ValueError, match='^expected a torch.nn.Module to export, got str$'):
        export('rcan_x2')
    with pytest.raises(RuntimeError) as error:
        export(_DataDependent(), example=torch.rand(1, 3, 8, 8), dynamic=False)
    assert one_line(error).startswith('_DataDependent could not be exported with torch.export (')
    monkeypatch.setattr(torch, '__version__', '2.6.0+cpu')
    with pytest.raises(RuntimeError) as error:
        export(model)
    assert one_line(error) == ('exporting with dynamic height and width needs torch >= '
                               f'{".".join(map(str, hub_program.DYNAMIC_TORCH))} (this is torch 2.6.0+cpu); upgrade '
                               'torch or export with dynamic=False')
