"""One switch for densezoo's fast paths, as timm has ``TIMM_FUSED_ATTN`` for its fused attention.

``DENSEZOO_FAST_PATH=0`` in the environment (read at import) or ``densezoo.set_fast_path(False)`` runs every model on
the reference path in plain PyTorch; ``densezoo.use_fast_path()`` says which is on, and ``fast_path(enable)`` sets it
inside a ``with`` block.

Design notes: docs/sr-models.md.
"""
import contextlib
import functools
import logging
import os
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F

__all__ = ['ENV_VAR', 'use_fast_path', 'set_fast_path', 'fast_path', 'is_tracing', 'onednn_linear',
           'onednn_weight_packing', 'flash_attention_cpu']

_logger = logging.getLogger(__name__)

#: environment variable read at import: 1 (default) uses the fast paths, 0 only plain PyTorch
ENV_VAR = 'DENSEZOO_FAST_PATH'

_TRUE, _FALSE = ('1', 'true', 'yes', 'on'), ('0', 'false', 'no', 'off')


def _from_environment() -> bool:
    value = os.environ.get(ENV_VAR, '1').strip().lower()
    if value in _TRUE or not value:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f'{ENV_VAR}={value!r} is not understood; set it to 1 (fast paths, the default) or 0 '
                     f'(plain PyTorch only)')


_ENABLED = _from_environment()


_IS_EXPORTING = getattr(torch.compiler, 'is_exporting', None)  # absent from some PyTorch releases


def is_tracing() -> bool:
    """Whether a compiler or tracer is recording the model (torch.compile, torch.export, TorchScript, JIT)."""
    return bool(torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()
                or (_IS_EXPORTING is not None and _IS_EXPORTING()))


def use_fast_path() -> bool:
    """True when densezoo's fast paths are switched on and no compiler or tracer is recording the model."""
    return _ENABLED and not is_tracing()


def set_fast_path(enable: bool = True) -> None:
    """Switch densezoo's fast paths on (the default) or off (every model on plain PyTorch), process-wide."""
    global _ENABLED
    if not isinstance(enable, bool):
        raise TypeError(f'set_fast_path takes True or False, got {enable!r}')
    _ENABLED = enable


@contextlib.contextmanager
def fast_path(enable: bool) -> Iterator[None]:
    """Context manager: the fast paths on or off inside the block, the previous setting restored after it."""
    previous = _ENABLED
    set_fast_path(enable)
    try:
        yield
    finally:
        set_fast_path(previous)


def _probe(name: str, run: Callable[[], torch.Tensor], reference: Callable[[], torch.Tensor]) -> bool:
    """Run a private operator once on a small input; it is usable only if it gives the reference result."""
    try:  # in float32 whatever the caller's autocast state
        with torch.no_grad(), torch.autocast('cpu', enabled=False):
            ok = torch.allclose(run(), reference(), rtol=1e-4, atol=1e-5)
    except Exception as error:  # an operator that is missing, or has another signature in this PyTorch
        _logger.debug('%s is not usable in torch %s: %s', name, torch.__version__, error)
        return False
    if not ok:
        _logger.debug('%s gives other results than the reference in torch %s', name, torch.__version__)
    return ok


def _probe_linear(name: str, run: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> bool:
    """``_probe`` of a fused linear + GELU: ``run(x, weight, bias)`` against ``F.gelu(F.linear(x, weight, bias))``."""
    generator = torch.Generator().manual_seed(0)
    x, weight, bias = (torch.randn(shape, generator=generator) for shape in ((2, 5, 8), (6, 8), (6,)))
    return _probe(name, lambda: run(x, weight, bias), lambda: F.gelu(F.linear(x, weight, bias)))


@functools.lru_cache(maxsize=None)
def onednn_linear() -> Optional[Callable]:
    """oneDNN's linear with a fused activation (``torch.ops.mkldnn._linear_pointwise``, the kernel inductor uses
    on CPUs) if this PyTorch build has it and it passes the probe, else None."""
    op = getattr(torch.ops.mkldnn, '_linear_pointwise', None) if torch.backends.mkldnn.is_available() else None
    if op is None:
        return None
    usable = _probe_linear('mkldnn._linear_pointwise', lambda x, weight, bias: op(x, weight, bias, 'gelu', [], 'none'))
    return op if usable else None


@functools.lru_cache(maxsize=None)
def onednn_weight_packing() -> Optional[Callable]:
    """oneDNN's weight prepacking for ``onednn_linear()`` (``torch.ops.mkldnn._reorder_linear_weight``, what
    inductor's freezing does) if this PyTorch build has it and the packed weight gives the reference result, else
    None. ``op(weight, rows)`` returns the packed copy of a (out, in) weight for inputs of about ``rows`` rows."""
    linear = onednn_linear()
    op = getattr(torch.ops.mkldnn, '_reorder_linear_weight', None)
    if linear is None or op is None:
        return None
    usable = _probe_linear('mkldnn._reorder_linear_weight',
                           lambda x, weight, bias: linear(x, op(weight, 10), bias, 'gelu', [], 'none'))
    return op if usable else None


@functools.lru_cache(maxsize=None)
def flash_attention_cpu() -> Optional[Callable]:
    """PyTorch's fused CPU attention returning the log-sum-exp
    (``torch.ops.aten._scaled_dot_product_flash_attention_for_cpu``) with an additive mask, if it passes the
    probe, else None."""
    op = getattr(torch.ops.aten, '_scaled_dot_product_flash_attention_for_cpu', None)
    if op is None:
        return None
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=generator) for _ in range(3))
    bias = torch.randn(1, 3, 5, 5, generator=generator)

    def run():
        out, lse = op(q, k, v, attn_mask=bias, scale=0.5)
        scores = torch.matmul(q, k.transpose(-2, -1)) * 0.5 + bias
        return torch.cat((out.flatten(), lse.flatten() - torch.logsumexp(scores, -1).flatten()))

    def reference():
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.5)
        return torch.cat((out.flatten(), torch.zeros(2 * 3 * 5)))

    return op if _probe('aten._scaled_dot_product_flash_attention_for_cpu', run, reference) else None
