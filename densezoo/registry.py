"""densezoo's models in timm's registry: listing and checking names, and the model table of the README."""
import difflib
from typing import List, NamedTuple, Optional, Sequence

import timm
import torch

__all__ = ['list_models', 'check_model_names', 'ModelRow', 'model_rows', 'model_table']


TASKS = ('classification', 'sr')


def list_models(pattern: str = '', task: Optional[str] = None) -> List[str]:
    """Names of the models densezoo registers with timm.

    Args:
        pattern: Wildcard filter (``'*_dwa'``).
        task: ``'classification'`` (backbones with a classifier), ``'sr'`` (image restoration), or None for all.
    """
    from densezoo.models import MODEL_MODULES, SR_MODEL_MODULES
    if task not in (None, *TASKS):
        raise ValueError(f'task={task!r} is not known; choose one of {", ".join(TASKS)} or None')
    modules = {'classification': MODEL_MODULES, 'sr': SR_MODEL_MODULES}.get(task, MODEL_MODULES + SR_MODEL_MODULES)
    names = set()
    for module in modules:
        names.update(timm.list_models(pattern or '*', module=module))
    return sorted(names)


def check_model_names(names: Sequence[str]) -> None:
    """Raise ``ValueError`` naming the first unknown model and its closest registered names."""
    known = timm.list_models()
    for name in names:
        if not timm.models.is_model(name.split('.')[0]):
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
            hint = f'; did you mean {", ".join(close)}?' if close else '; see timm.list_models() for the names'
            raise ValueError(f'unknown model {name!r}{hint}')


class ModelRow(NamedTuple):
    name: str
    family: str
    connection: str
    params: int


def model_rows(pattern: str = '', task: Optional[str] = None) -> List[ModelRow]:
    """One row per registered model: family, connection and exact parameter count (counted on the meta device).

    A plain backbone's connection is ``residual``; a plain SR model's is its own (``built-in``: SwinIR's residual
    groups, DRCT's dense groups, ...).
    """
    restoration = set(list_models(pattern, 'sr'))
    rows = []
    for name in list_models(pattern, task):
        with torch.device('meta'):
            model = timm.create_model(name, device='meta')
        plain = 'built-in' if name in restoration else 'residual'
        rows.append(ModelRow(name, _family(model), getattr(model, 'connection_kind', plain),
                             sum(p.numel() for p in model.parameters())))
    return rows


def _family(model) -> str:
    from densezoo.models.connect import model_family
    try:
        return model_family(model)
    except ValueError:  # a family densezoo.connect does not rewire
        return type(model).__name__.removeprefix('Connected')


def model_table(pattern: str = '', task: Optional[str] = None) -> str:
    """The markdown model table of the README."""
    lines = ['| model | family | connection | params |', '|---|---|---|---:|']
    for row in model_rows(pattern, task):
        lines.append(f'| `{row.name}` | {row.family} | {row.connection} | {row.params:,} |')
    return '\n'.join(lines)
