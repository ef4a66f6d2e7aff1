"""Training checkpoints: safetensors weights plus a small state file, written atomically and checked when loaded.

A checkpoint is a folder ``checkpoints/step-XXXXXXXX/`` holding ``model.safetensors`` (and ``ema.safetensors``),
the weights of the other networks a task trains (``<name>.safetensors``, e.g. a GAN's discriminator), ``state.pt``
(optimizer, scheduler, step counters, RNG states, config, the task's own state; loaded with ``weights_only=True``)
and, written last, ``manifest.json`` (the step and each file's size and sha256). It is written under a temporary
name and renamed into place, and the links ``checkpoints/last`` and ``checkpoints/best`` are replaced atomically
afterwards, so a run killed at any moment leaves a complete last checkpoint. Loading verifies every file against the
manifest first (folders of older versions, without one, load unverified). The newest ``keep`` checkpoints and
``best`` are kept.
"""
import os
import random
import re
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from densezoo.checkpoint_io import MANIFEST, CheckpointError, WeightsFileError, load_weights_file, verify_checkpoint, \
    write_manifest
from densezoo.engine.faults import TrainingError

__all__ = ['save_checkpoint', 'load_checkpoint', 'latest_checkpoint', 'checkpoint_folders', 'verify_checkpoint',
           'write_manifest', 'CheckpointError', 'MANIFEST', 'rng_state', 'set_rng_state', 'seed_everything',
           'save_weights']

_STEP_FOLDER = re.compile(r'step-(\d+)(?:-(\d+))?')


def save_weights(module: nn.Module, path: Path) -> None:
    """Write a module's state dict as safetensors (tensors copied, so tied weights save too)."""
    state = {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path), metadata={'format': 'pt'})


def seed_everything(seed: int) -> None:
    """Seed torch, numpy's global RNG (timm's mixup draws from it) and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    random.seed(seed)


def rng_state() -> Dict[str, torch.Tensor]:
    """RNG states of torch (CPU and CUDA), numpy and Python's ``random``, as tensors."""
    np_state = np.random.get_state()
    state = {
        'torch': torch.get_rng_state(),
        'numpy_keys': torch.from_numpy(np_state[1].astype(np.int64)),
        'numpy_meta': torch.tensor([np_state[2], np_state[3]], dtype=torch.int64),
        'numpy_gauss': torch.tensor([np_state[4]], dtype=torch.float64),
        'python': torch.tensor(random.getstate()[1], dtype=torch.int64),
    }
    if torch.cuda.is_available():
        state['cuda'] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: Dict[str, torch.Tensor]) -> None:
    """Restore what ``rng_state`` returned."""
    torch.set_rng_state(state['torch'])
    meta = state['numpy_meta'].tolist()
    np.random.set_state(('MT19937', state['numpy_keys'].numpy().astype(np.uint32), meta[0], meta[1],
                         float(state['numpy_gauss'][0])))
    random.setstate((3, tuple(state['python'].tolist()), None))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state['cuda']))


def _replace_link(link: Path, target_name: str) -> None:
    tmp = link.with_name(f'.{link.name}.tmp')
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target_name, tmp)
    os.replace(tmp, link)


def save_checkpoint(
        directory: Path,
        step: int,
        model: nn.Module,
        state: Dict[str, object],
        ema: Optional[nn.Module] = None,
        best: bool = False,
        keep: int = 3,
        networks: Optional[Dict[str, nn.Module]] = None,
) -> Path:
    """Write checkpoint ``step`` into ``directory`` and point ``last`` (and ``best``) at it; then remove all but the
    ``keep`` newest checkpoints and ``best``. ``networks``: other trained networks by name, written as
    ``<name>.safetensors``. Returns its folder."""
    directory.mkdir(parents=True, exist_ok=True)
    final, suffix = directory / f'step-{step:08d}', 0
    while final.exists():  # a second save at the same step (end of epoch after a step checkpoint) gets a new name
        suffix += 1
        final = directory / f'step-{step:08d}-{suffix}'
    tmp = directory / f'.{final.name}.tmp'
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_weights(model, tmp / 'model.safetensors')
    if ema is not None:
        save_weights(ema, tmp / 'ema.safetensors')
    for name, network in (networks or {}).items():
        save_weights(network, tmp / f'{name}.safetensors')
    torch.save(state, tmp / 'state.pt')
    write_manifest(tmp, step)
    for path in tmp.iterdir():  # data on disk before the rename makes it visible
        with open(path, 'rb') as f:
            os.fsync(f.fileno())
    os.rename(tmp, final)
    _replace_link(directory / 'last', final.name)
    if best:
        _replace_link(directory / 'best', final.name)
    _prune(directory, keep, step)
    return final


def _step_folders(directory: Path) -> List[Tuple[Tuple[int, int], Path]]:
    """``((step, suffix), folder)`` of the checkpoint folders in ``directory``, newest first."""
    found = []
    for path in directory.iterdir() if directory.is_dir() else ():
        match = _STEP_FOLDER.fullmatch(path.name)
        if match and path.is_dir() and not path.is_symlink():
            found.append(((int(match[1]), int(match[2] or 0)), path))
    return sorted(found, reverse=True)


def _prune(directory: Path, keep: int, step: int) -> None:
    """Remove unfinished folders and the checkpoints other than ``last``, ``best`` and the ``keep`` newest up to
    ``step`` (those of later steps were left by a run that resumed from an earlier checkpoint)."""
    kept = {os.readlink(directory / name) for name in ('last', 'best') if (directory / name).is_symlink()}
    current = [path for (at, _), path in _step_folders(directory) if at <= step]
    kept.update(path.name for path in current[:keep])
    for path in directory.iterdir():
        unfinished = path.name.startswith('.step-') and path.name.endswith('.tmp')
        if path.is_dir() and not path.is_symlink() and path.name not in kept and (
                unfinished or _STEP_FOLDER.fullmatch(path.name)):
            shutil.rmtree(path, ignore_errors=True)


def latest_checkpoint(directory: Path) -> Optional[Path]:
    """The folder ``last`` points to, or None when the run has no complete checkpoint yet."""
    last = directory / 'last'
    return last.resolve() if last.is_symlink() and (last / 'state.pt').is_file() else None


def checkpoint_folders(directory: Path) -> List[Path]:
    """The checkpoint folders to resume from, in the order to try them: ``last``, then the others newest first."""
    last = directory / 'last'
    first = [last.resolve()] if last.is_symlink() and last.is_dir() else []
    return first + [path.resolve() for _, path in _step_folders(directory) if path.resolve() not in first]


def _read(folder: Path, name: str):
    try:
        return load_weights_file(folder / name)
    except WeightsFileError as err:
        raise CheckpointError(f'{name} {err.problem}') from err


def _misfit(model: nn.Module, weights: Dict[str, torch.Tensor]) -> Optional[str]:
    """How ``weights`` do not fit ``model`` (tensors of other shapes, missing or unexpected), or None."""
    own = model.state_dict()
    shapes = [key for key in own if key in weights and own[key].shape != weights[key].shape]
    missing = [key for key in own if key not in weights]
    unexpected = [key for key in weights if key not in own]
    parts = []
    if shapes:
        key = shapes[0]
        parts.append(f'{len(shapes)} tensors differ in shape (first: {key}, {list(weights[key].shape)} in the '
                     f'checkpoint, {list(own[key].shape)} in the model)')
    for found, what in ((missing, 'missing from the checkpoint'), (unexpected, 'unknown to the model')):
        if found:
            parts.append(f'{len(found)} tensors {what} (first: {found[0]})')
    return '; '.join(parts) or None


def load_checkpoint(folder: Path, model: nn.Module, ema: Optional[nn.Module] = None,
                    networks: Optional[Dict[str, nn.Module]] = None) -> Dict[str, object]:
    """Load weights into ``model`` (``ema`` and the other ``networks`` by name) and return the saved state. Every
    file is verified against the manifest and read before any is used; raises ``CheckpointError`` for a missing,
    damaged or unsafe file, and ``TrainingError`` for weights of another model (a resumed run whose model options
    were changed)."""
    verify_checkpoint(folder)
    weights = _read(folder, 'model.safetensors')
    ema_weights = _read(folder, 'ema.safetensors') if ema is not None and (folder / 'ema.safetensors').is_file() \
        else None
    others = {}
    for name in networks or {}:
        if not (folder / f'{name}.safetensors').is_file():
            raise CheckpointError(f'{name}.safetensors is missing (the weights of the {name})')
        others[name] = _read(folder, f'{name}.safetensors')
    state = _read(folder, 'state.pt')
    if not isinstance(state, dict) or 'global_step' not in state:
        raise CheckpointError('state.pt holds no training state')
    for name, module, found in [('model', model, weights)] + [(n, networks[n], w) for n, w in others.items()]:
        misfit = _misfit(module, found)
        if misfit:
            raise TrainingError(f'{folder.parent.name}/{folder.name} does not fit the {name}: {misfit}; resume with '
                                f'the {name} options the run was trained with (its config.yaml)')
    model.load_state_dict(weights)
    if ema_weights is not None:
        ema.load_state_dict(ema_weights)
    for name, found in others.items():
        networks[name].load_state_dict(found)
    return state
