"""Peak tensor memory on any device, CPU included.

``torch.cuda.max_memory_allocated`` exists only on CUDA; ``TensorMemoryTracker`` counts the bytes of tensor storages
that operators create while it is active and frees them when the storage dies, so its peak is the peak of memory
held by tensors made inside the block (activations, saved tensors, gradients, temporaries) on every device.
"""
import weakref
from typing import Callable, Dict, Optional

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ['TensorMemoryTracker', 'training_step_memory']


def _storage(tensor):
    """The storage of a tensor that has one (not meta, not an opaque oneDNN tensor), else None."""
    if not isinstance(tensor, torch.Tensor) or tensor.device.type == 'meta' or tensor.is_mkldnn:
        return None
    try:
        return tensor.untyped_storage()
    except (NotImplementedError, RuntimeError):
        return None


class TensorMemoryTracker(TorchDispatchMode):
    """Context manager tracking live and peak bytes of the tensor storages created inside it.

    Storages that existed before entering (weights, inputs) are not counted. Every operator runs through Python,
    so use it for measuring memory, not time.
    """

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._tracked: Dict[int, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # outputs sharing an input's storage (views, in-place results) allocate nothing
        inputs = {storage.data_ptr() for storage in map(_storage, tree_flatten((args, kwargs))[0])
                  if storage is not None}
        for storage in map(_storage, tree_flatten(out)[0]):
            if storage is not None and storage.data_ptr() not in inputs:
                self._track(storage)
        return out

    def _track(self, storage) -> None:
        key, size = storage.data_ptr(), storage.nbytes()
        if not size or key in self._tracked:
            return
        self._tracked[key] = size
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._release, key)

    def _release(self, key: int) -> None:
        self.live -= self._tracked.pop(key, 0)


def training_step_memory(
        model: nn.Module,
        inputs: torch.Tensor,
        loss_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> Dict[str, int]:
    """Peak bytes of one forward + backward pass of ``model`` on ``inputs``.

    Returns ``peak_step`` (tensors created by the step: activations, gradients, temporaries),
    ``weights`` (parameters and buffers) and ``peak`` (their sum plus the input, comparable to CUDA's
    ``max_memory_allocated`` for the step).
    """
    loss_fn = loss_fn or (lambda out: out.float().square().mean())
    model.zero_grad(set_to_none=True)
    with TensorMemoryTracker() as tracker:
        loss_fn(model(inputs)).backward()
    model.zero_grad(set_to_none=True)
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    input_bytes = inputs.numel() * inputs.element_size()
    return dict(peak_step=tracker.peak, weights=weights, peak=tracker.peak + weights + input_bytes)
