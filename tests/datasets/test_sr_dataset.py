"""SR pairs: matching by stem, on-the-fly degradation equal to whole-image downscaling, aligned crops and
augmentation, per-sample seeding, grey images and one-line errors."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from densezoo.datasets import DataError, SRPairedDataset, imresize, pair_images
from densezoo.datasets.sr import degrade
from tests.sr_standin import make_sr_images, smooth_image


def _as_hwc(t: torch.Tensor) -> np.ndarray:
    return t.numpy().transpose(1, 2, 0)


def test_pairs_match_by_stem_with_and_without_the_scale_suffix(tmp_path):
    root = make_sr_images(tmp_path, count=(3, 1), lr=True)  # DIV2K naming: 0000.png <-> 0000x2.png
    pairs = pair_images(root / 'train' / 'HR', root / 'train' / 'LR_bicubic' / 'X2', scale=2)
    assert [(hr.name, lr.name) for hr, lr in pairs] == [('0000.png', '0000x2.png'), ('0001.png', '0001x2.png'),
                                                     ('0002.png', '0002x2.png')]
    same = make_sr_images(tmp_path / 'same', count=(2, 1), lr=True, lr_name='{stem}.png')  # benchmark naming
    assert [lr.name for _, lr in pair_images(same / 'train' / 'HR', same / 'train' / 'LR_bicubic' / 'X2', 2)] == [
        '0000.png', '0001.png']
    assert pair_images(root / 'train' / 'HR') == [(p, None) for p, _ in pairs]


@pytest.mark.parametrize('problem, message', [
    ('no lr', r"^HR image '0001.png' has no LR partner \(0001.\* or 0001x2.\*\); HR folder '.*train/HR', "
              r"LR folder '.*train/LR_bicubic/X2'$"),
    ('no hr', r"^LR image '0001x2.png' has no HR partner; LR folder '.*train/LR_bicubic/X2', HR folder "
              r"'.*train/HR'$"),
    ('missing', r"^LR folder '.*train/LR_bicubic/X2' does not exist$"),
    ('empty', r"^HR folder '.*train/HR' has no images \(.png .jpg .jpeg\)$"),
])
def test_unpaired_and_missing_images_are_one_line_errors(tmp_path, problem, message):
    root = make_sr_images(tmp_path, count=(3, 1), lr=problem != 'missing')
    hr, lr = root / 'train' / 'HR', root / 'train' / 'LR_bicubic' / 'X2'
    if problem == 'no lr':
        (lr / '0001x2.png').unlink()
    elif problem == 'no hr':
        (hr / '0001.png').unlink()
    elif problem == 'empty':
        for path in hr.iterdir():
            path.unlink()
    with pytest.raises(DataError, match=message) as info:
        SRPairedDataset(hr, lr, scale=2)
    assert isinstance(info.value, ValueError) and '\n' not in str(info.value)


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_on_the_fly_crops_equal_crops_of_the_downscaled_image(tmp_path, scale):
    """Only the crop (and a margin) is downscaled, yet its LR pixels are those of downscaling the whole image;
    the HR crop is aligned with it (lr_patch * scale pixels at scale times the LR position)."""
    image = smooth_image((13 * scale + scale - 1, 11 * scale + 1), seed=scale)  # not a multiple of the scale
    (tmp_path / 'HR').mkdir()
    Image.fromarray(image).save(tmp_path / 'HR' / 'a.png')
    dataset = SRPairedDataset(tmp_path / 'HR', scale=scale, lr_patch=5, hflip=0, rot=False, repeat=12)
    hr_full = image[:13 * scale, :11 * scale].astype(np.float32) / 255
    lr_full = degrade(hr_full, 'bicubic', scale)
    positions = set()
    for index in range(len(dataset)):
        lr, hr = dataset[index]
        assert lr.shape == (3, 5, 5) and hr.shape == (3, 5 * scale, 5 * scale)
        matches = [(t, x) for t in range(13 - 4) for x in range(11 - 4)
                   if np.array_equal(_as_hwc(hr), hr_full[t * scale:(t + 5) * scale, x * scale:(x + 5) * scale])]
        assert len(matches) == 1
        top, left = matches[0]
        positions.add(matches[0])
        assert np.array_equal(_as_hwc(lr), lr_full[top:top + 5, left:left + 5])
    assert len(positions) > 6  # random positions, the image borders among them in some runs


def test_stored_lr_and_on_the_fly_lr_are_the_same_data(tmp_path):
    root = make_sr_images(tmp_path, count=(2, 1), size=(30, 34), lr=True)
    stored = SRPairedDataset(root / 'train' / 'HR', root / 'train' / 'LR_bicubic' / 'X2', scale=2, lr_patch=6)
    made = SRPairedDataset(root / 'train' / 'HR', scale=2, lr_patch=6)
    for index in range(2):
        for a, b in zip(stored[index], made[index]):
            assert torch.equal(a, b)
    whole = SRPairedDataset(root / 'val' / 'HR', scale=2)
    lr, hr = whole[0]
    assert lr.shape == (3, 15, 17) and hr.shape == (3, 30, 34)
    assert torch.equal(lr, torch.from_numpy(imresize(np.asarray(Image.open(root / 'val' / 'HR' / '0000.png')),
                                                     1 / 2).transpose(2, 0, 1) / np.float32(255)))


def test_hr_is_cropped_to_scale_times_the_lr_size(tmp_path):
    """Benchmark HR images need not be multiples of the scale (Set5's are not): HR is cut to LR size x scale."""
    (tmp_path / 'HR').mkdir()
    (tmp_path / 'LR').mkdir()
    Image.fromarray(smooth_image((26, 29))).save(tmp_path / 'HR' / 'bird.png')
    Image.fromarray(smooth_image((8, 9))).save(tmp_path / 'LR' / 'birdx3.png')
    lr, hr = SRPairedDataset(tmp_path / 'HR', tmp_path / 'LR', scale=3)[0]
    assert lr.shape == (3, 8, 9) and hr.shape == (3, 24, 27)
    Image.fromarray(smooth_image((10, 9))).save(tmp_path / 'LR' / 'birdx3.png')
    with pytest.raises(DataError, match=r"^LR image '.*birdx3.png' is 9x10 but its HR image 'bird.png' is 29x26, "
                                        r"not x3 of it$"):
        SRPairedDataset(tmp_path / 'HR', tmp_path / 'LR', scale=3)[0]


def test_augmentation_is_aligned_seeded_per_sample_and_covers_the_symmetries(tmp_path):
    root = make_sr_images(tmp_path, count=(1, 1), size=(24, 24))
    dataset = SRPairedDataset(root / 'train' / 'HR', scale=2, lr_patch=12, seed=5, repeat=40)  # whole image
    lr0, hr0 = SRPairedDataset(root / 'train' / 'HR', scale=2, lr_patch=12, hflip=0, rot=False)[0]
    seen = set()
    for index in range(len(dataset)):
        lr, hr = dataset[index]
        for transpose in (False, True):
            for flips in ([], [-1], [-2], [-2, -1]):
                def move(x):
                    x = x.transpose(-2, -1) if transpose else x
                    return x.flip(flips) if flips else x
                if torch.equal(lr, move(lr0)):
                    assert torch.equal(hr, move(hr0))  # the HR image had the same transform
                    seen.add((transpose, tuple(flips)))
    assert len(seen) == 8
    epoch0 = [dataset[i][0] for i in range(8)]
    torch.manual_seed(123)  # the caller's RNG state does not matter ...
    assert torch.equal(dataset[3][0], epoch0[3])
    dataset.set_epoch(1)  # ... but the epoch does
    assert not all(torch.equal(dataset[i][0], epoch0[i]) for i in range(8))


def test_albumentations_steps_and_their_errors(tmp_path):
    root = make_sr_images(tmp_path, count=(1, 1), size=(24, 24))
    only_hflip = SRPairedDataset(root / 'train' / 'HR', scale=2, lr_patch=12, repeat=20,
                                 augment=[dict(name='HorizontalFlip', p=1.0)])
    lr0, _ = SRPairedDataset(root / 'train' / 'HR', scale=2, lr_patch=12, hflip=0, rot=False)[0]
    assert all(torch.equal(only_hflip[i][0], lr0.flip(-1)) for i in range(20))
    with pytest.raises(DataError, match=r"^data.albumentations step 'RandomCrop' cannot be used for "
                                        r"super-resolution; only HorizontalFlip, VerticalFlip, Transpose, "
                                        r"RandomRotate90, D4, SquareSymmetry keep LR and HR aligned$"):
        SRPairedDataset(root / 'train' / 'HR', scale=2, lr_patch=8, augment=[dict(name='RandomCrop', height=4,
                                                                                  width=4)])


def test_the_callers_rng_state_is_left_alone(tmp_path):
    root = make_sr_images(tmp_path, count=(2, 1))
    dataset = SRPairedDataset(root / 'train' / 'HR', scale=2, lr_patch=8, degradation='bicubic')
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    dataset[1]
    assert torch.equal(torch.rand(1), expected)


def test_noise_and_jpeg_degradations(tmp_path):
    root = make_sr_images(tmp_path, count=(2, 2), size=(32, 32))
    noisy = SRPairedDataset(root / 'val' / 'HR', scale=1, degradation='noise', noise_sigma=25)
    lr, hr = noisy[0]
    assert lr.shape == hr.shape == (3, 32, 32)
    assert (lr - hr).std().item() == pytest.approx(25 / 255, rel=0.1)
    assert torch.equal(noisy[0][0], lr)  # validation noise is fixed per image
    assert not torch.equal(noisy[1][0] - noisy[1][1], lr - hr)
    jpeg = SRPairedDataset(root / 'train' / 'HR', scale=1, degradation='jpeg', jpeg_quality=10, lr_patch=16,
                           channels=1)
    lr, hr = jpeg[0]
    assert lr.shape == hr.shape == (1, 16, 16) and 0 < (lr - hr).abs().mean() < 0.1
    with pytest.raises(DataError, match=r"^degradation='noise' keeps the size: it needs scale 1, not 2$"):
        SRPairedDataset(root / 'train' / 'HR', scale=2, degradation='noise')


def test_grey_images(tmp_path):
    root = make_sr_images(tmp_path, count=(1, 1), size=(16, 16))
    rgb = np.asarray(Image.open(root / 'val' / 'HR' / '0000.png'), dtype=np.float64)
    luma = SRPairedDataset(root / 'val' / 'HR', scale=2, channels=1, grey='L')[0][1]
    assert luma.shape == (1, 16, 16)
    assert torch.equal(luma[0], torch.from_numpy(np.asarray(Image.open(root / 'val' / 'HR' / '0000.png')
                                                            .convert('L'), dtype=np.float32) / 255))
    y = SRPairedDataset(root / 'val' / 'HR', scale=2, channels=1, grey='Y')[0][1][0].double() * 255
    expected = np.round(16 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255)
    assert torch.allclose(y, torch.from_numpy(expected), atol=1e-4)
    assert 16 <= y.min() and y.max() <= 235


@pytest.mark.parametrize('corrupt', ['skip', 'error'])
def test_corrupt_images_follow_the_policy(tmp_path, corrupt):
    root = make_sr_images(tmp_path, count=(3, 1), lr=True)
    (root / 'train' / 'LR_bicubic' / 'X2' / '0001x2.png').write_bytes(b'not a png')
    dataset = SRPairedDataset(root / 'train' / 'HR', root / 'train' / 'LR_bicubic' / 'X2', scale=2, lr_patch=8,
                              corrupt=corrupt)
    if corrupt == 'error':
        with pytest.raises(DataError, match=r"^cannot read image '.*0001x2.png' \(.*\); fix or remove it, or set "
                                            r"data.corrupt_images=skip$"):
            dataset[1]
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        lr, hr = dataset[1]  # the next pair instead
    assert lr.shape == (3, 8, 8) and any("skipping unreadable image '" in str(w.message) and '0001x2.png'
                                         in str(w.message) for w in caught)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        verified = SRPairedDataset(root / 'train' / 'HR', root / 'train' / 'LR_bicubic' / 'X2', scale=2,
                                   verify=True)
    assert len(verified) == 2 and any('skipping 1 unreadable image pair:' in str(w.message) for w in caught)


def test_patch_larger_than_the_image_is_an_error(tmp_path):
    root = make_sr_images(tmp_path, count=(1, 1), size=(20, 20))
    with pytest.raises(DataError, match=r"^image '.*0000.png' gives a 10x10 LR image, smaller than lr_patch=12; "
                                        r"lower the patch size or remove the image$"):
        SRPairedDataset(root / 'train' / 'HR', scale=2, lr_patch=12)[0]
