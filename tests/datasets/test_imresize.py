"""MATLAB-compatible bicubic imresize: values worked out by hand, shapes, borders and input types."""
import numpy as np
import pytest
import torch

from densezoo.imresize import cubic_kernel, imresize, output_size, resize_weights

# Keys' kernel (a = -0.5) at the offsets that x2 resizing samples
K = {0.25: 0.8671875, 0.75: 0.2265625, 1.25: -0.0703125, 1.75: -0.0234375}


def test_kernel_values():
    x = torch.tensor([0., 0.25, 0.75, 1., 1.25, 1.75, 2., 2.5, -0.75], dtype=torch.float64)
    expected = [1, K[0.25], K[0.75], 0, K[1.25], K[1.75], 0, 0, K[0.75]]
    assert torch.allclose(cubic_kernel(x), torch.tensor(expected, dtype=torch.float64), atol=0, rtol=0)


@pytest.mark.parametrize('size, scale, expected', [
    ((10, 7), 0.3, (3, 3)),        # ceil(3.0) = 3 (not 4: the product is rounded), ceil(2.1) = 3
    ((5, 5), 1 / 3, (2, 2)),       # ceil(1.67)
    ((17, 16), 0.5, (9, 8)),
    ((48, 40), 1 / 4, (12, 10)),
    ((3, 4), 2, (6, 8)),
    ((7, 9), 1.5, (11, 14)),       # ceil(10.5), ceil(13.5)
])
def test_output_size_rounds_up_like_matlab(size, scale, expected):
    assert output_size(size, scale)[0] == expected
    assert imresize(torch.rand(3, *size), scale).shape == (3, *expected)


def test_output_size_argument():
    out = imresize(torch.rand(1, 3, 20, 30), out_size=(7, 11))
    assert out.shape == (1, 3, 7, 11)
    with pytest.raises(ValueError, match='exactly one of scale and out_size'):
        imresize(torch.rand(3, 4, 4))


@pytest.mark.parametrize('scale', [1 / 2, 1 / 3, 1 / 4, 2, 3, 1.5])
def test_constant_image_stays_constant(scale):
    img = torch.full((3, 23, 18), 0.37, dtype=torch.float64)
    out = imresize(img, scale)
    assert torch.allclose(out, torch.full_like(out, 0.37), atol=1e-14)


def test_weights_sum_to_one_and_indices_stay_inside():
    for scale in (1 / 2, 1 / 3, 2, 0.7):
        indices, weights = resize_weights(13, int(np.ceil(13 * scale)), scale)
        assert torch.allclose(weights.sum(dim=1), torch.ones(weights.shape[0], dtype=torch.float64))
        assert indices.min() >= 0 and indices.max() <= 12


def test_downscaling_by_two_by_hand():
    """x1/2 with antialiasing: the kernel stretched to 8 pixels, offsets +-0.5 ... +-3.5, weights 0.5 k(offset / 2)."""
    row = torch.zeros(1, 1, 16, dtype=torch.float64)
    row[..., 7] = 1  # an impulse at 0-based 7
    out = imresize(row, out_size=(1, 8))[0, 0]
    # output pixel j (0-based) samples 0-based position 2j + 0.5; the impulse lies at offset 2j + 0.5 - 7
    expected = torch.zeros(8, dtype=torch.float64)
    for j in range(8):
        offset = abs(2 * j + 0.5 - 7)
        expected[j] = 0.5 * {0.5: K[0.25], 1.5: K[0.75], 2.5: K[1.25], 3.5: K[1.75]}.get(offset, 0.0)
    assert torch.allclose(out, expected, atol=1e-15)
    assert expected[3] == 0.5 * K[0.25] and expected[4] == 0.5 * K[0.75] and expected[5] == 0.5 * K[1.75]


def test_upscaling_border_is_mirrored_symmetrically():
    """x2: output pixel 0 samples position 0.75 (1-based); taps at -1, 0 mirror to pixels 2, 1 (border repeated)."""
    row = torch.tensor([[[0., 1., 0., 0.]]], dtype=torch.float64)
    out = imresize(row, out_size=(1, 8))[0, 0]
    # out[0] = k(1.75) x[2nd] + k(0.75) x[1st] + k(0.25) x[1st] + k(1.25) x[2nd] (1-based), here x[2nd] = 1
    assert out[0].item() == pytest.approx(K[1.75] + K[1.25], abs=1e-15)
    # out[2] samples 1.75: taps 0..3 -> pixels 1, 1, 2, 3 with weights k(1.75), k(0.75), k(0.25), k(1.25)
    assert out[2].item() == pytest.approx(K[0.25], abs=1e-15)


@pytest.mark.parametrize('factor', [2, 3, 4])
def test_integer_downscaling_keeps_a_ramp_exact_away_from_the_borders(factor):
    """The samples of an integer downscale are symmetric about the output position, so a linear ramp is kept."""
    width = 12 * factor
    ramp = torch.arange(1, width + 1, dtype=torch.float64).expand(2, 5, width).clone()  # value = 1-based column
    out = imresize(ramp, out_size=(5, 12))
    u = torch.arange(1, 13, dtype=torch.float64) * factor + 0.5 * (1 - factor)  # sampled position, 1-based
    interior = slice(3, 9)  # the stretched kernel reaches 2 output pixels; the borders are mirrored
    assert torch.allclose(out[0, 0, interior], u[interior], atol=1e-12)
    assert not torch.allclose(out[0, 0, :1], u[:1])  # mirroring bends the ramp at the border


def test_numpy_torch_batch_and_uint8_agree():
    rng = np.random.default_rng(0)
    hwc = rng.random((21, 30, 3))
    chw = torch.from_numpy(hwc.transpose(2, 0, 1).copy())
    from_numpy = imresize(hwc, 1 / 3)
    from_torch = imresize(chw, 1 / 3)
    assert from_numpy.shape == (7, 10, 3) and from_numpy.dtype == np.float64
    assert np.allclose(from_numpy, from_torch.numpy().transpose(1, 2, 0), atol=1e-15)
    batch = imresize(torch.stack([chw, chw.flip(-1)]).float(), 1 / 3)
    assert batch.dtype == torch.float32 and torch.allclose(batch[0], from_torch.float(), atol=1e-6)
    grey = imresize(hwc[..., 0], 2)
    assert grey.shape == (42, 60) and np.allclose(grey, imresize(hwc, 2)[..., 0])
    pixels = (hwc * 255).round().astype(np.uint8)
    as_uint8 = imresize(pixels, 1 / 2)
    assert as_uint8.dtype == np.uint8
    assert np.array_equal(as_uint8, np.clip(np.round(imresize(pixels.astype(np.float64), 1 / 2)), 0, 255))


def test_bad_inputs():
    with pytest.raises(TypeError, match='floating point'):
        imresize(torch.zeros(3, 4, 4, dtype=torch.uint8), 2)
    with pytest.raises(ValueError, match='must be positive'):
        imresize(torch.rand(3, 4, 4), 0)
    with pytest.raises(ValueError, match=r'tensors must be \(H, W\), \(C, H, W\) or \(B, C, H, W\)'):
        imresize(torch.rand(1, 1, 3, 4, 4), 2)
