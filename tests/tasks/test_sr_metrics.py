"""SR metrics: PSNR and SSIM values worked out by hand, border cropping, 8-bit quantisation, the Y channel, and a
cross-check against a slow, direct implementation."""
import math

import numpy as np
import pytest
import torch

from densezoo.metrics.sr import psnr, quantize, rgb_to_y, ssim


def _grey(value: float, shape=(3, 20, 24)) -> torch.Tensor:
    return torch.full(shape, value / 255, dtype=torch.float64)


def test_rgb_to_y_is_matlab_rgb2ycbcr():
    rgb = torch.tensor([[[0.]], [[0.]], [[0.]]]), torch.tensor([[[1.]], [[1.]], [[1.]]]), \
        torch.tensor([[[1.]], [[0.]], [[0.]]])
    assert [round(rgb_to_y(c).item() * 255, 3) for c in rgb] == [16.0, 235.0, round(16 + 65.481, 3)]
    assert rgb_to_y(torch.rand(2, 3, 4, 5)).shape == (2, 1, 4, 5)


def test_psnr_of_a_known_mse():
    hr = _grey(100)
    assert psnr(_grey(105), hr, y_channel=False) == pytest.approx(10 * math.log10(255 ** 2 / 25), abs=1e-12)
    # on Y an offset d in R, G and B moves Y by d * (65.481 + 128.553 + 24.966) / 255 = d * 219 / 255
    assert psnr(_grey(105), hr) == pytest.approx(10 * math.log10(255 ** 2 / (5 * 219 / 255) ** 2), abs=1e-9)
    assert psnr(hr, hr) == math.inf


def test_images_are_quantised_to_8_bits_first():
    hr = _grey(100)
    assert psnr(hr + 0.4 / 255, hr, y_channel=False) == math.inf  # rounds to the same values
    assert psnr(hr + 0.6 / 255, hr, y_channel=False) == pytest.approx(10 * math.log10(255 ** 2), abs=1e-12)
    assert psnr(hr + 1.0, hr, y_channel=False) == pytest.approx(10 * math.log10(255 ** 2 / 155 ** 2))  # clamped
    assert torch.equal(quantize(torch.tensor([-0.1, 0.49 / 255, 0.51 / 255, 1.2])),
                       torch.tensor([0., 0., 1., 255.], dtype=torch.float64))


def test_border_crop():
    hr = _grey(100, (1, 12, 12))
    sr = hr.clone()
    sr[..., :2, :] += 10 / 255  # error only in the two top rows
    assert psnr(sr, hr, crop_border=2) == math.inf
    # crop 1: one of the 10 remaining rows (10 x 10 pixels) has error 10
    assert psnr(sr, hr, crop_border=1) == pytest.approx(10 * math.log10(255 ** 2 / (10 * 100 / 100)), abs=1e-9)
    with pytest.raises(ValueError, match=r'^images of 12x12 pixels are too small for crop_border=6$'):
        psnr(sr, hr, crop_border=6)


def test_ssim_by_formula():
    hr = _grey(100)
    assert ssim(hr, hr) == pytest.approx(1.0, abs=1e-12)
    # constant images: no variance, SSIM = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1)
    c1 = (0.01 * 255) ** 2
    expected = (2 * 100 * 110 + c1) / (100 ** 2 + 110 ** 2 + c1)
    assert ssim(_grey(110), hr, y_channel=False) == pytest.approx(expected, abs=1e-12)
    # a textured image and the same image shifted by a constant: the structure term is 1, the luminance term
    # (2 mu1 mu2 + C1) / (mu1^2 + mu2^2 + C1) with the local means
    rng = np.random.default_rng(0)
    tex = torch.from_numpy(rng.integers(60, 190, (1, 15, 15)).astype(np.float64) / 255)
    shifted = ssim(tex + 20 / 255, tex)
    assert 0.95 < shifted < 1.0


def _slow_ssim_channel(a: np.ndarray, b: np.ndarray) -> float:
    """Direct SSIM: every 11x11 window inside the image, Gaussian-weighted statistics."""
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            x, y = a[i:i + 11, j:j + 11], b[i:i + 11, j:j + 11]
            mx, my = (w * x).sum(), (w * y).sum()
            vx, vy = (w * (x - mx) ** 2).sum(), (w * (y - my) ** 2).sum()
            cov = (w * (x - mx) * (y - my)).sum()
            values.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def _slow(sr: np.ndarray, hr: np.ndarray, crop: int, y_channel: bool):
    """PSNR and SSIM from uint8 HWC images, written directly from the definitions."""
    a, b = sr.astype(np.float64), hr.astype(np.float64)
    if crop:
        a, b = a[crop:-crop, crop:-crop], b[crop:-crop, crop:-crop]
    if y_channel:
        a, b = [16 + (65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]) / 255 for x in (a, b)]
        a, b = a[..., None], b[..., None]
    mse = np.mean((a - b) ** 2)
    return 10 * np.log10(255 ** 2 / mse), np.mean([_slow_ssim_channel(a[..., c], b[..., c])
                                                   for c in range(a.shape[-1])])


@pytest.mark.parametrize('crop, y_channel', [(0, True), (2, True), (3, False)])
def test_against_a_direct_implementation(crop, y_channel):
    rng = np.random.default_rng(crop)
    hr = rng.integers(0, 256, (22, 25, 3)).astype(np.uint8)
    sr = np.clip(hr.astype(int) + rng.integers(-30, 31, hr.shape), 0, 255).astype(np.uint8)
    expected_psnr, expected_ssim = _slow(sr, hr, crop, y_channel)
    as_tensor = [torch.from_numpy(x.transpose(2, 0, 1) / 255.) for x in (sr, hr)]
    assert psnr(*as_tensor, crop_border=crop, y_channel=y_channel) == pytest.approx(expected_psnr, abs=1e-9)
    assert ssim(*as_tensor, crop_border=crop, y_channel=y_channel) == pytest.approx(expected_ssim, abs=1e-9)
    assert ssim(sr, hr, crop, y_channel) == pytest.approx(expected_ssim, abs=1e-9)  # numpy uint8 HWC too


def test_batches_give_one_value_per_image():
    hr = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    sr = (hr + 0.02 * torch.randn_like(hr)).clamp(0, 1)
    batch_psnr, batch_ssim = psnr(sr, hr, 2), ssim(sr, hr, 2)
    assert batch_psnr.shape == batch_ssim.shape == (3,)
    for i in range(3):
        assert batch_psnr[i].item() == pytest.approx(psnr(sr[i], hr[i], 2), abs=1e-12)
        assert batch_ssim[i].item() == pytest.approx(ssim(sr[i], hr[i], 2), abs=1e-12)


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(ValueError, match=r'^the images differ in shape: \(3, 8, 8\) and \(3, 8, 9\)$'):
        psnr(torch.rand(3, 8, 8), torch.rand(3, 8, 9))
    with pytest.raises(ValueError, match=r'^SSIM needs images of at least 11x11 pixels \(after cropping\), got '
                                         r'6x6$'):
        ssim(torch.rand(3, 10, 10), torch.rand(3, 10, 10), crop_border=2)
