# Mask R-CNN + FPN on COCO, 1x schedule (12 epochs), with a densezoo backbone.
# Shared by the mask-rcnn configs in this folder; each sets backbone.model_name and neck.in_channels.
# Recipe: mmdetection's Swin-T Mask R-CNN 1x (8 GPUs x 2 images, AdamW 1e-4, weight decay 0.05, warm-up 1000
# iterations, steps at epochs 8 and 11), with no weight decay on norms, position tables and connection coefficients.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['densezoo.mm'], allow_failed_imports=False)

data_root = 'data/coco/'
model = dict(
    backbone=dict(_delete_=True, type='DenseZooBackbone', out_indices=(0, 1, 2, 3)))

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={
        'absolute_pos_embed': dict(decay_mult=0.),
        'relative_position_bias_table': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.),
        'connection': dict(decay_mult=0.),
    }))

train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator
