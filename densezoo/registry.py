"""densezoo's models in timm's registry: listing and checking names, and the model table of the README."""
import difflib
from typing import List, NamedTuple, Sequence

import timm
import torch

__all__ = ['list_models', 'check_model_names', 'ModelRow', 'model_rows', 'model_table']


def list_models(pattern: str = '') -> List[str]:
    """Names of the models densezoo registers with timm (optionally filtered by a wildcard pattern)."""
    from densezoo.models import MODEL_MODULES
    names = set()
    for module in MODEL_MODULES:
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


def model_rows(pattern: str = '') -> List[ModelRow]:
    """One row per registered model: family, connection and exact parameter count (counted on the meta device)."""
    from densezoo.models.connect import model_family
    rows = []
    for name in list_models(pattern):
        with torch.device('meta'):
            model = timm.create_model(name, device='meta')
        rows.append(ModelRow(name, model_family(model), model.connection_kind,
                             sum(p.numel() for p in model.parameters())))
    return rows


def model_table(pattern: str = '') -> str:
    """The markdown model table of the README."""
    lines = ['| model | family | connection | params |', '|---|---|---|---:|']
    for row in model_rows(pattern):
        lines.append(f'| `{row.name}` | {row.family} | {row.connection} | {row.params:,} |')
    return '\n'.join(lines)
