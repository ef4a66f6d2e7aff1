# UPerNet + FCN auxiliary head on ADE20K 512x512, 160k iterations, with a densezoo backbone.
# Shared by the configs in this folder; each sets backbone.model_name and the heads' in_channels.
# Recipe: mmsegmentation's Swin-T UPerNet (8 GPUs x 2 images, AdamW 6e-5, weight decay 0.01, linear warm-up
# 1500 iterations, poly decay), with no weight decay on norms, position tables and connection coefficients.
_base_ = [
    'mmseg::_base_/models/upernet_swin.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
custom_imports = dict(imports=['densezoo.mm'], allow_failed_imports=False)

crop_size = (512, 512)
data_root = 'data/ade20k'
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(_delete_=True, type='DenseZooBackbone', out_indices=(0, 1, 2, 3)),
    decode_head=dict(num_classes=150),
    auxiliary_head=dict(in_index=2, num_classes=150))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={
        'absolute_pos_embed': dict(decay_mult=0.),
        'relative_position_bias_table': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.),
        'connection': dict(decay_mult=0.),
    }))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]

train_dataloader = dict(batch_size=2, dataset=dict(data_root=data_root))
val_dataloader = dict(batch_size=1, dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
