"""What stops a run: the training errors, and the faults a cluster job meets (a signal, a full or read-only disk).

``TrainingError`` is a run that cannot go on; ``NonFiniteLossError`` a loss that became NaN; ``Interrupted`` a run
stopped by SIGTERM or SIGINT at a step boundary; ``OutputError`` a run folder that cannot be written. ``write_errno``
tells a write that failed on a full or read-only disk from other errors, ``disk_errno`` looks at the disk itself,
and ``resume_command`` is the command that continues a run. The fault model: docs/reliability.md.
"""
import errno
import os
import re
import shlex
from pathlib import Path
from typing import Optional

__all__ = ['TrainingError', 'NonFiniteLossError', 'Interrupted', 'OutputError', 'resume_command', 'disk_errno',
           'write_errno', 'NO_SPACE']


class TrainingError(RuntimeError):
    """A run that cannot go on; the message says why and what to change."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class Interrupted(TrainingError):
    """SIGTERM or SIGINT stopped the run at a step boundary; ``--resume`` continues from ``checkpoint`` (None when
    stopped before training began). The main process has printed the message already."""

    def __init__(self, message: str, signal_name: str, step: int, checkpoint: Optional[Path]):
        super().__init__(message)
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint


def resume_command(run_dir: Path, world_size: int = 1) -> str:
    """The command that continues the run in ``run_dir``."""
    launcher = f'torchrun --nproc_per_node {world_size}' if world_size > 1 else 'python'
    return f'{launcher} tools/train.py --resume {shlex.quote(str(run_dir))}'


class OutputError(TrainingError):
    """The run folder cannot be written: full disk, read-only file system or no permission."""


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def _existing(folder: Path) -> Path:
    """``folder`` or its nearest ancestor that exists."""
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return folder


def disk_errno(folder: Path, space: bool = True) -> Optional[int]:
    """EROFS, ENOSPC (with ``space``: under 1 MiB free) or EACCES when the disk of ``folder`` is read-only, full or
    not writable for this process, else None."""
    folder = _existing(folder)
    try:
        stats = os.statvfs(folder)
    except (AttributeError, OSError):  # no statvfs (Windows) or the folder vanished
        return None
    if stats.f_flag & os.ST_RDONLY:
        return errno.EROFS
    if space and stats.f_bavail * stats.f_frsize < 2 ** 20:
        return errno.ENOSPC
    return None if os.access(folder, os.W_OK | os.X_OK) else errno.EACCES


def write_errno(err: BaseException, folder: Path) -> Optional[int]:
    """The errno of a write into ``folder`` that failed because the disk is full or not writable, else None."""
    code = err.errno if isinstance(err, OSError) else None
    if code is None:  # safetensors: "I/O error: No space left on device (os error 28)"
        found = re.search(r'os error (\d+)', str(err))
        code = int(found.group(1)) if found else None
    if code is None:  # torch.save says only "unexpected pos" or "file write failed": look at the disk itself
        code = disk_errno(folder)
    return code if code in NO_SPACE + NOT_WRITABLE else None
