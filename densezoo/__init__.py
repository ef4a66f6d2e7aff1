"""densezoo: vision models on timm conventions, compared by how their blocks are connected.

Importing densezoo registers every densezoo model with timm, so ``timm.create_model('<name>')`` works.
"""
from densezoo.layers.connections import CONNECTION_KINDS, connection_options
from densezoo.layers.fast_path import fast_path, set_fast_path, use_fast_path
from densezoo.models import *  # noqa: F401,F403  (registers the models)
from densezoo.models.connect import connect, connection_parameters
from densezoo.models.inspection import inspect_connections, plot_connections, plot_moves
from densezoo.registry import list_models, model_table
from densezoo.heads.segmentor import Segmentor, create_segmentor
from densezoo.hub.detect import DetectedSR, detect_sr
from densezoo.hub.load import load_sr
from densezoo.version import __version__

__all__ = ['connect', 'connection_options', 'connection_parameters', 'inspect_connections', 'plot_connections',
           'plot_moves', 'CONNECTION_KINDS', 'list_models',
           'model_table', 'create_segmentor', 'Segmentor', 'use_fast_path', 'set_fast_path', 'fast_path',
           'load_sr', 'detect_sr', 'DetectedSR', 'upscale', '__version__']


def upscale(*args, **kwargs):
    """Upscale image files, folders, globs or an array with an SR model (``densezoo.tasks.upscale.upscale``; its
    image and training-side modules load on first use)."""
    from densezoo.tasks.upscale import upscale as run
    return run(*args, **kwargs)

