# RetinaNet + FPN, 1x, with PVT v2-b2 + MUDDFormer dynamic dense connections (densezoo pvt_v2_b2_mudd).
# Pretrained: timm's pvt_v2_b2 weights load into it (connections start as the plain network):
#   model.backbone.init_cfg=dict(type='Pretrained', checkpoint='PATH/model.safetensors')
_base_ = ['./_base_retinanet_coco.py']
model = dict(
    backbone=dict(model_name='pvt_v2_b2_mudd', drop_path_rate=0.1),
    neck=dict(in_channels=[128, 320, 512]))
