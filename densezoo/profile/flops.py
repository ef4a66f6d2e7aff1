"""Multiply-adds (MACs), parameters and activations of a model, from two independent FLOP counters.

fvcore and ``torch.utils.flop_counter.FlopCounterMode`` both miss work that the models here do (fused attention,
the in-place ``addmm_``, the connections' weighted sums); importing this module fixes that, so the two counts agree.
Entry points: ``count``, ``FlopReport``, ``format_table``, ``attention_macs``.

Details: docs/measuring.md.
"""
import contextlib
import math
import warnings
from dataclasses import asdict, dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
import torch.utils.flop_counter as flop_counter
from torch import nn

from densezoo.layers.connections import StageConnection

with warnings.catch_warnings():
    # fvcore's focal loss calls torch.jit.script at import time, which torch deprecates with a FutureWarning
    warnings.simplefilter('ignore', FutureWarning)
    from fvcore.nn import ActivationCountAnalysis, FlopCountAnalysis
    from fvcore.nn.jit_handles import get_shape

__all__ = ['FlopReport', 'count', 'format_table', 'attention_macs']

aten = torch.ops.aten


def attention_macs(q_shape: Sequence[int], k_shape: Sequence[int], v_shape: Sequence[int]) -> int:
    """Multiply-adds of softmax(q k^T) v: each query row meets every key in q k^T (D) and in the product with v (Dv).

    Shapes are (..., L, D); leading dimensions are the query's (grouped-query key/value heads are broadcast).
    """
    return math.prod(q_shape[:-1]) * k_shape[-2] * (q_shape[-1] + v_shape[-1])


def _matmul_macs(a_shape: Sequence[int], b_shape: Sequence[int]) -> int:
    return a_shape[0] * a_shape[1] * b_shape[1]


def _register_torch_formulas() -> None:
    # FlopCounterMode formulas return FLOPs; torch's own formula wins where it has one, and importing this module
    # again (importlib.reload) registers nothing twice
    def sdpa_flops(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
        return 2 * attention_macs(q_shape, k_shape, v_shape)

    def addmm_flops(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
        return 2 * _matmul_macs(a_shape, b_shape)

    # on the CPU, SDPA runs this kernel or the math path (bmm, counted anyway)
    for op, formula in ((aten._scaled_dot_product_flash_attention_for_cpu, sdpa_flops), (aten.addmm_, addmm_flops)):
        if op not in flop_counter.flop_registry:
            flop_counter.register_flop_formula(op)(formula)


_register_torch_formulas()


def _fvcore_sdpa_macs(inputs, outputs) -> int:
    return attention_macs(*(get_shape(t) for t in inputs[:3]))


def _fvcore_addmm_macs(inputs, outputs) -> int:
    return _matmul_macs(get_shape(inputs[1]), get_shape(inputs[2]))


def _fvcore_sdpa_activations(inputs, outputs) -> int:
    # what the unfused attention makes (scores and output), so the count does not depend on the kernel
    q_shape, k_shape, v_shape = (get_shape(t) for t in inputs[:3])
    return math.prod(q_shape[:-1]) * (k_shape[-2] + v_shape[-1])


_FLOP_HANDLES = ('aten::scaled_dot_product_attention', _fvcore_sdpa_macs, 'aten::addmm_', _fvcore_addmm_macs)
_ACTIVATION_HANDLES = ('aten::scaled_dot_product_attention', _fvcore_sdpa_activations)


@contextlib.contextmanager
def _mixing_macs(model: nn.Module) -> Iterator[List[int]]:
    """Collect ``mixing_macs`` of every ``StageConnection`` call made in the block into the yielded list."""
    calls: List[int] = []

    def hook(module: StageConnection, args, output) -> None:
        calls.append(module.mixing_macs(args[0].numel()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, StageConnection)]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def _quiet(analysis):
    # unsupported elementwise ops and never-called modules (drop path, dropout) are expected, not news
    return analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)


@dataclass
class FlopReport:
    """Counts for one forward pass of one model (multiply-adds, not FLOPs; ``flops`` is twice fvcore's MACs)."""
    name: str
    input_size: Tuple[int, int, int]
    batch_size: int
    params: int
    macs_fvcore: int
    macs_torch: int
    mixing_macs: int
    activations: Optional[int] = None

    @property
    def agreement(self) -> float:
        """Relative difference of the two counts, |fvcore - torch| / fvcore (0 when they agree exactly)."""
        return abs(self.macs_fvcore - self.macs_torch) / max(self.macs_fvcore, 1)

    @property
    def flops(self) -> int:
        return 2 * self.macs_fvcore

    def as_dict(self) -> dict:
        return dict(asdict(self), agreement=self.agreement, flops=self.flops)


def count(
        model: nn.Module,
        input_size: Tuple[int, int, int] = (3, 224, 224),
        batch_size: int = 1,
        activations: bool = True,
        name: Optional[str] = None,
) -> FlopReport:
    """Count one forward pass of ``model`` on a random batch with both counters (eval mode, no gradients).

    The model's train/eval mode is restored afterwards. ``activations`` (fvcore's count of the outputs of
    convolutions, matrix products and attention) needs a second trace; turn it off to save the time.
    """
    if batch_size < 1:
        raise ValueError(f'batch_size={batch_size} is not allowed; it must be a positive integer')
    param = next(model.parameters(), None)
    x = torch.randn(batch_size, *input_size, device=param.device if param is not None else None)
    name = name or getattr(model, 'pretrained_cfg', {}).get('architecture') or type(model).__name__
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            with _mixing_macs(model) as calls:
                macs_fvcore = _quiet(FlopCountAnalysis(model, x).set_op_handle(*_FLOP_HANDLES)).total()
            macs_fvcore += sum(calls)
            with _mixing_macs(model) as calls, flop_counter.FlopCounterMode(display=False) as counter:
                model(x)
            mixing = sum(calls)
            macs_torch = counter.get_total_flops() // 2 + mixing
            acts = None
            if activations:
                acts = _quiet(ActivationCountAnalysis(model, x).set_op_handle(*_ACTIVATION_HANDLES)).total()
    finally:
        model.train(training)
    return FlopReport(
        name=name, input_size=tuple(input_size), batch_size=batch_size,
        params=sum(p.numel() for p in model.parameters()), macs_fvcore=int(macs_fvcore), macs_torch=int(macs_torch),
        mixing_macs=mixing, activations=None if acts is None else int(acts))


def format_table(reports: Sequence[FlopReport]) -> str:
    """Markdown table (model | params | GMACs | activations (M)) for README and docs; MACs are fvcore's."""
    lines = ['| model | params | GMACs | activations (M) |', '|---|---:|---:|---:|']
    for r in reports:
        acts = '-' if r.activations is None else f'{r.activations / 1e6:.1f}'
        lines.append(f'| `{r.name}` | {r.params:,} | {r.macs_fvcore / 1e9:.2f} | {acts} |')
    return '\n'.join(lines)
