"""Latency, throughput and peak memory of several models, measured side by side in one run.

Models are timed in interleaved rounds (one iteration of each model per round), so slow drifts of the machine
(frequency, other processes) hit every model alike and the ratios stay fair. On CUDA the time of each iteration
comes from CUDA events; on the CPU from ``time.perf_counter``.
"""
import contextlib
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from densezoo.profile.memory import TensorMemoryTracker, training_step_memory

__all__ = ['LatencyResult', 'measure_latency', 'peak_memory', 'percentile']

AMP_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class LatencyResult:
    """Timing and memory of one model at one batch size (times in milliseconds, memory in bytes)."""
    name: str
    batch_size: int
    mode: str
    params: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float
    peak_memory: Optional[int] = None
    speed_ratio: float = 1.0
    memory_ratio: Optional[float] = None
    page_faults: Optional[float] = None
    times_ms: List[float] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict:
        out = asdict(self)
        out.pop('times_ms')
        return out


def _autocast(device: torch.device, amp: Optional[str]):
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def _step_fn(model: nn.Module, x: torch.Tensor, train: bool, device: torch.device, amp: Optional[str]):
    if train:
        def step():
            with _autocast(device, amp):
                loss = model(x).float().square().mean()
            loss.backward()
            model.zero_grad(set_to_none=True)
    else:
        def step():
            with torch.inference_mode(), _autocast(device, amp):
                model(x)
    return step


def _minor_faults() -> Optional[int]:
    try:
        import resource
    except ImportError:  # not on this platform
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class _Timer:
    """Times one call; on the CPU also counts the minor page faults it caused (allocator churn)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == 'cuda'
        self.faults: List[int] = []

    def time(self, fn) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        faults = _minor_faults()
        start = time.perf_counter()
        fn()
        elapsed = (time.perf_counter() - start) * 1e3
        if faults is not None:
            self.faults.append(_minor_faults() - faults)
        return elapsed


def peak_memory(model: nn.Module, x: torch.Tensor, train: bool, amp: Optional[str] = None) -> int:
    """Peak bytes of one step (weights, input and every tensor the step creates)."""
    device = x.device
    if device.type == 'cuda':
        step = _step_fn(model, x, train, device, amp)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    if train:
        with _autocast(device, amp):
            return training_step_memory(model, x)['peak']
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    with torch.inference_mode(), _autocast(device, amp), TensorMemoryTracker() as tracker:
        model(x)
    return tracker.peak + weights + x.numel() * x.element_size()


def measure_latency(
        models: Dict[str, nn.Module],
        inputs: Dict[str, torch.Tensor],
        warmup: int = 5,
        iters: int = 20,
        train: bool = False,
        amp: Optional[str] = None,
        memory: bool = True,
        progress=None,
) -> List[LatencyResult]:
    """Time ``models`` (already on their device) on their ``inputs`` in interleaved rounds.

    Returns one result per model, in order, with speed ratios (first model's p50 / this p50, above 1 is faster)
    and memory ratios (this peak / first peak) against the first model.
    """
    device = next(iter(inputs.values())).device
    timers = {name: _Timer(device) for name in models}
    steps = {}
    for name, model in models.items():
        model.train(train)
        steps[name] = _step_fn(model, inputs[name], train, device, amp)
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {name: [] for name in models}
    for _ in range(iters):
        for name, step in steps.items():
            times[name].append(timers[name].time(step))
        if progress is not None:
            progress.update(1)

    results = []
    for name, model in models.items():
        t = times[name]
        batch = inputs[name].shape[0]
        results.append(LatencyResult(
            name=name, batch_size=batch, mode='train' if train else 'infer',
            params=sum(p.numel() for p in model.parameters()),
            p50_ms=percentile(t, 50), p90_ms=percentile(t, 90), p99_ms=percentile(t, 99),
            mean_ms=statistics.fmean(t), throughput=batch / percentile(t, 50) * 1e3,
            peak_memory=peak_memory(model, inputs[name], train, amp) if memory else None,
            page_faults=percentile(timers[name].faults, 50) if timers[name].faults else None,
            times_ms=t,
        ))
    first = results[0]
    for result in results:
        result.speed_ratio = first.p50_ms / result.p50_ms
        if memory:
            result.memory_ratio = result.peak_memory / first.peak_memory
    return results
