"""NIQE: the values of BasicSR 1.4.2 on the bundled images, its rounding of the Y channel, the blocks it scores,
higher values for noisier and blurrier images, and one-line errors for images it cannot score."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from densezoo.metrics.niqe import _luma, niqe

DATA = Path(__file__).resolve().parents[2] / 'data' / 'sr_demo'

# Measured with BasicSR 1.4.2 (the sdist from PyPI; its basicsr/metrics/niqe.py and what that imports loaded by
# path): calculate_niqe(cv2.imread(path), crop_border, input_order='HWC', convert_to=convert_to), numpy 2.4.6,
# scipy 1.17.1, torch 2.14.1 (CPU), OpenCV 5.1.0. densezoo agrees within 1.4e-3, most values within 3e-5: BasicSR
# halves the image in float32, whose last bits (BLAS-dependent) now and then move an AGGD shape to the next step
# (0.001) of its grid.
BASICSR = {
    # (image, convert_to, crop_border): calculate_niqe
    ('train/HR/china_171_000.png', 'y', 0): 4.981919508487784,
    ('train/HR/china_171_000.png', 'gray', 0): 4.982542919197909,
    ('train/HR/china_171_000.png', 'y', 4): 5.51168440300325,
    ('train/HR/china_171_192.png', 'y', 0): 7.147702482531038,
    ('train/HR/china_171_192.png', 'gray', 0): 7.29377989409966,
    ('train/HR/china_171_192.png', 'y', 4): 15.516254292735526,
    ('train/HR/flower_000_000.png', 'y', 0): 13.307357494605661,
    ('train/HR/flower_000_000.png', 'gray', 0): 12.656997794623306,
    ('train/HR/flower_000_000.png', 'y', 4): 13.626561229280028,
    ('train/HR/flower_090_184.png', 'y', 0): 4.639980408149538,
    ('train/HR/flower_090_184.png', 'gray', 0): 4.644463936477109,
    ('train/HR/flower_090_184.png', 'y', 4): 4.568816298654484,
    ('train/HR/flower_171_384.png', 'y', 0): 8.67066577583802,
    ('train/HR/flower_171_384.png', 'gray', 0): 9.448241362569238,
    ('train/HR/flower_171_384.png', 'y', 4): 9.454578358529577,
    ('val/HR/china_171_384.png', 'y', 0): 6.335958985510831,
    ('val/HR/china_171_384.png', 'gray', 0): 6.296137194395443,
    ('val/HR/china_171_384.png', 'y', 4): 6.226470962974419,
}
TOLERANCE = 2e-3


def _rgb(name: str) -> np.ndarray:
    return np.ascontiguousarray(cv2.imread(str(DATA / name), cv2.IMREAD_COLOR)[..., ::-1])


@pytest.mark.parametrize('name, convert_to, crop_border', list(BASICSR))
def test_basicsr_values_of_the_bundled_images(name, convert_to, crop_border):
    value = niqe(_rgb(name), crop_border=crop_border, y_channel=convert_to == 'y')
    assert value == pytest.approx(BASICSR[name, convert_to, crop_border], abs=TOLERANCE)


def test_a_flip_changes_little_on_whole_blocks():
    # BasicSR 1.4.2, as above, on the top-left 192x192 pixels (BGR) of flower_000_000.png and on their mirror image:
    # the diagonal neighbour products swap, which moves the score by about 1e-3
    crop = _rgb('train/HR/flower_000_000.png')[:192, :192]
    assert niqe(crop) == pytest.approx(13.307357494605661, abs=TOLERANCE)
    assert niqe(np.ascontiguousarray(crop[:, ::-1])) == pytest.approx(13.30624478275797, abs=TOLERANCE)


def test_only_whole_blocks_count():
    rgb = _rgb('train/HR/flower_000_000.png')  # 256x256: 2x2 blocks of 96, the rest is left out
    assert niqe(rgb) == niqe(np.ascontiguousarray(rgb[:192, :192]))


def test_tensor_and_uint8_inputs_agree():
    rgb = _rgb('train/HR/flower_090_184.png')
    tensor = torch.from_numpy(rgb).permute(2, 0, 1).double() / 255
    assert niqe(tensor + 0.3 / 255) == niqe(rgb)  # quantised to 8 bits first
    assert niqe(tensor.float(), crop_border=4) == niqe(rgb, crop_border=4)


def test_colour_images_are_scored_on_the_rounded_y_channel():
    rgb = _rgb('train/HR/china_171_000.png')
    y = _luma(rgb, y_channel=True).round().astype(np.uint8)
    assert niqe(rgb) == niqe(y) == niqe(y[..., None]) == niqe(y, y_channel=False)


def test_y_rounds_as_basicsr():
    # colours whose Y lies at or within 1e-13 of k + 0.5: BasicSR's float32 arithmetic rounds (35, 47, 39), Y exactly
    # 52.5, down to the even 52, and the others, Y 125.5 in exact arithmetic but 125.49999999999999 in float64, up
    colours = np.array([[[35, 47, 39], [131, 133, 90], [72, 138, 219], [127, 143, 49]]], dtype=np.uint8)
    assert _luma(colours, y_channel=True).round().tolist() == [[52, 126, 126, 126]]


def test_noise_and_blur_raise_niqe():
    rgb = _rgb('train/HR/flower_090_184.png')
    x = torch.from_numpy(rgb).permute(2, 0, 1).double() / 255
    noisy = x + 10 / 255 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    small = F.interpolate(x[None], scale_factor=0.25, mode='bicubic', antialias=True)
    blurred = F.interpolate(small, size=x.shape[1:], mode='bicubic')[0]
    clean = niqe(x)
    assert niqe(noisy) > clean + 1 and niqe(blurred) > clean + 1


def test_two_blocks_are_enough():
    # BasicSR 1.4.2 as above on the top-left 96x192 pixels of flower_090_184.png: 4.971123487195776
    assert niqe(_rgb('train/HR/flower_090_184.png')[:96, :192]) == pytest.approx(4.971123487195776, abs=TOLERANCE)


@pytest.mark.parametrize('shape, crop_border', [((160, 160), 0), ((96, 191), 0), ((192, 192), 48), ((8, 8), 0)])
def test_too_small_is_a_one_line_error(shape, crop_border):
    img = np.random.default_rng(0).integers(0, 256, shape + (3,), dtype=np.uint8)
    with pytest.raises(ValueError, match='NIQE needs at least two 96x96 blocks') as info:
        niqe(img, crop_border=crop_border)
    assert '\n' not in str(info.value)


def test_flat_image_is_a_one_line_error():
    with pytest.raises(ValueError, match='NIQE is undefined') as info:
        niqe(np.full((192, 192, 3), 128, dtype=np.uint8))
    assert '\n' not in str(info.value)


@pytest.mark.parametrize('img', [np.zeros((192, 192, 3), np.uint16), np.zeros((192, 192, 2), np.uint8),
                                 torch.zeros(1, 3, 192, 192), torch.zeros(3, 192, 192, dtype=torch.uint8)])
def test_unsupported_inputs(img):
    with pytest.raises(ValueError, match='must be'):
        niqe(img)


def test_negative_crop_border():
    with pytest.raises(ValueError, match='crop_border=-1'):
        niqe(np.zeros((192, 192), np.uint8), crop_border=-1)
