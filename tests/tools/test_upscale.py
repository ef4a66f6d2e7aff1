"""tools/upscale.py and densezoo.upscale: images keep their channels and bit depth, the output is the model's,
tiles come from a memory budget, and bad input is one line before any compute."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import densezoo
from densezoo.datasets.image_io import read_pixels, write_pixels
from densezoo.hub.export import export_official
from densezoo.profile.memory import TensorMemoryTracker
from densezoo.tasks.sr_inference import self_ensemble, tiled_forward
from densezoo.tasks.upscale import UpscaleError, pick_tile
from tests.helpers import load_tool, one_line
from tests.models.reduced import reduced_model

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _tool():
    return load_tool('upscale')


@pytest.fixture(scope='module')
def model():
    return reduced_model('swinir_light_x2').eval()


@pytest.fixture(scope='module')
def weights(model, tmp_path_factory) -> Path:
    return export_official(model, tmp_path_factory.mktemp('weights') / 'swinir_light_x2.pth')


def _smooth(height: int, width: int, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.random((height // 4 + 2, width // 4 + 2, channels))
    big = np.kron(small, np.ones((4, 4, 1)))[:height, :width]
    return big.astype(np.float32)


def _direct(model, values: np.ndarray) -> np.ndarray:
    """The model on (H, W, C) values in [0, 1], clamped."""
    with torch.no_grad():
        out = model(torch.from_numpy(values.transpose(2, 0, 1).copy())[None])
    return out[0].clamp(0, 1).numpy().transpose(1, 2, 0)


def test_colour_image_is_the_models_output(model, weights, tmp_path, capsys):
    pixels = np.round(_smooth(21, 30, 3) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / 'photo.png')
    assert _tool().main([str(tmp_path / 'photo.png'), '--out', str(tmp_path / 'out'), '--checkpoint',
                         str(weights)]) == 0
    captured = capsys.readouterr()
    assert captured.out == f'1 image written to {tmp_path / "out"}\n'
    assert captured.err.startswith('model: SwinIR x2, 3 channels, width 16')
    out, bits = read_pixels(tmp_path / 'out' / 'photo.png')
    expected = np.round(_direct(model, pixels.astype(np.float32) / 255) * 255).astype(np.uint8)
    assert bits == 8 and out.shape == (42, 60, 3)
    assert np.array_equal(out, expected)


def test_grey_alpha_and_16_bit_are_kept(model, weights, tmp_path):
    values = _smooth(16, 19, 4, seed=1)
    files = {'grey.png': np.round(values[..., :1] * 255).astype(np.uint8),
             'grey_alpha.png': np.round(values[..., :2] * 255).astype(np.uint8),
             'rgba.png': np.round(values * 255).astype(np.uint8),
             'deep.png': np.round(values[..., :3] * 65535).astype(np.uint16),
             'deep_grey.png': np.round(values[..., :1] * 65535).astype(np.uint16)}
    for name, pixels in files.items():
        write_pixels(tmp_path / 'in' / name, pixels)
    done = densezoo.upscale(tmp_path / 'in', tmp_path / 'out', checkpoint=weights)
    assert sorted(item.output.name for item in done) == sorted(files)
    for name, pixels in files.items():
        out, bits = read_pixels(tmp_path / 'out' / name)
        assert out.dtype == pixels.dtype and out.shape == (32, 38, pixels.shape[2]), name
        top = float(np.iinfo(pixels.dtype).max)
        source = pixels.astype(np.float32) / top

        def grey(plane):  # a grey plane through the colour model, back to grey by luma
            return _direct(model, np.repeat(plane, 3, axis=-1)) @ LUMA[:, None]
        if pixels.shape[2] >= 3:
            colour = _direct(model, source[..., :3])
        else:
            colour = grey(source[..., :1])
        expected = colour if pixels.shape[2] in (1, 3) else np.concatenate([colour, grey(source[..., -1:])], -1)
        assert np.abs(out.astype(np.int64) - np.round(expected * top)).max() <= 1, name


def test_grey_model_takes_colour_channel_by_channel(tmp_path):
    grey_model = reduced_model('swinir_denoise_gray').eval()
    values = _smooth(12, 12, 3, seed=2)
    out = densezoo.upscale(values, model=grey_model)
    expected = np.concatenate([_direct(grey_model, values[..., i:i + 1]) for i in range(3)], -1)
    assert out.dtype == np.float32 and out.shape == (12, 12, 3)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


def test_tile_from_memory_budget_fits_it(model):
    budget = 6 * 2 ** 20
    tile = pick_tile(model, 1000, 1000, budget, overlap=8)
    assert tile is not None and tile % model.pad_multiple == 0 and tile > 8
    with torch.inference_mode(), TensorMemoryTracker() as tracker:
        model(torch.rand(1, 3, tile, tile))
    assert tracker.peak <= budget
    with torch.inference_mode(), TensorMemoryTracker() as tracker:
        model(torch.rand(1, 3, 2 * tile, 2 * tile))
    assert tracker.peak > budget  # near the largest that fits, not merely one that does
    assert pick_tile(model, 20, 20, budget, overlap=8) is None  # a small image runs whole
    with pytest.raises(UpscaleError) as error:
        pick_tile(model, 1000, 1000, 2 ** 16, overlap=32)
    assert 'no larger than the tile overlap 32' in one_line(error)


def test_budget_tiles_equal_explicit_tiles_and_conv_models_tile_exactly(tmp_path):
    rdn = reduced_model('rdn_x2').eval()
    values = _smooth(70, 50, 3, seed=3)
    whole = densezoo.upscale(values, model=rdn, memory=64)
    tiled = densezoo.upscale(values, model=rdn, tile=32, tile_overlap=24)
    # RDN is convolutional with a receptive field (9 LR pixels) inside the 12-pixel margin: tiles give the
    # whole-image output
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-5)  # float rounding (the network works on 0..255)
    with torch.inference_mode(), TensorMemoryTracker() as tracker:
        rdn(torch.rand(1, 3, 70, 50))
    budget = tracker.peak // 2  # half what the whole image needs
    budget_tile = pick_tile(rdn, 70, 50, budget, overlap=16)
    assert budget_tile is not None and 16 < budget_tile < 70
    by_budget = densezoo.upscale(values, model=rdn, memory=budget / 2 ** 30, tile_overlap=16)
    with torch.no_grad():
        explicit = tiled_forward(rdn, torch.from_numpy(values.transpose(2, 0, 1).copy())[None], budget_tile, 16)
    np.testing.assert_allclose(by_budget, explicit[0].clamp(0, 1).numpy().transpose(1, 2, 0), rtol=0, atol=0)


def test_self_ensemble_and_dtype(model, weights, tmp_path):
    values = _smooth(16, 16, 3, seed=4)
    out = densezoo.upscale(values, checkpoint=weights, self_ensemble=True)
    with torch.no_grad():
        expected = self_ensemble(model, torch.from_numpy(values.transpose(2, 0, 1).copy())[None])
    np.testing.assert_allclose(out, expected[0].clamp(0, 1).numpy().transpose(1, 2, 0), rtol=0, atol=1e-6)
    bf16 = densezoo.upscale(values, model=model, dtype='bfloat16')
    assert np.abs(bf16 - _direct(model, values)).max() < 0.05
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is left as it was


def test_run_folder_and_progress(sr_run, tmp_path, capsys):
    Image.fromarray(np.round(_smooth(10, 12, 3) * 255).astype(np.uint8)).save(tmp_path / 'a.png')
    assert _tool().main([str(tmp_path / 'a.png'), '--out', str(tmp_path / 'out'), '--checkpoint', str(sr_run),
                         '--progress', '--suffix', '_x2', '--ext', 'webp']) == 0
    err = capsys.readouterr().err
    assert 'swinir_light_x2' in err and 'densezoo layout' in err
    assert 'upscale: 100%' in err  # the progress bar over the images
    assert Image.open(tmp_path / 'out' / 'a_x2.webp').size == (24, 20)


def test_errors_are_one_line_before_any_compute(weights, tmp_path, capsys):
    tool = _tool()
    out = str(tmp_path / 'out')
    assert tool.main([str(tmp_path / 'missing.png'), '--out', out, '--checkpoint', str(weights)]) == 2
    assert capsys.readouterr().err == f"error: input '{tmp_path / 'missing.png'}' does not exist\n"
    (tmp_path / 'empty').mkdir()
    assert tool.main([str(tmp_path / 'empty'), '--out', out, '--checkpoint', str(weights)]) == 2
    assert 'holds no images' in capsys.readouterr().err
    for folder in ('x', 'y'):
        write_pixels(tmp_path / folder / 'same.png', np.zeros((8, 8, 3), np.uint8))
    assert tool.main([str(tmp_path / 'x' / 'same.png'), str(tmp_path / 'y' / 'same.png'), '--out', out,
                      '--checkpoint', str(weights)]) == 2
    assert 'would both be written to' in capsys.readouterr().err
    not_sr = tmp_path / 'resnet.pth'
    torch.save({'conv1.weight': torch.zeros(4, 3, 3, 3)}, not_sr)
    assert tool.main([str(tmp_path / 'x'), '--out', out, '--checkpoint', str(not_sr)]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'is not an SR checkpoint densezoo recognises' in err
    write_pixels(tmp_path / 'deep' / 'd.png', np.zeros((8, 8, 3), np.uint16))
    assert tool.main([str(tmp_path / 'deep'), '--out', out, '--checkpoint', str(weights), '--ext', 'jpg']) == 2
    assert capsys.readouterr().err == 'error: .jpg holds 8 bits per channel, but d.jpg has 16; write .png or .tiff\n'
    (tmp_path / 'bad').mkdir()
    (tmp_path / 'bad' / 'broken.png').write_bytes(b'\x89PNG not an image')
    assert tool.main([str(tmp_path / 'bad'), '--out', out, '--checkpoint', str(weights)]) == 2
    assert "broken.png' cannot be read" in capsys.readouterr().err
    assert not Path(out).exists() or not any(Path(out).rglob('*.png'))
    with pytest.raises(SystemExit):
        tool.main([str(tmp_path / 'x'), '--out', out])
    assert 'give --checkpoint FILE' in capsys.readouterr().err
