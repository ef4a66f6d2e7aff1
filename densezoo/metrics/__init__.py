"""Evaluation metrics, apart from the training engine: SR (PSNR, SSIM; NIQE without reference; LPIPS with learned
features) and segmentation (mIoU)."""
from densezoo.metrics.lpips import LPIPS
from densezoo.metrics.niqe import niqe
from densezoo.metrics.segmentation import confusion_matrix, segmentation_scores
from densezoo.metrics.sr import psnr, ssim

__all__ = ['psnr', 'ssim', 'niqe', 'LPIPS', 'confusion_matrix', 'segmentation_scores']
