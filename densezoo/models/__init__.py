"""densezoo model families; importing this package registers their models with timm."""
from densezoo.models.connect import connect
from densezoo.models.swin import ConnectedSwinTransformer, ConnectedSwinTransformerV2
from densezoo.models.pvt import ConnectedPyramidVisionTransformer, PyramidVisionTransformer
from densezoo.models.pvtv2 import ConnectedPyramidVisionTransformerV2
from densezoo.models.vit import ConnectedVisionTransformer
from densezoo.models.rdnets import ConnectedRDNet
from densezoo.models.lookupvit import ConnectedLookupViT, LookupViT
from densezoo.models.swinir import ConnectedSwinIR, SwinIR
from densezoo.models.drct import ConnectedDRCT, DRCT
from densezoo.models.hat import ConnectedHAT, HAT
from densezoo.models.rcan import RCAN
from densezoo.models.rdn import RDN

#: timm module names of densezoo's classification families (timm keys modules by their last dotted name)
MODEL_MODULES = ('swin', 'pvt', 'pvtv2', 'vit', 'rdnets', 'lookupvit')
#: timm module names of densezoo's image restoration (super-resolution) families
SR_MODEL_MODULES = ('swinir', 'drct', 'hat', 'rcan', 'rdn')

__all__ = ['connect', 'ConnectedSwinTransformer', 'ConnectedSwinTransformerV2', 'PyramidVisionTransformer',
           'ConnectedPyramidVisionTransformer', 'ConnectedPyramidVisionTransformerV2', 'ConnectedVisionTransformer',
           'ConnectedRDNet', 'LookupViT', 'ConnectedLookupViT', 'SwinIR', 'ConnectedSwinIR', 'DRCT', 'ConnectedDRCT',
           'HAT', 'ConnectedHAT', 'RCAN', 'RDN', 'MODEL_MODULES', 'SR_MODEL_MODULES']
