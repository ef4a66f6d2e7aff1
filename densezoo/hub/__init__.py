"""Weights in and out: recognise and load SR checkpoints of the official releases and of densezoo runs, and
export densezoo models (official layouts, timm folders, ONNX, ``torch.export`` programs)."""
from densezoo.hub.runs import LoadError, RunWeights, find_weights, run_model

__all__ = ['LoadError', 'RunWeights', 'find_weights', 'run_model']
