"""densezoo: vision models on timm conventions, compared by how their blocks are connected.

Importing densezoo registers every densezoo model with timm, so ``timm.create_model('<name>')`` works.
"""
from densezoo.layers.connections import CONNECTION_KINDS, connection_options
from densezoo.layers.fast_path import fast_path, set_fast_path, use_fast_path
from densezoo.models import *  # noqa: F401,F403  (registers the models)
from densezoo.models.connect import connect, connection_parameters
from densezoo.registry import list_models, model_table
from densezoo.heads.segmentor import Segmentor, create_segmentor
from densezoo.version import __version__

__all__ = ['connect', 'connection_options', 'connection_parameters', 'CONNECTION_KINDS', 'list_models',
           'model_table', 'create_segmentor', 'Segmentor', 'use_fast_path', 'set_fast_path', 'fast_path',
           '__version__']

