"""The segmentation task of the training engine: a few steps on the bundled shapes, the folder dataset and its
joint transforms, config checks."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from densezoo.datasets import DataError
from densezoo.datasets.segmentation import SegmentationDataset, build_seg_pipeline
from densezoo.engine import config_from_dict, train
from densezoo.engine.config import ConfigError
from densezoo.models import swin
from densezoo.heads.segmentor import create_segmentor, load_segmentor_state

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / 'data' / 'seg_demo'
REGISTERED = (swin,)  # importing it registers the backbone with timm
BACKBONE = dict(embed_dim=8, depths=[1, 1, 2, 1], num_heads=[1, 1, 2, 2], window_size=4)


def seg_config(output: Path, **overrides) -> dict:
    config = dict(
        task='seg', name='tiny_seg', output=str(output), seed=0, epochs=1, max_steps=2, log_every=1,
        model=dict(name='swin_tiny_patch4_window7_224_dwa', kwargs=dict(BACKBONE), head='upernet',
                   head_kwargs=dict(channels=8), aux_head=True),
        data=dict(root=str(DEMO), num_classes=4, img_size=32, batch_size=4, workers=0, ratio_range=[0.5, 1.0]),
        optim=dict(name='adamw', lr=1e-3, weight_decay=0.01), sched=dict(name='cosine', warmup_epochs=0))
    for key, value in overrides.items():
        section, _, name = key.rpartition('.')
        (config[section] if section else config)[name] = value
    return config


def test_a_few_steps_on_the_demo_set(tmp_path):
    result = train(config_from_dict(seg_config(tmp_path)), progress=False)
    records = [json.loads(line) for line in (result.run_dir / 'log.jsonl').read_text().splitlines()]
    assert [r['step'] for r in records if r['kind'] == 'train'] == [1, 2]
    val = [r for r in records if r['kind'] == 'val'][-1]
    assert val['count'] == 16 and 0 <= val['mIoU'] <= 100 and 0 < val['aAcc'] <= 100
    assert (result.run_dir / 'log.csv').read_text().splitlines()[0].startswith('kind,epoch,step,lr,loss,mIoU,mAcc')
    weights = load_file(result.run_dir / 'checkpoints' / 'last' / 'model.safetensors')
    model = create_segmentor('swin_tiny_patch4_window7_224_dwa', num_classes=4, aux_head=True,
                             head_kwargs=dict(channels=8), **BACKBONE)
    load_segmentor_state(model, weights)
    with pytest.raises(ValueError, match='the checkpoint has 4 classes but the segmentor has 3'):
        load_segmentor_state(create_segmentor('swin_tiny_patch4_window7_224_dwa', num_classes=3, aux_head=True,
                                              head_kwargs=dict(channels=8), **BACKBONE), weights)


def test_sliding_window_evaluation(tmp_path):
    """Windows covering the whole 64x64 validation image score exactly as whole-image evaluation; smaller ones run
    the slide mode (the metric is then computed from averaged window logits)."""
    runs = {}
    for name, overrides in [('whole', {}), ('cover', {'data.val_slide_window': 64}),
                            ('slide', {'data.val_slide_window': 48, 'data.val_slide_stride': 16})]:
        result = train(config_from_dict(seg_config(tmp_path / name, **overrides)), progress=False)
        records = [json.loads(line) for line in (result.run_dir / 'log.jsonl').read_text().splitlines()]
        runs[name] = [r for r in records if r['kind'] == 'val'][-1]
    assert runs['cover']['mIoU'] == pytest.approx(runs['whole']['mIoU'], abs=1e-9)
    assert runs['cover']['loss'] == pytest.approx(runs['whole']['loss'], rel=1e-5)
    assert runs['slide']['count'] == 16 and 0 <= runs['slide']['mIoU'] <= 100
    assert runs['slide']['loss'] != pytest.approx(runs['whole']['loss'], rel=1e-6)


def _write_pair(root: Path, split: str, name: str, image: np.ndarray, labels: np.ndarray) -> None:
    for folder in ('images', 'annotations'):
        (root / folder / split).mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / 'images' / split / f'{name}.png')
    Image.fromarray(labels, mode='L').save(root / 'annotations' / split / f'{name}.png')


def test_joint_transforms_keep_image_and_labels_aligned(tmp_path):
    """Labels are a function of the pixels (red where label 1); after random scaling, padding, cropping and flipping
    they still are, and padded pixels are ignored (255)."""
    rng = np.random.default_rng(0)
    labels = (rng.random((6, 8)) > 0.5).astype(np.uint8)
    labels = np.kron(labels, np.ones((8, 8), np.uint8))  # 48 x 64, in 8 x 8 blocks
    image = np.stack([labels * 255, np.zeros_like(labels), np.full_like(labels, 100)], -1)
    _write_pair(tmp_path, 'train', 'a', image, labels)
    pipeline = build_seg_pipeline(True, crop_size=48, ratio_range=(0.5, 1.5), hflip=0.5, mean=(0, 0, 0),
                                  std=(1, 1, 1))
    dataset = SegmentationDataset(tmp_path, 'train', pipeline, training=True)
    padded_seen = 0
    for epoch in range(6):
        dataset.set_epoch(epoch)
        tensor, target = dataset[0]
        assert tensor.shape == (3, 48, 48) and target.shape == (48, 48) and target.dtype == torch.int64
        padded = target == 255
        padded_seen += int(padded.sum())
        inside = ~padded & (tensor[2] > 0.2)  # blue channel 100/255 marks real pixels; the padding is black
        red = tensor[0][inside]
        agree = ((red > 0.5) == (target[inside] == 1)).float().mean()
        assert agree > 0.97  # bilinear image vs nearest labels may differ on block edges
    assert padded_seen > 0  # the 0.5x scales need padding to 48x48
    again = dataset[0]
    torch.testing.assert_close(again[1], target)  # per-sample seeding: the same epoch gives the same sample


def test_validation_samples_and_label_options(tmp_path):
    labels = np.array([[0, 1, 2, 255]] * 4, np.uint8)
    _write_pair(tmp_path, 'val', 'b', np.zeros((4, 4, 3), np.uint8), labels)
    pipeline = build_seg_pipeline(False, crop_size=None, resize_short=8)
    image, target = SegmentationDataset(tmp_path, 'val', pipeline, training=False)[0]
    assert image.shape == (3, 8, 8) and target.tolist() == labels.tolist()  # labels keep their size
    _, reduced = SegmentationDataset(tmp_path, 'val', pipeline, training=False, reduce_zero_label=True)[0]
    assert reduced[0].tolist() == [255, 0, 1, 255]


def test_dataset_errors(tmp_path):
    with pytest.raises(DataError, match=r"data folder '.*images/train' does not exist; expected <root>/images/"):
        SegmentationDataset(tmp_path, 'train', None, training=True)
    _write_pair(tmp_path, 'train', 'a', np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8))
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / 'images' / 'train' / 'b.png')
    with pytest.raises(DataError, match=r"image '.*b.png' has no label map b.png in .* \(1 images without labels\)"):
        SegmentationDataset(tmp_path, 'train', None, training=True)


@pytest.mark.parametrize('override,message', [
    ({'data.num_classes': None}, 'data.num_classes=None is not allowed; task seg needs the number of classes'),
    ({'model.head': 'psp'}, "model.head='psp' is not allowed; use upernet, fpn, segformer or dpt"),
    ({'data.ratio_range': [2.0, 1.0]}, r'data.ratio_range=\[2.0, 1.0\] must be two positive numbers'),
    ({'loss': 'l1'}, "^unknown config key 'loss' for task seg; it is a key of tasks sr, sr_gan$"),
    ({'data.val_slide_stride': 8}, r'data.val_slide_stride=8 needs data.val_slide_window and must lie in \['),
    ({'data.val_slide_window': 0}, r'data.val_slide_window=0 must be at least 1'),
])
def test_config_errors(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(seg_config(tmp_path, **override))
