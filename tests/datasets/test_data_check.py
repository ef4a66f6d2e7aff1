"""The data check before the first training step, over training and validation files: unreadable images, SR pairs
that do not fit the scale, the crop or the scoring, segmentation label maps of the wrong mode, size or values;
one-line errors before the run folder exists, one warning for skipped files, one log line."""
import logging
import warnings

import numpy as np
import pytest
from PIL import Image

from densezoo.datasets import DataError, ImageFolderDataset, SRPairedDataset
from densezoo.datasets.check import check_image_folders, check_segmentation, check_sr_pairs
from densezoo.datasets.segmentation import SegmentationDataset
from densezoo.engine import Trainer, config_from_dict, train
from tests.engine.conftest import make_dataset, tiny_config
from tests.engine.test_seg_task import seg_config
from tests.helpers import one_line
from tests.sr_standin import make_sr_images, smooth_image, sr_config


def _truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def _run_fails(tmp_path, values: dict, message: str) -> None:
    with pytest.raises(DataError, match=message) as info:
        train(config_from_dict(values), run_dir=tmp_path / 'run', progress=False)
    one_line(info)
    assert not (tmp_path / 'run').exists()


# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('split', ['train', 'val'])
def test_sr_lr_of_the_wrong_size_stops_before_the_run(tmp_path, split):
    root = make_sr_images(tmp_path / 'data', count=(4, 2), size=(32, 36), lr=True)
    Image.fromarray(smooth_image((15, 18))).save(root / split / 'LR_bicubic' / 'X2' / '0001x2.png')
    values = sr_config(root, tmp_path / 'runs')
    values['data']['lr_dir'] = 'LR_bicubic/X{scale}'
    _run_fails(tmp_path, values, rf"^LR image '.*data/{split}/LR_bicubic/X2/0001x2.png' is 18x15, expected 18x16 "
                                 rf"\(HR '.*data/{split}/HR/0001.png' 36x32 / scale 2\); use LR images made at x2 "
                                 rf"from these HR images$")


@pytest.mark.parametrize('problem, message', [
    ('crop', r"^image '.*data/train/HR/0002.png' gives a 7x6 LR image, smaller than lr_patch=8; lower the patch "
             r"size or remove the image$"),
    ('score', r"^validation image '.*data/val/HR/0001.png' gives a 14x12 HR image, too small to score: SSIM needs "
              r"15x15 pixels \(11x11 after cutting 2 from each side, data.val_crop_border\); lower "
              r"data.val_crop_border or remove the image$"),
])
def test_sr_images_too_small_for_the_crop_or_the_scoring(tmp_path, problem, message):
    root = make_sr_images(tmp_path / 'data', count=(4, 2), size=(32, 36))
    small = root / ('train/HR/0002.png' if problem == 'crop' else 'val/HR/0001.png')
    Image.fromarray(smooth_image((13, 15))).save(small)  # LR made on the fly: 7x6, HR scored 14x12
    _run_fails(tmp_path, sr_config(root, tmp_path / 'runs'), message)


def test_sr_unreadable_pairs_are_skipped_with_one_warning(tmp_path, caplog):
    root = make_sr_images(tmp_path, count=(4, 2), size=(24, 24), lr=True)
    (root / 'train' / 'LR_bicubic' / 'X2' / '0001x2.png').write_bytes(b'not a png')
    (root / 'val' / 'HR' / '0000.png').write_bytes(b'')
    train_set = SRPairedDataset(root / 'train' / 'HR', root / 'train' / 'LR_bicubic' / 'X2', scale=2, lr_patch=8)
    val_set = SRPairedDataset(root / 'val' / 'HR', root / 'val' / 'LR_bicubic' / 'X2', scale=2)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO, 'densezoo.datasets.check'):
        warnings.simplefilter('always')
        check_sr_pairs(train_set, val_set, crop_border=2)
    assert [hr.stem for hr, _ in train_set.samples] == ['0000', '0002', '0003']
    assert [hr.stem for hr, _ in val_set.samples] == ['0001']
    assert len(caught) == 1
    assert str(caught[0].message).startswith("skipping 2 unreadable images: ")
    assert str(caught[0].message).endswith("train/LR_bicubic/X2/0001x2.png, " + str(root / 'val' / 'HR' / '0000.png'))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith('data check: 8 training and 4 validation files in ')
    assert lines[0].endswith(' s (image headers, 2 unreadable skipped)')
    train_set = SRPairedDataset(root / 'train' / 'HR', root / 'train' / 'LR_bicubic' / 'X2', scale=2, lr_patch=8,
                                corrupt='error')
    with pytest.raises(DataError, match=r"^cannot read image '.*train/LR_bicubic/X2/0001x2.png' \(.*\); fix or "
                                        r"remove it, or set data.corrupt_images=skip$") as info:
        check_sr_pairs(train_set, val_set)
    one_line(info)


# ---------------------------------------------------------------------------------------------------------------
def test_classification_unreadable_images_stop_the_run_or_are_skipped(tmp_path, caplog):
    root = make_dataset(tmp_path / 'data')
    (root / 'train' / 'green' / '3.png').write_bytes(b'not a png')
    (root / 'val' / 'red' / '1.png').write_bytes(b'')
    values = tiny_config(root, tmp_path / 'runs', **{'data.corrupt_images': 'error'})
    _run_fails(tmp_path, values, r"^cannot read image '.*data/train/green/3.png' \(.*\); fix or remove it, or set "
                                 r"data.corrupt_images=skip$")
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO, 'densezoo.datasets.check'):
        warnings.simplefilter('always')
        trainer = Trainer(config_from_dict(tiny_config(root, tmp_path / 'runs')), tmp_path / 'run', progress=False)
    skipped = [str(w.message) for w in caught if 'unreadable' in str(w.message)]
    assert skipped == [f"skipping 2 unreadable images: {root / 'train' / 'green' / '3.png'}, "
                       f"{root / 'val' / 'red' / '1.png'}"]
    assert len(trainer.train_set) == 35 and len(trainer.val_set) == 11
    lines = [r.getMessage() for r in caplog.records if r.name == 'densezoo.datasets.check']
    assert len(lines) == 1 and lines[0].startswith('data check: 36 training and 12 validation files in ')


def test_classification_check_reads_headers_and_verify_images_decodes(tmp_path):
    """A truncated file has a readable header: the check keeps it (it decodes nothing); data.verify_images, the
    full decode, leaves it out."""
    root = make_dataset(tmp_path / 'data', size=64)
    _truncate(root / 'train' / 'blue' / '2.png')
    train_set, val_set = ImageFolderDataset(root / 'train'), ImageFolderDataset(root / 'val')
    check_image_folders(train_set, val_set)
    assert len(train_set) == 36 and len(val_set) == 12
    with pytest.warns(UserWarning, match=r"^skipping 1 unreadable image: .*train/blue/2.png$"):
        assert len(ImageFolderDataset(root / 'train', verify=True)) == 35


def test_a_validation_class_unknown_to_training_is_still_an_error(tmp_path):
    root = make_dataset(tmp_path / 'data')
    (root / 'val' / 'purple').mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / 'val' / 'purple' / '0.png')
    _run_fails(tmp_path, tiny_config(root, tmp_path / 'runs'),
               r"^class folder '.*data/val/purple' is not a training class; use the same class folders in every "
               r"split$")


# ---------------------------------------------------------------------------------------------------------------
def make_seg_data(root, count=(3, 2), size=(8, 10)):
    """``root/{images,annotations}/{training,validation}``: random images, label maps of classes 0..3 and 255."""
    rng = np.random.default_rng(0)
    for split, n in zip(('training', 'validation'), count):
        for folder in ('images', 'annotations'):
            (root / folder / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / 'images' / split / f'{i}.png')
            labels = rng.choice(np.array([0, 1, 2, 3, 255], np.uint8), size)
            Image.fromarray(labels, mode='L').save(root / 'annotations' / split / f'{i}.png')
    return root


def _seg_sets(root, reduce_zero_label=False):
    return (SegmentationDataset(root, 'training', None, True, reduce_zero_label),
            SegmentationDataset(root, 'validation', None, False, reduce_zero_label))


@pytest.mark.parametrize('problem, message', [
    ('rgb', r"^label map '.*annotations/validation/1.png' has mode RGB; expected one class index per pixel \(a grey "
            r"or palette PNG: L, P, I;16\); store class indices, not colours$"),
    ('size', r"^label map '.*annotations/training/2.png' is 10x7 but its image '.*images/training/2.png' is 10x8; "
             r"label maps must have their image's size$"),
    ('values', r"^label map '.*annotations/validation/0.png' holds values \[4, 7\] outside the classes 0..3 that are "
               r"not the ignore index 255; fix the label map or data.num_classes=4$"),
    ('reduced', r"^label map '.*annotations/training/0.png' holds values \[5\] outside 1..4 \(classes 0..3 after "
                r"data.reduce_zero_label; 0 and 255 are ignored\); fix the label map, data.num_classes=4 or "
                r"data.reduce_zero_label$"),
    ('unreadable', r"^cannot read image '.*annotations/training/1.png' \(.*\); fix or remove it, or set "
                   r"data.corrupt_images=skip$"),
])
def test_segmentation_label_map_problems(tmp_path, problem, message):
    root = make_seg_data(tmp_path)
    labels = root / 'annotations'
    if problem == 'rgb':
        Image.open(labels / 'validation' / '1.png').convert('RGB').save(labels / 'validation' / '1.png')
    elif problem == 'size':
        Image.fromarray(np.zeros((7, 10), np.uint8)).save(labels / 'training' / '2.png')
    elif problem == 'values':
        Image.fromarray(np.tile(np.array([0, 4, 7, 255, 3], np.uint8), (8, 2))).save(labels / 'validation' / '0.png')
    elif problem == 'reduced':
        Image.fromarray(np.tile(np.array([0, 1, 4, 5, 255], np.uint8), (8, 2))).save(labels / 'training' / '0.png')
    else:
        _truncate(labels / 'training' / '1.png', 0.7)  # the header reads, the pixels do not
    with pytest.raises(DataError, match=message) as info:
        check_segmentation(*_seg_sets(root, reduce_zero_label=problem == 'reduced'), num_classes=4, corrupt='error')
    one_line(info)


def test_segmentation_values_and_modes_that_pass(tmp_path, caplog):
    root = make_seg_data(tmp_path)
    palette = Image.new('P', (10, 8))
    palette.putdata([0, 1, 2, 3, 255] * 16)
    palette.putpalette([0, 0, 0] * 256)
    palette.save(root / 'annotations' / 'training' / '0.png')
    Image.fromarray(np.full((8, 10), 255, np.uint16)).save(root / 'annotations' / 'training' / '1.png')  # 'I;16'
    with caplog.at_level(logging.INFO, 'densezoo.datasets.check'):
        check_segmentation(*_seg_sets(root), num_classes=4)
    assert [r.getMessage().split(' in ')[0] for r in caplog.records] == [
        'data check: 6 training and 4 validation files']
    assert caplog.records[0].getMessage().endswith(
        ' s (image headers, 1 with 16 bits per channel, values of 5 label maps)')
    reduced = np.tile(np.array([0, 1, 4, 255, 2], np.uint8), (8, 2))
    Image.fromarray(reduced).save(root / 'annotations' / 'training' / '2.png')
    check_segmentation(*_seg_sets(root, reduce_zero_label=True), num_classes=4)  # 4 is class 3 after the reduction
    _truncate(root / 'annotations' / 'validation' / '1.png', 0.7)
    train_set, val_set = _seg_sets(root)
    with pytest.warns(UserWarning, match=r"^skipping 1 unreadable image: .*annotations/validation/1.png$"):
        check_segmentation(train_set, val_set, num_classes=5)
    assert len(train_set) == 3 and [image.name for image, _ in val_set.samples] == ['0.png']


def test_out_of_range_validation_labels_stop_the_run_before_training(tmp_path):
    """Without the check they stopped the first validation, after training and before any checkpoint."""
    root = make_seg_data(tmp_path / 'data', count=(4, 2), size=(32, 32))
    Image.fromarray(np.full((32, 32), 9, np.uint8)).save(root / 'annotations' / 'validation' / '1.png')
    values = seg_config(tmp_path / 'runs', **{'data.root': str(root), 'data.train_split': 'training',
                                              'data.val_split': 'validation'})
    _run_fails(tmp_path, values, r"^label map '.*annotations/validation/1.png' holds values \[9\] outside the "
                                 r"classes 0..3 that are not the ignore index 255; fix the label map or "
                                 r"data.num_classes=4$")
