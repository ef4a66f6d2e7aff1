"""densezoo: vision models on timm conventions, compared by how their blocks are connected.

Importing densezoo registers every densezoo model with timm, so ``timm.create_model('<name>')`` works.
"""
from densezoo.layers.connections import CONNECTION_KINDS, connection_options
from densezoo.models import *  # noqa: F401,F403  (registers the models)
from densezoo.models.connect import connect, connection_parameters
from densezoo.version import __version__

__all__ = ['connect', 'connection_options', 'connection_parameters', 'CONNECTION_KINDS', 'list_models',
           '__version__']


def list_models(pattern: str = '') -> list:
    """Names of the models densezoo registers with timm (optionally filtered by a wildcard pattern)."""
    import timm
    from densezoo.models import MODEL_MODULES
    names = set()
    for module in MODEL_MODULES:
        names.update(timm.list_models(pattern or '*', module=module))
    return sorted(names)
