# Mask R-CNN + FPN, 1x, with RDNet-T + depth-weighted averaging over its dense blocks (densezoo rdnet_tiny_dwa).
# Pretrained: timm's rdnet_tiny weights load into it (connections start as the plain network):
#   model.backbone.init_cfg=dict(type='Pretrained', checkpoint='PATH/model.safetensors')
_base_ = ['./_base_mask-rcnn_coco.py']
model = dict(
    backbone=dict(model_name='rdnet_tiny_dwa', drop_path_rate=0.2),
    neck=dict(in_channels=[256, 440, 744, 1040]))
