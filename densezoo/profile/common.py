"""Model creation and argument parsing shared by the measuring tools."""
import ast
import importlib
import json
from typing import Dict, List, Optional, Sequence, Tuple

import timm
from torch import nn

import densezoo  # noqa: F401  (registers densezoo's models)
from densezoo.registry import check_model_names

__all__ = ['create_model_for_input', 'parse_model_kwargs', 'check_model_names', 'format_columns', 'write_json',
           'import_modules']


def import_modules(names: Optional[Sequence[str]]) -> None:
    """Import modules that register more timm models (e.g. a reference implementation to compare against)."""
    for name in names or []:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ValueError(f'--import {name}: {err}; is its folder on PYTHONPATH?') from None


def parse_model_kwargs(pairs: Optional[Sequence[str]]) -> Dict[str, object]:
    """``['k=v', ...]`` to a dict, values parsed as Python literals where possible (``depths=(2,2,2,2)``)."""
    kwargs = {}
    for pair in pairs or []:
        key, sep, value = pair.partition('=')
        if not sep or not key:
            raise ValueError(f'model kwarg {pair!r} is not of the form key=value')
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    return kwargs


def create_model_for_input(
        name: str,
        img_size: Optional[int] = None,
        **kwargs,
) -> Tuple[nn.Module, Tuple[int, int, int]]:
    """Create ``name`` (no weights) and return it with the input size (C, H, W) it takes.

    ``img_size`` overrides the pretrained cfg's size; models with a fixed input size are built for it.
    """
    cfg = timm.models.get_pretrained_cfg(name.split('.')[0])
    input_size: List[int] = list(cfg.input_size) if cfg is not None else [3, 224, 224]
    if img_size:
        input_size[1:] = [img_size, img_size]
        if cfg is not None and cfg.fixed_input_size:
            kwargs.setdefault('img_size', img_size)
    model = timm.create_model(name, pretrained=False, **kwargs)
    return model, tuple(input_size)


def format_columns(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned, a rule under the header."""
    rows = [tuple(head), *[tuple(r) for r in rows]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = []
    for i, row in enumerate(rows):
        lines.append('  '.join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            lines.append('  '.join('-' * w for w in widths))
    return '\n'.join(lines)


def write_json(payload: dict, destination: str) -> None:
    """Write ``payload`` as indented JSON to the file ``destination``, or to stdout for ``'-'``."""
    text = json.dumps(payload, indent=2)
    if destination == '-':
        print(text)
    else:
        with open(destination, 'w') as f:
            f.write(text + '\n')
