"""16-bit images keep their depth: SR data loads at 16 bits and validation scores at 16 bits; classification and
segmentation inputs are rounded to 8 bits instead of saturating."""
import pickle

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from densezoo.datasets import ImageFolderDataset, SRPairedDataset, imresize, load_image
from densezoo.datasets.folder import bit_depth
from densezoo.datasets.segmentation import SegmentationDataset
from densezoo.datasets.sr import collate_pairs_and_bits
from densezoo.tasks.sr_eval import evaluate_benchmark
from densezoo.engine import Trainer, config_from_dict
from densezoo.metrics.sr import psnr, ssim
from tests.sr_standin import sr_config


def gradient16(height: int = 8, width: int = 300, channels: int = 3) -> np.ndarray:
    """uint16 ramps over the whole range (0 to 65535), a different one per channel; most values are not multiples
    of 257, so an 8-bit reading cannot hold them."""
    ramp = np.linspace(0, 65535, height * width).reshape(height, width)
    planes = [ramp, ramp[::-1, ::-1], np.roll(ramp, 7, axis=1)][:channels]
    return np.round(np.stack(planes, -1) if channels > 1 else planes[0]).astype(np.uint16)


def save16(path, pixels: np.ndarray) -> None:
    """A 16-bit PNG: grey through PIL ('I;16'), RGB through OpenCV (BGR order on disk)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if pixels.ndim == 2:
        Image.fromarray(pixels).save(path)
    else:
        assert cv2.imwrite(str(path), np.ascontiguousarray(pixels[..., ::-1]))


@pytest.mark.parametrize('channels', [1, 3])
def test_sr_loading_round_trips_16_bit_pngs(tmp_path, channels):
    pixels = gradient16(channels=channels)
    save16(tmp_path / 'g.png', pixels)
    with Image.open(tmp_path / 'g.png') as img:
        assert bit_depth(img) == 16
    loaded = load_image(tmp_path / 'g.png').astype(np.float64)
    rgb = pixels if channels == 3 else np.repeat(pixels[..., None], 3, -1)
    assert loaded.shape == (8, 300, 3)
    assert np.abs(loaded - rgb / 65535).max() <= 1 / 65535
    assert np.array_equal(np.round(loaded * 65535), rgb)  # every 16-bit level, not 256 of them
    assert len(np.unique(loaded)) == len(np.unique(rgb)) > 2000
    grey = load_image(tmp_path / 'g.png', channels=1, grey='L')[..., 0].astype(np.float64)
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    assert np.abs(grey * 65535 - luma).max() <= 0.5 + 1e-3  # PIL's luma, rounded to 16-bit levels


def test_sr_samples_carry_the_hr_depth_and_mixed_pairs_work(tmp_path):
    hr16 = gradient16(32, 36)
    save16(tmp_path / 'HR' / 'a.png', hr16)
    lr8 = imresize(np.round(hr16 / 257).astype(np.uint8), 1 / 2)
    (tmp_path / 'LR').mkdir()
    Image.fromarray(lr8).save(tmp_path / 'LR' / 'ax2.png')
    sample = SRPairedDataset(tmp_path / 'HR', tmp_path / 'LR', scale=2)[0]
    lr, hr = sample
    assert sample.bits == 16 and lr.shape == (3, 16, 18) and hr.shape == (3, 32, 36)
    assert torch.equal(hr, torch.from_numpy(hr16.transpose(2, 0, 1) / np.float32(65535)))
    assert torch.equal(lr, torch.from_numpy(lr8.transpose(2, 0, 1) / np.float32(255)))
    copied = pickle.loads(pickle.dumps(sample))  # as from a loader worker
    assert copied.bits == 16 and torch.equal(copied[1], hr)
    eight = SRPairedDataset(tmp_path / 'LR', scale=2)[0]
    assert eight.bits == 8
    lrs, hrs, depths = collate_pairs_and_bits([sample, eight])
    assert depths == (16, 8) and hrs[0] is hr


def test_on_the_fly_bicubic_keeps_16_bit_levels(tmp_path):
    hr16 = gradient16(32, 36)
    save16(tmp_path / 'HR' / 'a.png', hr16)
    lr, hr = SRPairedDataset(tmp_path / 'HR', scale=2)[0]
    expected = np.clip(np.round(imresize(hr16.astype(np.float64), 1 / 2)), 0, 65535)
    assert np.abs(lr.numpy().transpose(1, 2, 0).astype(np.float64) * 65535 - expected).max() < 1e-2
    assert (expected % 257 != 0).mean() > 0.9  # levels that 8 bits would have lost


def test_16_bit_validation_is_scored_at_16_bits(tmp_path):
    """The stand-in denoiser starts as the identity, so the model output is the stored LR image: its PSNR against HR
    at 16 bits is the direct float64 computation; at 8 bits the same pair scores 11 dB lower."""
    rng = np.random.default_rng(0)
    hr = rng.integers(1000, 64000, (24, 24, 3)).astype(np.uint16)
    lr = (hr.astype(np.int64) + rng.integers(-30, 31, hr.shape)).astype(np.uint16)  # below an 8-bit level
    for split in ('train', 'val'):
        save16(tmp_path / 'data' / split / 'HR' / '0000.png', hr)
        save16(tmp_path / 'data' / split / 'LR' / '0000.png', lr)
    values = sr_config(tmp_path / 'data', tmp_path / 'runs', epochs=1)
    values['model']['name'] = 'densezoo_test_sr_denoise'
    values['data'].update(lr_dir='LR', batch_size=1, repeat=1)
    trainer = Trainer(config_from_dict(values), tmp_path / 'run', progress=False)
    metrics = trainer.evaluate()
    mse = np.mean((lr.astype(np.float64) - hr.astype(np.float64)) ** 2)
    assert metrics['psnr'] == pytest.approx(10 * np.log10(65535.0 ** 2 / mse), rel=1e-12)
    lr_t, hr_t = trainer.val_set[0]
    assert metrics['ssim'] == pytest.approx(ssim(lr_t, hr_t, 0, False, bits=16), rel=1e-12)
    eight = psnr(lr_t, hr_t, 0, False)  # rounding to 8-bit levels turns differences of 30 into 0 or 257
    assert eight < metrics['psnr'] - 5  # measured: 71.2 dB at 16 bits, 60.1 at 8
    assert psnr(hr, lr, 0, False, bits=16) == pytest.approx(metrics['psnr'], rel=1e-12)  # uint16 arrays too
    with pytest.raises(ValueError, match=r'^bits=12 is not allowed; use 8 or 16$'):
        psnr(lr_t, hr_t, bits=12)


class _Brighten(torch.nn.Module):
    """Adds 10 16-bit levels to every value: a known error that 8-bit scoring would round away."""

    def forward(self, x):
        return x + 10 / 65535


def test_benchmark_evaluation_scores_16_bit_images_at_16_bits(tmp_path):
    hr = np.random.default_rng(0).integers(1000, 64000, (24, 24, 3)).astype(np.uint16)
    save16(tmp_path / 'bench' / 'HR' / '0000.png', hr)
    score = evaluate_benchmark(_Brighten(), tmp_path / 'bench', scale=1, y_channel=False, crop_border=0)
    assert score.psnr == pytest.approx(10 * np.log10(65535.0 ** 2 / 100), rel=1e-9)  # MSE 10^2 at 16 bits
    assert score.ssim < 1


@pytest.mark.parametrize('channels', [1, 3])
def test_classification_rounds_16_bit_images_to_8_bits(tmp_path, channels):
    pixels = gradient16(channels=channels)
    save16(tmp_path / 'train' / 'ramp' / 'a.png', pixels)
    image, label = ImageFolderDataset(tmp_path / 'train').load(0)
    rgb = pixels if channels == 3 else np.repeat(pixels[..., None], 3, -1)
    expected = np.round(rgb / 257).astype(np.uint8)
    assert image.mode == 'RGB' and label == 0
    assert np.array_equal(np.asarray(image), expected)
    assert np.array_equal(np.unique(np.asarray(image)), np.arange(256))  # every level, none saturated


def test_segmentation_images_rounded_to_8_bits_and_16_bit_label_maps(tmp_path):
    pixels = gradient16(8, 12)
    save16(tmp_path / 'images' / 'val' / 'a.png', pixels)
    labels = np.array([[0, 1, 2, 255] * 3] * 8, np.uint16)
    save16(tmp_path / 'annotations' / 'val' / 'a.png', labels)
    with Image.open(tmp_path / 'annotations' / 'val' / 'a.png') as img:
        assert img.mode == 'I;16'
    image, loaded = SegmentationDataset(tmp_path, 'val', None, training=False).load(0)
    assert np.array_equal(image, np.round(pixels / 257).astype(np.uint8))
    assert loaded.dtype == np.int64 and np.array_equal(loaded, labels)
