"""float16 inference of the window SR transformers: scaling the residual stream by a power of two is exact, and
``half_precision`` keeps a stream too large for float16 inside its range.

How we know it is exact: in float32 the scaled model's output equals the original's bit for bit; in float16 the
scaled copy of a model whose stream would overflow gives the float16 output of the same network with a stream
that fits (bit for bit but for float16 subnormals). Trained SwinIR / HAT weights grow the stream past 65504 (the black images of plain ``.half()``);
here a stream 2^14 times larger than the fixtures' is made with ``scale_stream_`` itself, which leaves the float32
function unchanged.
"""
import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import densezoo
from densezoo.metrics.sr import psnr
from densezoo.tasks.sr_inference import activation_peaks, half_precision
from tests.helpers import load_fixture, one_line
from tests.models.reduced import reduced_model

ROOT = Path(__file__).resolve().parents[2]
WINDOW_FIXTURES = ('swinir_classical_x2', 'swinir_lightweight_x3', 'swinir_realsr_x4', 'swinir_denoise_3conv',
                   'drct_x2', 'hat_x4')


def _photo(side: int = 256) -> torch.Tensor:
    """The bundled photograph (data/sr_demo/val: trees and water), (1, 3, side, side) in [0, 1]."""
    pixels = np.asarray(Image.open(ROOT / 'data' / 'sr_demo' / 'val' / 'HR' / 'china_171_384.png'), np.float32)
    return torch.from_numpy(pixels[:side, :side] / 255).permute(2, 0, 1)[None].contiguous()


@pytest.fixture(scope='module', params=WINDOW_FIXTURES)
def official(request):
    return densezoo.load_sr(load_fixture(f'{request.param}.pt')['state_dict'])


@pytest.mark.parametrize('factor', [2.0 ** -6, 2.0 ** 10])
def test_scaling_the_stream_leaves_float32_outputs_bit_identical(official, factor):
    x = torch.rand(1, official.in_chans, 19, 23)
    with torch.no_grad():
        expected = official(x)
        scaled = copy.deepcopy(official).scale_stream_(factor)
        assert torch.equal(scaled(x), expected)
    peaks, scaled_peaks = activation_peaks(official, x), activation_peaks(scaled, x)
    group = 'layers.1'
    assert scaled_peaks[group] == pytest.approx(peaks[group] * factor, rel=1e-6)  # the stream did move


@pytest.mark.parametrize('name', ['swinir_classical_x2', 'swinir_light_x2', 'swinir_real_x4', 'drct_x2', 'hat_s_x2'])
def test_float16_stays_within_50_db_where_plain_half_overflows(name):
    model = reduced_model(name).eval()
    big = copy.deepcopy(model).scale_stream_(2.0 ** 14)  # the float32 function is unchanged
    photo = _photo()
    if model.in_chans == 1:
        photo = photo.mean(1, keepdim=True)
    with torch.no_grad():
        reference = model(photo)
        overflowed = copy.deepcopy(big).half()(photo.half())
    assert not torch.isfinite(overflowed).all()  # what users of .half() see: black or NaN images
    prepared = half_precision(big, photo[..., :64, :64])
    assert prepared.shift >= 1 and prepared.margin >= 16
    with torch.no_grad():
        out = prepared.model(photo.half()).float()
        fitting = copy.deepcopy(model).half()(photo.half()).float()
    # the float16 result of the same network whose stream fits, up to float16 subnormals (values below 6e-5 that
    # the unscaled stream rounds coarsely): a few units in the last place
    torch.testing.assert_close(out, fitting, rtol=0, atol=4e-3)
    assert (out - reference).abs().max() <= (fitting - reference).abs().max() + 4e-3
    assert psnr(out[0].clamp(0, 1), reference[0].clamp(0, 1), crop_border=0, y_channel=False) >= 50


def test_no_shift_when_the_stream_fits_and_convnets_pass_through():
    model = reduced_model('rcan_x2').eval()
    prepared = half_precision(model, _photo(32))
    assert prepared.shift == 0 and prepared.margin > 16
    assert next(prepared.model.parameters()).dtype == torch.float16
    assert next(model.parameters()).dtype == torch.float32


def test_values_too_large_outside_the_stream_are_one_line():
    model = reduced_model('swinir_classical_x2').eval()
    with torch.no_grad():
        model.conv_before_upsample[0].weight.mul_(1e5)
    with pytest.raises(ValueError) as error:
        half_precision(model, _photo(16))
    assert one_line(error).startswith('conv_before_upsample')
    with pytest.raises(ValueError) as error:
        reduced_model('swinir_classical_x2').scale_stream_(0.3)
    assert one_line(error) == 'factor=0.3 must be a positive power of two (exact in floating point)'
    with pytest.raises(ValueError) as error:
        reduced_model('hat_s_x2_dwa').scale_stream_(0.5)
    assert 'connection' in one_line(error)


def test_upscale_in_float16(tmp_path):
    model = reduced_model('swinir_light_x2').eval()
    big = copy.deepcopy(model).scale_stream_(2.0 ** 14)
    image = np.round(_photo(96)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    lines = []
    out = densezoo.upscale(image, model=big, dtype='float16', log=lines.append)
    expected = densezoo.upscale(image, model=model)
    assert out.dtype == np.uint8 and np.abs(out.astype(int) - expected.astype(int)).max() <= 2
    assert any(line.startswith('float16: peak') and 'stream scaled by 2^-' in line for line in lines)
