"""The kill/resume guarantee: a run killed with SIGKILL at any moment, even while a checkpoint is being written, and
resumed (several times over) ends with exactly the weights of a run that was never interrupted.

The killed runs are forked from the test process (no interpreter start-up per kill) and run the command line's
``main``. Their checkpoints of a few MB take tens of milliseconds to write: long enough to kill a run inside a write,
by watching its checkpoint folder for the write's temporary folder."""
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path
from typing import Optional

import pytest
import torch

from densezoo.cli.train import main
from densezoo.engine import config_from_dict, train
from tests.engine.conftest import assert_same_weights, logged_steps, make_dataset, tiny_config, write_config

pytestmark = pytest.mark.skipif('fork' not in multiprocessing.get_all_start_methods(),
                                reason='the killed runs are forked')


@pytest.fixture
def one_thread():
    """One intra-op thread in this process and the forked runs, so that their results match bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(argv) -> None:
    sys.exit(main(argv))


def _checkpoints(runs: Path) -> Optional[Path]:
    return next(iter(runs.glob('*/checkpoints')), None)


def _last_step(checkpoints: Optional[Path]) -> int:
    link = checkpoints / 'last' if checkpoints else None
    return int(os.readlink(link).split('-')[1]) if link and link.is_symlink() else 0


def _writing(checkpoints: Optional[Path], file: str = '') -> bool:
    """Whether a checkpoint is being written (its temporary folder exists, holding ``file`` if given)."""
    try:
        return any(entry.name.startswith('.step-') and entry.name.endswith('.tmp') and entry.is_dir()
                   and (not file or os.path.exists(os.path.join(entry.path, file)))
                   for entry in os.scandir(checkpoints))
    except (FileNotFoundError, TypeError):
        return False


def _kill(argv, runs: Path, after: int, when: str) -> bool:
    """Run ``main(argv)`` in a forked process and SIGKILL it once the last checkpoint is of step ``after`` or later:
    right away (``when='now'``), as a checkpoint write begins ('write') or once the write has reached the training
    state ('state.pt'). Returns whether the kill landed inside a write (its temporary folder is left behind)."""
    proc = multiprocessing.get_context('fork').Process(target=_run, args=(argv,))
    proc.start()
    deadline = time.monotonic() + 120
    while proc.is_alive() and time.monotonic() < deadline:
        checkpoints = _checkpoints(runs)
        if _last_step(checkpoints) >= after and (
                when == 'now' or _writing(checkpoints, '' if when == 'write' else when)):
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.0005)
    proc.join()
    assert proc.exitcode == -signal.SIGKILL, f'the run must be killed before its end (after step {after})'
    return _writing(_checkpoints(runs))


def test_sigkill_at_any_moment_then_resume_ends_bit_identical(tmp_path, one_thread):
    """Killed four times or more: during the first epoch, as checkpoint writes begin, in the middle of a write and
    across epochs; stochastic depth, mixup and EMA are on, so every RNG and the data order must be restored."""
    values = tiny_config(make_dataset(tmp_path / 'data'), tmp_path / 'runs', epochs=3, checkpoint_every=1,
                         ema_decay=0.9)
    values['model']['kwargs'].update(embed_dim=64, num_heads=[2, 4])  # checkpoints of about 8 MB
    values['model']['drop_path_rate'] = 0.2
    values['data'].update(mixup=0.4, label_smoothing=0.1)
    config = write_config(tmp_path / 'exp.yaml', values)
    reference = train(config_from_dict(values), run_dir=tmp_path / 'reference', progress=False).run_dir

    runs = tmp_path / 'runs'
    inside = [_kill([str(config)], runs, after=2, when='now')]
    run = _checkpoints(runs).parent
    for after, when in ((5, 'write'), (8, 'state.pt'), (11, 'write')):  # 6 steps per epoch, 18 in all
        inside.append(_kill(['--resume', str(run)], runs, after, when))
    for _ in range(4):  # a write can end between the sight of its folder and the kill: try later writes
        if any(inside):
            break
        inside.append(_kill(['--resume', str(run)], runs, _last_step(_checkpoints(runs)) + 1, 'write'))
    assert any(inside), 'no kill landed inside a checkpoint write'

    assert main(['--resume', str(run)]) == 0
    assert_same_weights(reference / 'checkpoints' / 'last', run / 'checkpoints' / 'last')
    assert logged_steps(run) == list(range(1, 19))  # the replayed parts of the log are not duplicated
