# UPerNet with RDNet-T + depth-weighted averaging over its dense blocks (densezoo rdnet_tiny_dwa).
# Pretrained: timm's rdnet_tiny weights load into it (connections start as the plain network):
#   model.backbone.init_cfg=dict(type='Pretrained', checkpoint='PATH/model.safetensors')
_base_ = ['./_base_upernet_ade20k.py']
model = dict(
    backbone=dict(model_name='rdnet_tiny_dwa', drop_path_rate=0.2),
    decode_head=dict(in_channels=[256, 440, 744, 1040]),
    auxiliary_head=dict(in_channels=744))
