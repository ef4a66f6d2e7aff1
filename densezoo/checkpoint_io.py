"""Reading weights files safely: tensors only (``weights_only=True``), and a damaged or unsafe file is a one-line
``WeightsFileError`` that names it.

``.safetensors`` files are read with safetensors, anything else (``.pth``, ``.pt``, ``.bin``) with
``torch.load(weights_only=True)``, which never runs pickled code, whatever ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says.
A training checkpoint folder lists its files with their sizes and sha256 in ``manifest.json`` (``write_manifest``);
``verify_checkpoint`` checks them (``CheckpointError``) before training resumes from it or evaluation reads it.
"""
import argparse
import hashlib
import json
import logging
import pickle
import re
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Union

import torch
from safetensors import safe_open
from safetensors.torch import load_file

__all__ = ['WeightsFileError', 'load_weights_file', 'check_weights_file', 'CheckpointError', 'MANIFEST',
           'write_manifest', 'verify_checkpoint']

PathLike = Union[str, Path]
MANIFEST = 'manifest.json'  # a checkpoint folder's list of its files, their sizes and sha256
_logger = logging.getLogger(__name__)
SAFE_GLOBALS = [argparse.Namespace]  # timm's training checkpoints hold their arguments (plain values) as one


class WeightsFileError(ValueError):
    """A weights file that is missing, damaged or holds more than tensors; ``problem`` is the message without the
    file's name and the advice (e.g. 'is damaged or not a checkpoint (zero bytes)')."""

    def __init__(self, path: PathLike, problem: str, advice: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f'weights file {str(path)!r} {problem}; {advice}')


def _first_line(text: str, limit: int = 160) -> str:
    line = next((line.strip() for line in text.splitlines() if line.strip()), '')
    line = line.split('. ')[0].rstrip('.')
    return line if len(line) <= limit else line[:limit - 3] + '...'


def _zipped(path: Path) -> bool:
    """Whether ``path`` starts as a zip archive (the format of ``torch.save``)."""
    with open(path, 'rb') as f:
        return f.read(4) == b'PK\x03\x04'


def _error(path: Path, err: Exception) -> WeightsFileError:
    """The one-line error for what reading ``path`` raised."""
    text = str(err)
    if isinstance(err, pickle.UnpicklingError) and 'WeightsUnpickler error:' in text:
        detail = text.split('WeightsUnpickler error:', 1)[1]
        found = re.search(r'GLOBAL (\S+)', detail) or re.search(r'but got (.+?)\s*$', _first_line(detail, 1000))
        if found:
            return WeightsFileError(path, f'holds pickled code or objects that are not tensors ({found.group(1)})',
                                    'densezoo loads only tensors')
        reason = f'not a PyTorch file: {_first_line(detail)}'
    elif path.stat().st_size == 0:
        reason = 'zero bytes'
    elif isinstance(err, EOFError):
        reason = 'truncated: the data ends early'
    elif _zipped(path) and not zipfile.is_zipfile(path):
        reason = 'truncated: the zip archive misses its central directory'
    elif type(err).__name__ == 'SafetensorError':
        reason = f'safetensors: {_first_line(text.replace("Error while deserializing header: ", ""))}'
    else:
        reason = _first_line(text) or type(err).__name__
    return WeightsFileError(path, f'is damaged or not a checkpoint ({reason})', 'download or write it again')


@contextmanager
def _reading(path: PathLike):
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(path, 'does not exist', 'check the path')
    try:
        yield path
    except PermissionError:
        raise WeightsFileError(path, 'cannot be read (permission denied)', 'check its permissions') from None
    except Exception as err:  # whatever a parser raises on bytes it cannot read
        raise _error(path, err) from err


def load_weights_file(path: PathLike, map_location: Union[str, torch.device] = 'cpu') -> Any:
    """What a ``.safetensors`` file or a pickled file (read with ``weights_only=True``) holds."""
    with _reading(path) as path:
        if path.suffix == '.safetensors':
            return load_file(str(path), device=str(map_location))
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)


def check_weights_file(path: PathLike) -> None:
    """Raise ``WeightsFileError`` unless ``path`` is a readable weights file holding only tensors. Reads the
    safetensors header, or the pickle with lazily mapped storages (zip files), not every tensor."""
    with _reading(path) as path:
        if path.suffix == '.safetensors':
            with safe_open(str(path), framework='pt'):
                return
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            torch.load(path, map_location='cpu', weights_only=True, mmap=_zipped(path))


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be used: a file missing, damaged or holding more than tensors; the message
    names the file (relative to the folder) and why."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(2 ** 20), b''):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path, step: int) -> Path:
    """Write ``manifest.json`` into ``folder``: ``step`` and the size and sha256 of each other file."""
    files = {path.name: dict(size=path.stat().st_size, sha256=_sha256(path))
             for path in sorted(folder.iterdir()) if path.name != MANIFEST}
    path = folder / MANIFEST
    path.write_text(json.dumps(dict(step=step, files=files), indent=1) + '\n')
    return path


def verify_checkpoint(folder: Path) -> None:
    """Check every file of checkpoint ``folder`` against its manifest; raises ``CheckpointError`` naming the first
    that is missing or differs. A folder without a manifest (written by an older version) passes unchecked."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        _logger.debug(f'{folder} has no {MANIFEST} (written by an older densezoo); its files are not verified')
        return
    try:
        files = [(name, int(entry['size']), str(entry['sha256']))
                 for name, entry in json.loads(manifest.read_text())['files'].items()]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f'{MANIFEST} is damaged ({type(err).__name__}: {err})') from None
    for name, size, sha256 in files:
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f'{name} is missing')
        actual = path.stat().st_size
        if actual != size:
            raise CheckpointError(f'{name} has {actual} bytes but had {size} when written (file truncated or '
                                  f'damaged)')
        if _sha256(path) != sha256:
            raise CheckpointError(f'{name} does not match its checksum (file damaged)')
