"""Two training iterations of mmengine's Runner on a seg and a det config, each on a tiny dataset written on the fly.

The configs are reduced as in ``test_configs`` (small backbone widths, narrow heads) and pointed at a few 64x64
images in the dataset's own on-disk layout: ADE20K (JPEG images, PNG label maps where 0 means "other") for UPerNet,
COCO (JPEG images and an instances json with boxes and polygons) for RetinaNet. Validation and testing are off.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.mm.test_backbone import SMALL
from tests.mm.test_configs import _sync_bn_to_bn

CONFIGS = Path(__file__).resolve().parents[2] / 'configs'
SEG_CONFIG = CONFIGS / 'mmseg' / 'upernet_swin-t-dwa_8xb2-160k_ade20k-512x512.py'
DET_CONFIG = CONFIGS / 'mmdet' / 'retinanet_swin-t-dwa_fpn_1x_coco.py'
SIZE = 64
NUM_IMAGES = 4  # two iterations of batch 2
ADE_LABELS = (0, 1, 5, 150)  # raw ADE20K values written to the label maps; 0 is "other"


def _write_ade20k(root: Path) -> None:
    """ADE20K layout: images/training/*.jpg and annotations/training/*.png, four label bands per map."""
    import mmcv
    rng = np.random.default_rng(0)
    for index in range(NUM_IMAGES):
        name = f'ADE_train_{index:08d}'
        image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        labels = np.repeat(np.array(ADE_LABELS, dtype=np.uint8), SIZE // len(ADE_LABELS))[:, None].repeat(SIZE, 1)
        assert mmcv.imwrite(image, str(root / 'images' / 'training' / f'{name}.jpg'))
        assert mmcv.imwrite(labels, str(root / 'annotations' / 'training' / f'{name}.png'))


def _write_coco(root: Path, classes) -> None:
    """COCO layout: train2017/*.jpg and annotations/instances_train2017.json with two boxes (and polygons) per image."""
    import mmcv
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for index in range(NUM_IMAGES):
        file_name = f'{index:012d}.jpg'
        assert mmcv.imwrite(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), str(root / 'train2017' / file_name))
        images.append(dict(id=index + 1, file_name=file_name, width=SIZE, height=SIZE))
        for x, y, w, h, category in ((4, 6, 30, 24, 1), (30 - index, 28, 26, 32, 3)):
            polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
            annotations.append(dict(id=len(annotations) + 1, image_id=index + 1, category_id=category,
                                    bbox=[x, y, w, h], area=w * h, iscrowd=0, segmentation=[polygon]))
    categories = [dict(id=i + 1, name=name) for i, name in enumerate(classes)]
    (root / 'annotations').mkdir(parents=True)
    (root / 'annotations' / 'instances_train2017.json').write_text(
        json.dumps(dict(images=images, annotations=annotations, categories=categories)))


def _reduce(cfg, work_dir: Path, seg: bool, frozen_stages: int) -> None:
    """Small backbone and heads, a CPU-sized pipeline, two training iterations, no validation / testing."""
    from densezoo.mm.backbone import _feature_levels
    backbone = cfg.model.backbone
    backbone.update(SMALL[backbone.model_name], frozen_stages=frozen_stages)
    kwargs = {k: v for k, v in backbone.items() if k not in ('type', 'model_name', 'out_indices', 'frozen_stages')}
    levels = _feature_levels(backbone.model_name, kwargs)
    channels = [levels[i]['num_chs'] for i in backbone.out_indices]
    if seg:  # SyncBN stays: the Runner reverts it to BatchNorm when training is not distributed
        cfg.model.data_preprocessor.size = (SIZE, SIZE)
        cfg.model.decode_head.update(in_channels=channels, channels=32)
        cfg.model.auxiliary_head.update(in_channels=channels[cfg.model.auxiliary_head.in_index], channels=16)
    else:
        _sync_bn_to_bn(cfg.model)
        cfg.model.neck.update(in_channels=channels, out_channels=32)
        cfg.model.bbox_head.update(in_channels=32, feat_channels=32, stacked_convs=1)
    for transform in cfg.train_dataloader.dataset.pipeline:
        if transform.type == 'RandomResize':
            transform.scale = (2 * SIZE, SIZE)
        elif transform.type == 'RandomCrop':
            transform.crop_size = (SIZE, SIZE)
        elif transform.type == 'Resize':
            transform.scale = (SIZE, SIZE)
    cfg.train_dataloader.update(num_workers=0, persistent_workers=False)
    cfg.train_dataloader.dataset.data_root = str(work_dir / 'data')
    if seg:
        cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=2, val_interval=100)
    else:
        cfg.train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=1, val_interval=100)
    for stage in ('val', 'test'):
        cfg[f'{stage}_dataloader'] = cfg[f'{stage}_cfg'] = cfg[f'{stage}_evaluator'] = None
    cfg.param_scheduler = None  # the warm-up starts near lr 0, too small to move float32 weights in two steps
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', by_epoch=not seg, interval=2 if seg else 1)
    cfg.default_hooks.pop('visualization')
    cfg.work_dir = str(work_dir)
    cfg.randomness = dict(seed=0)


def _recorder():
    """A hook keeping the model's weights at the start of training and the loss of every iteration."""
    from mmengine.hooks import Hook

    class Recorder(Hook):
        def __init__(self):
            self.start, self.losses = None, []

        def before_train(self, runner):
            self.start = {k: v.detach().clone() for k, v in runner.model.state_dict().items()}

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            self.losses.append(outputs['loss'].item())

    return Recorder()


@pytest.mark.parametrize('seg', [True, False], ids=['upernet_ade20k', 'retinanet_coco'])
def test_runner_trains_two_iterations(mm, tmp_path, seg):
    from mmengine.config import Config
    from mmengine.runner import Runner
    path = SEG_CONFIG if seg else DET_CONFIG
    cfg = Config.fromfile(str(path))
    frozen_stages = -1 if seg else 1
    _reduce(cfg, tmp_path, seg, frozen_stages)
    if seg:
        _write_ade20k(tmp_path / 'data')
    else:
        from mmdet.datasets import CocoDataset
        _write_coco(tmp_path / 'data', CocoDataset.METAINFO['classes'])
    runner = Runner.from_cfg(cfg)
    recorder = _recorder()
    runner.register_hook(recorder)
    if seg:  # the heads' SyncBN layers, reverted to BatchNorm by the Runner since training is not distributed
        norms = [type(m) for m in runner.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        assert cfg.model.decode_head.norm_cfg.type == 'SyncBN' and norms and torch.nn.SyncBatchNorm not in norms
    dataset = runner.train_dataloader.dataset
    assert len(dataset) == NUM_IMAGES
    if seg:  # the ADE20K loader shifts labels down by one and maps "other" (0) to the ignore index 255
        load_image, load_labels = dataset.pipeline.transforms[:2]
        loaded = load_labels(load_image(dataset.get_data_info(0)))
        np.testing.assert_array_equal(np.unique(loaded['gt_seg_map']), [0, 4, 149, 255])
    else:  # the two categories written (ids 1 and 3 of COCO) are labels 0 and 2
        assert dataset[0]['data_samples'].gt_instances.labels.tolist() == [0, 2]

    runner.train()

    assert runner.iter == 2
    assert len(recorder.losses) == 2 and all(np.isfinite(recorder.losses)) and min(recorder.losses) > 0
    logged, _ = runner.message_hub.get_scalar('train/loss').data
    np.testing.assert_allclose(logged, recorder.losses, rtol=1e-6)
    after = runner.model.state_dict()
    backbone = runner.model.backbone
    trainable = {f'backbone.{n}' for n, p in backbone.named_parameters() if p.requires_grad}
    frozen = {f'backbone.{n}' for n, p in backbone.named_parameters() if not p.requires_grad}
    changed = {k for k in trainable if not torch.equal(recorder.start[k], after[k])}
    assert changed == trainable
    if seg:
        assert not frozen
    else:
        stem_and_stage0 = ('features.model.patch_embed.', 'features.model.layers.0.')
        assert frozen == {f'backbone.{n}' for n, _ in backbone.named_parameters() if n.startswith(stem_and_stage0)}
        assert all(torch.equal(recorder.start[k], after[k]) for k in frozen)

    checkpoint = tmp_path / ('iter_2.pth' if seg else 'epoch_1.pth')
    assert checkpoint.is_file()
    saved = torch.load(checkpoint, map_location='cpu', weights_only=False)
    assert saved['meta']['iter'] == 2
    for key in trainable:
        torch.testing.assert_close(saved['state_dict'][key], after[key], rtol=0, atol=0)
