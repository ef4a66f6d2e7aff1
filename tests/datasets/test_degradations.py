"""Real-world degradations: kernels against their formulas, noise statistics, JPEG, filtering, unsharp masking,
and the two pipelines (shapes, levels, seeding, options)."""
import math
import random

import cv2
import numpy as np
import pytest
import torch

from densezoo.datasets.degradations import (DEGRADATION_PIPELINES, BSRGANDegradation, RealESRGANDegradation,
                                            add_gaussian_noise, add_poisson_noise, filter2d, jpeg, usm_sharp)
from densezoo.datasets.kernels import (KERNEL_KINDS, gaussian_kernel, generalized_gaussian_kernel, mesh_grid,
                                       plateau_kernel, random_kernel, sinc_kernel)

PIPELINES = [RealESRGANDegradation, BSRGANDegradation]


def moments(kernel):
    xx, yy = mesh_grid(kernel.shape[0])
    return (kernel * xx * xx).sum(), (kernel * xx * yy).sum(), (kernel * yy * yy).sum()


def smooth_image(h=64, w=64, c=3, seed=0):
    """A smooth colour image (low-frequency waves) in [0.1, 0.9]."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    phases = np.random.default_rng(seed).uniform(0, 2 * np.pi, (c, 2))
    planes = [0.5 + 0.2 * np.sin(2 * np.pi * (xx + p[0])) * np.cos(2 * np.pi * (yy * 1.3 + p[1])) for p in phases]
    return np.stack(planes, -1).astype(np.float32)


# ------------------------------------------------------------------ kernels

@pytest.mark.parametrize('sx, sy, theta', [(2.5, 1.2, 0.6), (1.5, 3.0, -2.0), (2.0, 2.0, 1.0)])
def test_anisotropic_gaussian_moments_are_its_covariance(sx, sy, theta):
    c, s = math.cos(theta), math.sin(theta)
    expected = (sx ** 2 * c * c + sy ** 2 * s * s, (sx ** 2 - sy ** 2) * s * c, sx ** 2 * s * s + sy ** 2 * c * c)
    kernel = gaussian_kernel(61, sx, sy, theta)  # large: truncation is negligible
    assert kernel.sum() == pytest.approx(1)
    np.testing.assert_allclose(moments(kernel), expected, atol=1e-8)


def test_isotropic_gaussian_has_equal_sigmas():
    kernel = gaussian_kernel(51, 2.2)
    np.testing.assert_allclose(moments(kernel), (2.2 ** 2, 0, 2.2 ** 2), atol=1e-8)
    np.testing.assert_allclose(kernel, gaussian_kernel(51, 2.2, 2.2, 0.9), atol=1e-15)
    np.testing.assert_allclose(kernel, kernel.T, atol=0)


@pytest.mark.parametrize('sy, theta', [(None, 0.), (0.8, 0.4)])
def test_generalized_gaussian_with_beta_one_is_the_gaussian(sy, theta):
    np.testing.assert_allclose(generalized_gaussian_kernel(21, 1.7, sy, theta, beta=1.),
                               gaussian_kernel(21, 1.7, sy, theta), atol=1e-15)
    assert not np.allclose(generalized_gaussian_kernel(21, 1.7, sy, theta, beta=2.), gaussian_kernel(21, 1.7, sy))


@pytest.mark.parametrize('make, shape', [(plateau_kernel, lambda q, b: 1 / (1 + q ** b)),
                                         (generalized_gaussian_kernel, lambda q, b: math.exp(-0.5 * q ** b))])
def test_shape_formulas_at_points(make, shape):
    sx, sy, beta = 1.5, 2.5, 1.7
    kernel = make(21, sx, sy, 0., beta)  # theta 0: q = x^2 / sx^2 + y^2 / sy^2
    c = 10
    for dx, dy in ((1, 0), (0, 2), (3, -1), (-4, 5)):
        q = dx * dx / sx ** 2 + dy * dy / sy ** 2
        assert kernel[c + dy, c + dx] / kernel[c, c] == pytest.approx(shape(q, beta), rel=1e-12)
    iso = make(21, 2.0, None, 0., beta)  # isotropic: q = (x^2 + y^2) / sigma^2
    assert iso[c + 3, c + 4] / iso[c, c] == pytest.approx(shape(25 / 4, beta), rel=1e-12)


def test_kernels_are_normalised_non_negative_and_odd():
    rng = np.random.default_rng(3)
    for size in (7, 13, 21):
        for kind in KERNEL_KINDS:
            kernel, drawn = random_kernel(rng, size, [kind], [1.])
            assert drawn == kind and kernel.shape == (size, size)
            assert kernel.sum() == pytest.approx(1, abs=1e-12) and kernel.min() >= 0
            np.testing.assert_allclose(kernel, kernel[::-1, ::-1], atol=1e-15)  # point-symmetric
    for bad in (8, 0, 2.5):
        with pytest.raises(ValueError, match='odd'):
            gaussian_kernel(bad, 1.)
        with pytest.raises(ValueError, match='odd'):
            sinc_kernel(1., bad)


def test_kernel_kind_frequencies_follow_kernel_prob():
    probs = np.array([0.45, 0.25, 0.12, 0.03, 0.12, 0.03])
    rng = np.random.default_rng(0)
    n = 6000
    counts = {kind: 0 for kind in KERNEL_KINDS}
    for _ in range(n):
        counts[random_kernel(rng, 3, KERNEL_KINDS, probs)[1]] += 1
    observed = np.array([counts[k] for k in KERNEL_KINDS])
    expected = probs * n
    chi2 = ((observed - expected) ** 2 / expected).sum()
    assert chi2 < 20.5  # 5 degrees of freedom: p = 0.001
    # and an unlisted kind is never drawn
    assert all(random_kernel(rng, 3, ['iso', 'plateau_aniso'], [0., 1.])[1] == 'plateau_aniso' for _ in range(50))


def test_sinc_kernel_is_a_low_pass_with_cutoff_omega_c():
    omega_c = math.pi / 2
    kernel = sinc_kernel(omega_c, 21)
    assert kernel.sum() == pytest.approx(1) and kernel.min() < 0  # the ringing lobes
    n = 256
    response = np.abs(np.fft.fft2(np.pad(kernel, (0, n - 21))))
    freq = 2 * np.pi * np.fft.fftfreq(n)
    radius = np.hypot(*np.meshgrid(freq, freq))
    inside, outside = radius < 0.6 * omega_c, (radius > 1.4 * omega_c) & (radius <= np.pi)
    assert np.abs(response[inside] - 1).max() < 0.15
    assert response[outside].max() < 0.15
    padded = sinc_kernel(omega_c, 11, pad_to=21)
    assert padded.shape == (21, 21) and padded[:5].sum() == 0
    np.testing.assert_allclose(padded[5:16, 5:16], sinc_kernel(omega_c, 11), atol=0)


# ------------------------------------------------------------------ noise

def test_gaussian_noise_has_the_given_sigma():
    img = np.full((512, 512, 3), 0.5, np.float32)
    noise = add_gaussian_noise(img, np.random.default_rng(0), sigma=10.) - img
    n = noise.size
    assert noise.std() == pytest.approx(10 / 255, rel=0.01)
    assert abs(noise.mean()) < 4 * (10 / 255) / math.sqrt(n)
    assert abs(np.corrcoef(noise[..., 0].ravel(), noise[..., 1].ravel())[0, 1]) < 0.01  # colour: independent


def test_grey_gaussian_noise_is_the_same_on_all_channels():
    img = np.full((64, 64, 3), 0.5, np.float32)
    noise = add_gaussian_noise(img, np.random.default_rng(1), sigma=20., gray=True) - img
    assert noise.std() > 0.05
    np.testing.assert_array_equal(noise[..., 0], noise[..., 1])
    np.testing.assert_array_equal(noise[..., 0], noise[..., 2])
    out = add_gaussian_noise(np.full((8, 8, 3), 0.99, np.float32), np.random.default_rng(2), sigma=50.)
    assert out.max() <= 1 and out.dtype == np.float32  # clipped


def test_poisson_noise_variance_follows_the_level_count():
    # two flat halves (levels 64 and 192) and a row of 100 other levels: 102 distinct levels -> vals = 128
    img = np.full((400, 400, 3), 64 / 255, np.float32)
    img[:, 200:] = 192 / 255
    img[0, :100] = (np.arange(100)[:, None] + 100) / 255
    scale = 1.5
    noise = add_poisson_noise(img, np.random.default_rng(0), scale=scale, clip=False) - img
    for cols, level in ((slice(0, 200), 64), (slice(200, 400), 192)):
        part = noise[1:, cols]
        expected_var = scale ** 2 * (level / 255) / 128
        assert part.var() == pytest.approx(expected_var, rel=0.02)
        assert abs(part.mean()) < 4 * math.sqrt(expected_var / part.size)
    # a flat image has one level: vals = 1, variance = scale^2 * value
    flat = np.full((300, 300, 1), 0.5, np.float32)
    noise = add_poisson_noise(flat, np.random.default_rng(1), scale=0.1, clip=False) - flat
    assert noise.var() == pytest.approx(0.01 * 0.5, rel=0.03)


def test_grey_poisson_noise_is_the_same_on_all_channels():
    img = smooth_image(32, 32)
    noise = add_poisson_noise(img, np.random.default_rng(0), scale=1., gray=True, clip=False) - img
    assert noise.std() > 0.005
    np.testing.assert_allclose(noise[..., 0], noise[..., 2], atol=1e-6)


# ------------------------------------------------------------------ JPEG, filtering, sharpening

def test_jpeg_quality_and_levels():
    img = smooth_image(64, 64)
    img[20:40, 20:40] = 0.95  # an edge for the artefacts
    best, worst = jpeg(img, 100), jpeg(img, 10)
    assert best.dtype == np.float32 and best.shape == img.shape

    def psnr(a):
        return 10 * math.log10(1 / np.mean((a - img) ** 2))

    assert psnr(best) > 40 and psnr(worst) < psnr(best) - 10
    for out in (best, worst):
        np.testing.assert_allclose(out * 255, np.round(out * 255), atol=1e-4)
    grey = jpeg(img[..., :1], 50)
    assert grey.shape == (64, 64, 1) and psnr(np.repeat(grey, 3, -1)) < psnr(best)
    with pytest.raises(ValueError, match='between 1 and 100'):
        jpeg(img, 0)


def test_filter2d_correlates_and_both_paths_agree():
    kernel = np.zeros((5, 5))
    kernel[1, 3], kernel[2, 2] = 0.25, 0.75  # asymmetric
    img = np.zeros((11, 11, 1), np.float32)
    img[5, 5] = 1
    out = filter2d(img, kernel)[..., 0]
    # a correlation: the impulse lands at p - (offset of the tap)
    assert out[5, 5] == pytest.approx(0.75) and out[5 + 1, 5 - 1] == pytest.approx(0.25)
    assert out.sum() == pytest.approx(1)
    for shape in ((20, 17, 3), (4, 3, 2), (1, 6, 1)):  # also images smaller than the kernel
        x = np.random.default_rng(0).random(shape).astype(np.float32)
        k = gaussian_kernel(9, 1.5, 0.7, 0.3)
        via_cv2 = filter2d(x, k)
        via_torch = filter2d(torch.from_numpy(x).permute(2, 0, 1)[None], k)[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(via_cv2, via_torch, atol=1e-5)
    with pytest.raises(ValueError, match='odd'):
        filter2d(img, np.ones((4, 4)))


def test_usm_sharp_matches_the_unsharp_mask_formula():
    img = smooth_image(64, 80)
    img[30:50, 10:40] += 0.08
    # BasicSR's numpy USM: cv2's Gaussian blur of size 51 (sigma 8), threshold 10 / 255, weight 0.5
    blur = cv2.GaussianBlur(img, (51, 51), 0)
    residual = img - blur
    mask = cv2.GaussianBlur((np.abs(residual) * 255 > 10).astype(np.float32), (51, 51), 0)
    expected = mask * np.clip(img + 0.5 * residual, 0, 1) + (1 - mask) * img
    tensor = torch.from_numpy(img).permute(2, 0, 1)[None]
    sharp = usm_sharp(tensor)
    assert sharp.shape == tensor.shape
    np.testing.assert_allclose(sharp[0].permute(1, 2, 0).numpy(), expected, atol=2e-6)
    np.testing.assert_allclose(usm_sharp(img), expected, atol=2e-6)
    assert np.abs(expected - img).max() > 0.02  # it does change the image
    flat = torch.full((2, 3, 16, 16), 0.3)  # smaller than the kernel; flat stays flat
    torch.testing.assert_close(usm_sharp(flat), flat)
    small = torch.rand(2, 3, 16, 12)
    np.testing.assert_allclose(usm_sharp(small)[1].permute(1, 2, 0).numpy(),
                               usm_sharp(small[1].permute(1, 2, 0).numpy()), atol=1e-5)


# ------------------------------------------------------------------ pipelines

def test_registry():
    assert DEGRADATION_PIPELINES == {'realesrgan': RealESRGANDegradation, 'bsrgan': BSRGANDegradation}


@pytest.mark.parametrize('pipeline', PIPELINES)
@pytest.mark.parametrize('scale, size, channels', [(4, (64, 48), 3), (2, (32, 40), 3), (3, (36, 36), 1),
                                                   (4, (8, 8), 3), (4, (4, 4), 1)])
def test_pipeline_output(pipeline, scale, size, channels):
    hr = smooth_image(*size, c=channels)
    before = hr.copy()
    degrade = pipeline(scale)
    for seed in range(4):
        lr = degrade(hr, np.random.default_rng(seed))
        assert lr.shape == (size[0] // scale, size[1] // scale, channels) and lr.dtype == np.float32
        assert lr.min() >= 0 and lr.max() <= 1
        np.testing.assert_array_equal(lr * 255, np.round(lr * 255).astype(np.float32))  # exact 8-bit levels
    np.testing.assert_array_equal(hr, before)


@pytest.mark.parametrize('pipeline', PIPELINES)
def test_pipeline_is_seeded_by_its_generator_only(pipeline):
    hr = smooth_image(96, 96)
    degrade = pipeline(4)
    np.random.seed(5), torch.manual_seed(5), random.seed(5)
    states = np.random.get_state()[1].copy(), torch.get_rng_state().clone(), random.getstate()
    first = [degrade(hr, np.random.default_rng(seed)) for seed in range(6)]
    np.random.seed(9), torch.manual_seed(9), random.seed(9)  # other global states: the same images
    again = [degrade(hr, np.random.default_rng(seed)) for seed in range(6)]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert sum(not np.array_equal(first[0], other) for other in first[1:]) >= 4  # seeds differ
    np.random.seed(5), torch.manual_seed(5), random.seed(5)
    degrade(hr, np.random.default_rng(0))
    assert np.array_equal(np.random.get_state()[1], states[0]) and torch.equal(torch.get_rng_state(), states[1])
    assert random.getstate() == states[2]  # global generators untouched
    rng = np.random.default_rng(11)
    a = degrade(hr, rng)
    b = degrade(hr, rng)  # the generator moves on
    assert not np.array_equal(a, b)


# settings that make the Real-ESRGAN pipeline an identity up to the final resizing and JPEG at quality 100
QUIET = dict(gt_usm=False, sinc_prob=0., sinc_prob2=0., final_sinc_prob=0., kernel_list=['iso'], kernel_prob=[1.],
             kernel_list2=['iso'], kernel_prob2=[1.], blur_sigma=[1e-3, 1e-3], blur_sigma2=[1e-3, 1e-3],
             resize_prob=[0, 0, 1], resize_prob2=[0, 0, 1], gaussian_noise_prob=1., gaussian_noise_prob2=1.,
             noise_range=[0, 0], noise_range2=[0, 0], jpeg_range=[100, 100], jpeg_range2=[100, 100])


def test_realesrgan_options_make_stages_certain():
    hr = smooth_image(64, 64)
    quiet = RealESRGANDegradation(1, **QUIET)
    for seed in range(3):  # JPEG at quality 100 still subsamples the chroma: PSNR ~48 dB
        assert 10 * math.log10(1 / np.mean((quiet(hr, np.random.default_rng(seed)) - hr) ** 2)) > 45
    flat = np.full((128, 128, 3), 0.5, np.float32)
    noisy = RealESRGANDegradation(1, **{**QUIET, 'noise_range': [20, 20], 'noise_range2': [20, 20]})
    residual = noisy(flat[..., :1], np.random.default_rng(0)) - 0.5  # grey: no chroma subsampling in the JPEG
    assert residual.std() == pytest.approx(math.sqrt(2) * 20 / 255, rel=0.1)  # two passes of sigma 20
    for grey in (True, False):
        options = {**QUIET, 'noise_range2': [20, 20], 'gray_noise_prob2': float(grey)}
        residual = RealESRGANDegradation(1, **options)(flat, np.random.default_rng(0)) - 0.5
        corr = np.corrcoef(residual[..., 0].ravel(), residual[..., 2].ravel())[0, 1]
        assert corr > 0.99 if grey else corr < 0.9  # JPEG's 4:2:0 chroma correlates colour noise (~0.8)
    poisson = RealESRGANDegradation(1, **{**QUIET, 'gaussian_noise_prob': 0., 'poisson_scale_range': [1, 1]})
    residual = poisson(flat, np.random.default_rng(0)) - flat  # one level: vals = 1, var = 0.5
    assert residual.std() > 0.2
    sharpened = RealESRGANDegradation(1, **{**QUIET, 'gt_usm': True})
    edge = np.full((64, 64, 1), 0.3, np.float32)
    edge[:, 32:] = 0.7
    out = sharpened(edge, np.random.default_rng(0))
    assert out[:, 33].mean() > 0.72 and out[:, 30].mean() < 0.28  # overshoot on both sides


def test_bsrgan_options_make_stages_certain():
    flat = np.full((128, 128, 3), 0.5, np.float32)
    quiet = BSRGANDegradation(4, noise_range=[0, 0], jpeg_range=[100, 100])
    for seed in range(3):
        np.testing.assert_array_equal(quiet(flat, np.random.default_rng(seed)), np.full((32, 32, 3), 128 / 255,
                                                                                          np.float32))
    for probs, grey in (([0, 1, 0], True), ([1, 0, 0], False)):
        noisy = BSRGANDegradation(4, noise_range=[25, 25], noise_type_prob=probs, jpeg_range=[100, 100])
        residual = noisy(flat, np.random.default_rng(1)) - 0.5
        assert residual.std() > 2 / 255
        corr = np.corrcoef(residual[..., 0].ravel(), residual[..., 1].ravel())[0, 1]
        assert corr > 0.99 if grey else corr < 0.9  # JPEG's 4:2:0 chroma correlates colour noise
    correlated = BSRGANDegradation(4, noise_range=[25, 25], noise_type_prob=[0, 0, 1], jpeg_range=[100, 100])
    for seed in range(3):
        assert correlated(flat[..., :1], np.random.default_rng(seed)).shape == (32, 32, 1)


@pytest.mark.parametrize('pipeline, key, value, allowed', [
    (RealESRGANDegradation, 'kernel_prob', [0.5, 0.5, 0.5, 0, 0, 0], 'summing to 1'),
    (RealESRGANDegradation, 'kernel_prob2', [0.5, 0.5], 'one probability per kernel_list2 entry'),
    (RealESRGANDegradation, 'kernel_list', ['iso', 'box'], 'kernel kinds'),
    (RealESRGANDegradation, 'blur_sigma', [3, 0.2], 'lo <= hi'),
    (RealESRGANDegradation, 'blur_sigma2', [-1, 1], 'lo > 0'),
    (RealESRGANDegradation, 'noise_range', [-5, 10], 'lo >= 0'),
    (RealESRGANDegradation, 'resize_range', [1.2, 1.5], 'lo <= 1 <= hi'),
    (RealESRGANDegradation, 'jpeg_range2', [30, 101], 'hi <= 100'),
    (RealESRGANDegradation, 'sinc_prob', 1.5, 'between 0 and 1'),
    (RealESRGANDegradation, 'gt_usm', 'yes', 'true or false'),
    (RealESRGANDegradation, 'kernel_size_range', [7, 20], 'odd'),
    (RealESRGANDegradation, 'blur_kernel_size', 21, 'not known'),
    (BSRGANDegradation, 'noise_type_prob', [0.5, 0.5], '3 probabilities'),
    (BSRGANDegradation, 'noise_range', [2.5, 25], 'integers'),
    (BSRGANDegradation, 'jpeg_prob', -0.1, 'between 0 and 1'),
    (BSRGANDegradation, 'sinc_prob', 0.1, 'not known'),
])
def test_bad_options_raise_one_line(pipeline, key, value, allowed):
    with pytest.raises(ValueError) as info:
        pipeline(4, **{key: value})
    message = str(info.value)
    assert '\n' not in message and f'{key}={value!r}' in message and allowed in message


@pytest.mark.parametrize('pipeline', PIPELINES)
def test_bad_inputs_raise(pipeline):
    with pytest.raises(ValueError, match='multiple of the scale 4'):
        pipeline(4)(np.zeros((30, 32, 3), np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match='C = 3 or 1'):
        pipeline(4)(np.zeros((32, 32)), np.random.default_rng(0))
    with pytest.raises(ValueError, match='positive integer'):
        pipeline(0)
