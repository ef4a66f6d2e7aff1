# RetinaNet + FPN on COCO, 1x schedule (12 epochs), with a densezoo backbone.
# Shared by the retinanet configs in this folder; each sets backbone.model_name and neck.in_channels.
# The backbone returns pyramid levels 1-3 (strides 8, 16, 32); the FPN adds two extra levels (strides 64, 128) from
# its inputs, as mmdetection's Swin-T RetinaNet does. Optimizer: mmdetection's PVT v2 RetinaNet (AdamW 1e-4, weight
# decay 1e-4) on the 1x step schedule.
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py',
    'mmdet::_base_/datasets/coco_detection.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['densezoo.mm'], allow_failed_imports=False)

data_root = 'data/coco/'
model = dict(
    backbone=dict(_delete_=True, type='DenseZooBackbone', out_indices=(1, 2, 3)),
    neck=dict(start_level=0, num_outs=5))

optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, weight_decay=1e-4),
    paramwise_cfg=dict(custom_keys={'connection': dict(decay_mult=0.)}))

train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator
