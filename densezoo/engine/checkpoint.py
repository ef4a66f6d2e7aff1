"""Training checkpoints: safetensors weights plus a small state file, written atomically.

A checkpoint is a folder ``checkpoints/step-XXXXXXXX/`` holding ``model.safetensors`` (and ``ema.safetensors``)
and ``state.pt`` (optimizer, scheduler, step counters, RNG states, config; loadable with ``weights_only=True``).
It is written under a temporary name and renamed into place, and the links ``checkpoints/last`` and
``checkpoints/best`` are replaced atomically afterwards, so a run killed at any moment leaves a complete last
checkpoint. Only the folders that ``last`` and ``best`` point to are kept.
"""
import os
import random
import shutil
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ['save_checkpoint', 'load_checkpoint', 'latest_checkpoint', 'rng_state', 'set_rng_state',
           'seed_everything', 'save_weights']


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
) -> Path:
    """Write checkpoint ``step`` into ``directory`` and point ``last`` (and ``best``) at it; returns its folder."""
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
    torch.save(state, tmp / 'state.pt')
    for path in tmp.iterdir():  # data on disk before the rename makes it visible
        with open(path, 'rb') as f:
            os.fsync(f.fileno())
    os.rename(tmp, final)
    _replace_link(directory / 'last', final.name)
    if best:
        _replace_link(directory / 'best', final.name)
    _prune(directory)
    return final


def _prune(directory: Path) -> None:
    keep = {os.readlink(directory / name) for name in ('last', 'best') if (directory / name).is_symlink()}
    for path in directory.iterdir():
        if path.is_dir() and not path.is_symlink() and path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)


def latest_checkpoint(directory: Path) -> Optional[Path]:
    """The folder ``last`` points to, or None when the run has no complete checkpoint yet."""
    last = directory / 'last'
    return last.resolve() if last.is_symlink() and (last / 'state.pt').is_file() else None


def load_checkpoint(folder: Path, model: nn.Module, ema: Optional[nn.Module] = None) -> Dict[str, object]:
    """Load weights into ``model`` (and ``ema``) and return the saved state."""
    model.load_state_dict(load_file(str(folder / 'model.safetensors')))
    if ema is not None and (folder / 'ema.safetensors').is_file():
        ema.load_state_dict(load_file(str(folder / 'ema.safetensors')))
    return torch.load(folder / 'state.pt', map_location='cpu', weights_only=True)
