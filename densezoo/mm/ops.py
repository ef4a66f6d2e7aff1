"""Stand-in for ``mmcv._ext`` when mmcv has no compiled ops (the ``mmcv-lite`` wheel).

``mmcv.ops`` (imported by ``mmseg.models`` and ``mmdet.models``) loads its kernels from ``mmcv._ext``, which only a
compiled mmcv has. :func:`install_ext_fallback` puts a module in its place that computes the two ops the densezoo
configs need, ``nms`` and average-mode ``roi_align`` (forward and backward), with ``torchvision.ops``. Every other
compiled op resolves to a callable that raises a one-line error when it is called, so importing works and only a
config that really needs the op fails. A compiled mmcv always wins: the stand-in is installed only when
``import mmcv._ext`` fails.
"""
import importlib
import importlib.machinery
import sys
import types

import torch
import torchvision

__all__ = ['install_ext_fallback', 'fallback_active', 'ExtFallback']

EXT_NAME = 'mmcv._ext'
AVG_POOL_MODE = 1  # mmcv's RoIAlign passes pool_mode 0 for 'max' and 1 for 'avg'


def nms(bboxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, offset: int = 0) -> torch.Tensor:
    """Indices kept by non-maximum suppression, by decreasing score; ``offset`` 1 counts boxes in whole pixels."""
    if offset not in (0, 1):
        raise ValueError(f'nms offset must be 0 or 1, got {offset}')
    if offset:
        bboxes = bboxes.clone()
        bboxes[:, 2:4] += offset
    return torchvision.ops.nms(bboxes, scores, float(iou_threshold))


def _check_avg(pool_mode: int) -> None:
    if pool_mode != AVG_POOL_MODE:
        raise NotImplementedError(
            "roi_align with pool_mode='max' needs the compiled mmcv ops; use pool_mode='avg' or install mmcv==2.1.0 "
            'built from source instead of mmcv-lite')


def _torchvision_roi_align(input, rois, aligned_height, aligned_width, spatial_scale, sampling_ratio, aligned):
    return torchvision.ops.roi_align(input, rois, (aligned_height, aligned_width), spatial_scale=spatial_scale,
                                     sampling_ratio=sampling_ratio, aligned=aligned)


def roi_align_forward(input, rois, output, argmax_y, argmax_x, *, aligned_height, aligned_width, spatial_scale,
                      sampling_ratio, pool_mode, aligned) -> None:
    """Average-mode RoIAlign of ``input`` over ``rois`` (K, 5: batch index, x1, y1, x2, y2), written into ``output``."""
    _check_avg(pool_mode)
    output.copy_(_torchvision_roi_align(input, rois, aligned_height, aligned_width, spatial_scale, sampling_ratio,
                                        aligned))


def roi_align_backward(grad_output, rois, argmax_y, argmax_x, grad_input, *, aligned_height, aligned_width,
                       spatial_scale, sampling_ratio, pool_mode, aligned) -> None:
    """Gradient of average-mode RoIAlign with respect to its input, written into ``grad_input``.

    RoIAlign is linear in its input, so the gradient is that of torchvision's op taken at any input of the right shape.
    """
    _check_avg(pool_mode)
    with torch.enable_grad():
        probe = grad_input.new_zeros(grad_input.shape, requires_grad=True)
        pooled = _torchvision_roi_align(probe, rois, aligned_height, aligned_width, spatial_scale, sampling_ratio,
                                        aligned)
        (grad,) = torch.autograd.grad(pooled, probe, grad_output)
    grad_input.copy_(grad)


def _missing_op(name: str):
    def unavailable(*args, **kwargs):
        raise NotImplementedError(
            f'mmcv op {name!r} needs the compiled mmcv ops, which mmcv-lite lacks (densezoo provides only nms and '
            f"roi_align with pool_mode='avg'); install mmcv==2.1.0 built from source to use it")
    unavailable.__name__ = name
    return unavailable


class ExtFallback(types.ModuleType):
    """Module object standing in for ``mmcv._ext``: real ``nms`` / ``roi_align``, a raising stub for any other op."""

    def __init__(self):
        super().__init__(EXT_NAME, __doc__)
        # a real spec: importlib / pkgutil look it up for modules in sys.modules; no loader = "no compiled ops"
        self.__spec__ = importlib.machinery.ModuleSpec(EXT_NAME, None)
        self.nms = nms
        self.roi_align_forward = roi_align_forward
        self.roi_align_backward = roi_align_backward

    def __getattr__(self, name: str):
        if name.startswith('_'):  # module protocol look-ups (__path__, __file__, ...) must stay absent
            raise AttributeError(f'module {EXT_NAME!r} has no attribute {name!r}')
        return _missing_op(name)


def fallback_active() -> bool:
    """Whether ``mmcv._ext`` is densezoo's stand-in (rather than mmcv's compiled ops)."""
    return isinstance(sys.modules.get(EXT_NAME), ExtFallback)


def install_ext_fallback() -> bool:
    """Install the stand-in as ``mmcv._ext`` unless compiled ops import; True when it was installed by this call."""
    try:
        importlib.import_module(EXT_NAME)
        return False
    except ImportError:
        pass
    import mmcv
    ext = ExtFallback()
    sys.modules[EXT_NAME] = ext
    mmcv._ext = ext
    return True
