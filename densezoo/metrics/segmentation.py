"""Semantic segmentation metrics as mmseg reports them: a confusion matrix over non-ignored pixels, and mIoU,
mean class accuracy and pixel accuracy from it."""
from typing import Dict

import torch

__all__ = ['IGNORE_INDEX', 'check_labels', 'confusion_matrix', 'segmentation_scores']

IGNORE_INDEX = 255


def check_labels(target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
    """Raise ``ValueError`` when ``target`` holds values outside [0, num_classes) other than ``ignore_index``."""
    bad = (target < 0) | (target >= num_classes)
    bad &= target != ignore_index
    if bool(bad.any()):
        values = sorted(set(target[bad].unique().tolist()))[:5]
        raise ValueError(f'label values {values} are outside [0, {num_classes}) and not the ignore index '
                         f'{ignore_index}; fix the label maps or num_classes')


def confusion_matrix(prediction: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts: row = true class, column = predicted class; ignored pixels skipped."""
    check_labels(target, num_classes, ignore_index)
    keep = target != ignore_index
    index = target[keep].long() * num_classes + prediction[keep].long()
    return torch.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def segmentation_scores(matrix: torch.Tensor) -> Dict[str, float]:
    """mIoU, mean class accuracy (mAcc) and pixel accuracy (aAcc), in percent, from a confusion matrix; classes
    absent from both labels and predictions are left out of the means (as mmseg's NaN-mean)."""
    matrix = matrix.double()
    true_pos = matrix.diag()
    per_label = matrix.sum(1)
    union = per_label + matrix.sum(0) - true_pos
    present = union > 0
    iou = true_pos[present] / union[present]
    labelled = per_label > 0
    acc = true_pos[labelled] / per_label[labelled]
    total = matrix.sum()
    return dict(mIoU=100 * iou.mean().item() if present.any() else 0.,
                mAcc=100 * acc.mean().item() if labelled.any() else 0.,
                aAcc=100 * (true_pos.sum() / total).item() if total > 0 else 0.)
