"""densezoo training runs as weights: which file a run folder, checkpoint folder or file names, and its model.

A run folder (``runs/<name>-<time>``) holds ``config.yaml`` and ``checkpoints/{best,last,step-N}/`` with
``model.safetensors`` (and ``ema.safetensors`` when EMA is on); ``find_weights`` picks the best checkpoint (else the
last) and its EMA weights unless asked for the model's.
"""
from pathlib import Path
from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple

import timm
import torch
import yaml

from densezoo.checkpoint_io import CheckpointError, verify_checkpoint

__all__ = ['LoadError', 'RunWeights', 'classifier_rows', 'find_weights', 'run_model', 'verified', 'mismatch']


class LoadError(ValueError):
    """Weights that cannot be found, recognised or loaded; the message says which and what to do."""


class RunWeights(NamedTuple):
    path: Path  # the weights file
    densezoo: bool  # inside a densezoo checkpoint folder (it has a manifest)
    config: Optional[Dict[str, Any]]  # the run's config.yaml, when the file belongs to a run


def _run_config(folder: Path) -> Optional[Dict[str, Any]]:
    """The ``config.yaml`` of the run that holds checkpoint folder ``folder`` (run/checkpoints/step-N)."""
    path = folder.resolve().parent.parent / 'config.yaml'
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def find_weights(checkpoint, ema: bool = True) -> RunWeights:
    """The weights file a ``checkpoint`` path names (a file, a checkpoint folder or a run folder)."""
    path = Path(checkpoint)
    if not path.exists():
        raise LoadError(f'checkpoint {str(path)!r} does not exist')
    if path.is_dir():
        if (path / 'checkpoints').is_dir():  # a run folder: its best checkpoint (else the last)
            for name in ('best', 'last'):
                if (path / 'checkpoints' / name / 'model.safetensors').is_file():
                    path = (path / 'checkpoints' / name).resolve()
                    break
            else:
                raise LoadError(f'run folder {str(checkpoint)!r} holds no complete checkpoint')
        if not (path / 'model.safetensors').is_file():
            raise LoadError(f'folder {str(checkpoint)!r} is neither a training run nor a checkpoint folder '
                            f'(no model.safetensors)')
        weights = path / 'ema.safetensors' if ema and (path / 'ema.safetensors').is_file() else \
            path / 'model.safetensors'
        return RunWeights(weights, True, _run_config(path))
    if path.suffix == '.safetensors' and (path.parent / 'state.pt').is_file():  # inside a checkpoint folder
        return RunWeights(path, True, _run_config(path.parent))
    return RunWeights(path, False, None)


def verified(weights: RunWeights) -> RunWeights:
    """``weights`` after checking its checkpoint folder's manifest (a damaged folder is a ``LoadError``)."""
    if weights.densezoo:
        try:
            verify_checkpoint(weights.path.parent)
        except CheckpointError as err:
            raise LoadError(f'checkpoint folder {str(weights.path.parent)!r} is damaged: {err}; use another '
                            f'checkpoint of the run') from None
    return weights


def run_model(config: Optional[Dict[str, Any]],
              state: Optional[Mapping[str, torch.Tensor]] = None) -> Tuple[Optional[str], Dict[str, Any]]:
    """The model name and ``create_model`` arguments a run config trained (``(None, {})`` without one).

    A classification run sets ``num_classes`` from its class folders, not in its config: with the run's ``state``
    it is read from the classifier's weight (the classifier named by the model's pretrained cfg).
    """
    model = (config or {}).get('model') or {}
    name, kwargs = model.get('name'), dict(model.get('kwargs') or {})
    if name and state is not None and config.get('task') == 'classification' and 'num_classes' not in kwargs:
        with torch.device('meta'):
            built = timm.create_model(name, **kwargs)
        rows = classifier_rows((built.pretrained_cfg or {}).get('classifier'), state)
        if rows is not None:
            kwargs['num_classes'] = rows
    return name, kwargs


def classifier_rows(classifier, state: Mapping[str, Any]) -> Optional[int]:
    """The number of rows (classes) of the classifier weight in ``state``; ``classifier`` is a pretrained cfg's
    ``classifier`` (a module name or several). None when ``state`` holds none of them."""
    for head in ([classifier] if isinstance(classifier, str) else classifier or ()):
        weight = state.get(f'{head}.weight')
        if isinstance(weight, torch.Tensor):
            return weight.shape[0]
    return None


def mismatch(err: Exception) -> str:
    """The first informative line of a ``load_state_dict`` error (its first line only names the class)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return ' '.join(lines[1:2] or lines[:1]).rstrip('.')
