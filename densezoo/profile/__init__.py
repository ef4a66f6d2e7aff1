"""Measurement helpers used by tools/flops.py and tools/latency.py."""
from densezoo.profile.memory import TensorMemoryTracker, training_step_memory

__all__ = ['TensorMemoryTracker', 'training_step_memory']
