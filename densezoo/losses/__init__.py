"""Training losses for GAN super-resolution (Real-ESRGAN style): the VGG19 perceptual and style loss and the
adversarial losses, with BasicSR's arguments and values."""
from densezoo.losses.gan import GAN_TYPES, GANLoss
from densezoo.losses.perceptual import (VGG19_LAYERS, PerceptualLoss, VGGFeatureExtractor, VGGWeightsError,
                                        gram_matrix)

__all__ = ['GANLoss', 'GAN_TYPES', 'PerceptualLoss', 'VGGFeatureExtractor', 'VGGWeightsError', 'VGG19_LAYERS',
           'gram_matrix']
