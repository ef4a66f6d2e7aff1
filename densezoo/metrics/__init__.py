"""Evaluation metrics, apart from the training engine: SR (PSNR, SSIM) and segmentation (mIoU)."""
from densezoo.metrics.segmentation import confusion_matrix, segmentation_scores
from densezoo.metrics.sr import psnr, ssim

__all__ = ['psnr', 'ssim', 'confusion_matrix', 'segmentation_scores']
