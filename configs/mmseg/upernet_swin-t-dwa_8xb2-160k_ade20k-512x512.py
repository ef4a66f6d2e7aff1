# UPerNet with Swin-T + DenseFormer depth-weighted averaging (densezoo swin_tiny_patch4_window7_224_dwa).
# Pretrained: timm's swin_tiny_patch4_window7_224 weights load into it (connections start as the plain network):
#   model.backbone.init_cfg=dict(type='Pretrained', checkpoint='PATH/model.safetensors')
_base_ = ['./_base_upernet_ade20k.py']
model = dict(
    backbone=dict(model_name='swin_tiny_patch4_window7_224_dwa', img_size=512, strict_img_size=False,
                  drop_path_rate=0.3),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
