"""Every config in configs/mmseg and configs/mmdet builds and trains a step (reduced backbone widths)."""
from pathlib import Path

import pytest
import torch

from tests.mm.test_backbone import SMALL

ROOT = Path(__file__).resolve().parents[2] / 'configs'
CONFIGS = sorted(p for folder in ('mmseg', 'mmdet') for p in (ROOT / folder).glob('[!_]*.py'))


def _sync_bn_to_bn(cfg):
    if isinstance(cfg, dict):
        for key, value in cfg.items():
            if key == 'type' and value == 'SyncBN':
                cfg[key] = 'BN'
            else:
                _sync_bn_to_bn(value)
    elif isinstance(cfg, list):
        for value in cfg:
            _sync_bn_to_bn(value)


def _in_channels(cfg, seg):
    return cfg.model.decode_head.in_channels if seg else cfg.model.neck.in_channels


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.stem)
def test_config_channels_match_feature_info(mm, path):
    from mmengine.config import Config
    from densezoo.mm.backbone import _feature_levels
    cfg = Config.fromfile(str(path))
    backbone = cfg.model.backbone
    assert cfg.custom_imports.imports == ['densezoo.mm']
    kwargs = {k: v for k, v in backbone.items() if k not in ('type', 'model_name', 'out_indices')}
    levels = _feature_levels(backbone.model_name, kwargs)
    channels = [levels[i]['num_chs'] for i in backbone.out_indices]
    seg = path.parent.name == 'mmseg'
    assert _in_channels(cfg, seg) == channels
    if seg:
        assert cfg.model.auxiliary_head.in_channels == channels[cfg.model.auxiliary_head.in_index]


def _seg_batch(size):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    samples = []
    for _ in range(2):
        meta = dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size))
        samples.append(SegDataSample(gt_sem_seg=PixelData(data=torch.randint(0, 150, (1, size, size))), metainfo=meta))
    return dict(inputs=[torch.randint(0, 256, (3, size, size), dtype=torch.uint8) for _ in samples], data_samples=samples)


def _det_batch(size):
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    sample = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size),
                                         scale_factor=(1., 1.)))
    masks = torch.zeros(1, size, size, dtype=torch.uint8)
    masks[0, 8:40, 10:50] = 1
    sample.gt_instances = InstanceData(bboxes=torch.tensor([[10., 8., 50., 40.]]), labels=torch.tensor([3]),
                                       masks=BitmapMasks(masks.numpy(), size, size))
    return dict(inputs=[torch.randint(0, 256, (3, size, size), dtype=torch.uint8)], data_samples=[sample])


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.stem)
def test_config_loss_backward_predict(mm, path):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    seg = path.parent.name == 'mmseg'
    cfg = Config.fromfile(str(path))
    _sync_bn_to_bn(cfg.model)
    name = cfg.model.backbone.model_name
    cfg.model.backbone.update(SMALL[name])
    init_default_scope('mmseg' if seg else 'mmdet')
    if seg:
        from mmseg.registry import MODELS
        from mmseg.structures import SegDataSample as Sample
    else:
        from mmdet.registry import MODELS
        from mmdet.structures import DetDataSample as Sample
    backbone = MODELS.build(cfg.model.backbone)  # the reduced backbone's channels feed the heads
    if seg:
        cfg.model.decode_head.update(in_channels=backbone.channels, channels=32)
        cfg.model.auxiliary_head.update(in_channels=backbone.channels[cfg.model.auxiliary_head.in_index], channels=16)
    else:
        cfg.model.neck.in_channels = backbone.channels
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    data = _seg_batch(64) if seg else _det_batch(64)
    model.train()
    losses = model(**model.data_preprocessor(data, True), mode='loss')
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    model.eval()
    with torch.no_grad():
        predictions = model.test_step(data)
    assert len(predictions) == len(data['inputs']) and isinstance(predictions[0], Sample)
    if seg:
        assert predictions[0].pred_sem_seg.data.shape == (1, 64, 64)
    else:
        assert predictions[0].pred_instances.bboxes.shape[1] == 4
