"""densezoo model families; importing this package registers their models with timm."""
from densezoo.models.connect import connect
from densezoo.models.swin import ConnectedSwinTransformer, ConnectedSwinTransformerV2
from densezoo.models.swinir import SwinIR
from densezoo.models.drct import DRCT
from densezoo.models.hat import HAT
from densezoo.models.rcan import RCAN
from densezoo.models.rdn import RDN

#: timm module names of densezoo's classification families (timm keys modules by their last dotted name)
MODEL_MODULES = ('swin',)
#: timm module names of densezoo's image restoration (super-resolution) families
SR_MODEL_MODULES = ('swinir', 'drct', 'hat', 'rcan', 'rdn')

__all__ = ['connect', 'ConnectedSwinTransformer', 'ConnectedSwinTransformerV2', 'SwinIR', 'DRCT', 'HAT', 'RCAN', 'RDN',
           'MODEL_MODULES',
           'SR_MODEL_MODULES']
