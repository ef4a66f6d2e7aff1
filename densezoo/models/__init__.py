"""densezoo model families; importing this package registers their models with timm."""
from densezoo.models.connect import connect
from densezoo.models.swin import ConnectedSwinTransformer, ConnectedSwinTransformerV2

#: timm module names of densezoo's model files (timm keys modules by their last dotted name)
MODEL_MODULES = ('swin',)

__all__ = ['connect', 'ConnectedSwinTransformer', 'ConnectedSwinTransformerV2', 'MODEL_MODULES']
