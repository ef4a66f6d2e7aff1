"""Faults a cluster job meets: SIGTERM and Ctrl-C stop a run at a step boundary with a checkpoint (exit 75) from which
it resumes exactly; a full or read-only disk is a one-line error that keeps the last good checkpoint (exit 1)."""
import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

import densezoo.engine.checkpoint as checkpoint_module
import densezoo.engine.trainer as trainer_module
from densezoo.cli.train import main
from densezoo.engine import Trainer, config_from_dict, config_to_dict, train
from tests.engine.conftest import (assert_same_weights, logged_steps, make_dataset, tiny_config, wait_for_steps,
                                   write_config)

ROOT = Path(__file__).resolve().parents[2]
TRAIN = [sys.executable, str(ROOT / 'tools' / 'train.py')]


@pytest.fixture
def one_thread():
    """One intra-op thread, as in the ``OMP_NUM_THREADS=1`` subprocesses, so that in-process runs match theirs bit
    for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run_dir(runs: Path) -> Path:
    found = list(runs.glob('*-*'))
    assert len(found) == 1, found
    return found[0]


def _stderr_lines(capsys) -> list:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_sigterm_stops_at_a_step_with_a_checkpoint_and_resumes_exactly(tmp_path, one_thread):
    """SIGTERM in the middle of an epoch: exit 75 and one line naming the checkpoint written at that step; resumed,
    the run ends with exactly the weights of an uninterrupted one. Stochastic depth, mixup, EMA and two loader
    workers are on, so every RNG and the data order must be restored."""
    data = make_dataset(tmp_path / 'data')
    values = tiny_config(data, tmp_path / 'runs', epochs=3, ema_decay=0.9)
    values['model']['drop_path_rate'] = 0.2
    values['data'].update(workers=2, mixup=0.4, label_smoothing=0.1)
    config = write_config(tmp_path / 'exp.yaml', values)
    reference = train(config_from_dict(values), run_dir=tmp_path / 'reference', progress=False).run_dir

    proc = subprocess.Popen([*TRAIN, str(config)], env={**os.environ, 'OMP_NUM_THREADS': '1'},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_steps(proc, tmp_path / 'runs', 2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    run = _run_dir(tmp_path / 'runs')
    lines = [line for line in (out + err).splitlines() if 'SIGTERM' in line]
    assert len(lines) == 1 and lines[0] == err.strip().splitlines()[-1], err
    found = re.fullmatch(r'stopped by SIGTERM at step (\d+) \(epoch (\d)\); checkpoint written to (.+); continue '
                         r'with: python tools/train.py --resume (.+)', lines[0])
    assert found, lines[0]
    step, epoch = int(found[1]), int(found[2])
    assert 2 <= step < 18, 'the run must be stopped before its end'
    assert epoch in (step // 6, (step - 1) // 6)  # 6 steps per epoch; at its end, before or after validation
    assert found[3] == str(run / 'checkpoints' / os.readlink(run / 'checkpoints' / 'last'))
    assert found[4] == str(run)
    assert torch.load(run / 'checkpoints' / 'last' / 'state.pt', weights_only=True)['global_step'] == step

    assert main(['--resume', str(run)]) == 0
    assert_same_weights(reference / 'checkpoints' / 'last', run / 'checkpoints' / 'last',
                         ('model.safetensors', 'ema.safetensors'))
    assert logged_steps(run) == list(range(1, 19))


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_whole_process_group_spares_the_loader_workers(tmp_path, signum):
    """Ctrl-C and cluster schedulers signal every process of the job, loader workers included: a worker killed by it
    would abort the run with a traceback before its checkpoint. The workers leave the signal to the training process,
    which stops at a step with a checkpoint and shuts them down: nothing of the process group is left."""
    values = tiny_config(make_dataset(tmp_path / 'data', per_class=(40, 4)), tmp_path / 'runs', epochs=3)
    values['data'].update(workers=2)
    config = write_config(tmp_path / 'exp.yaml', values)
    proc = subprocess.Popen([*TRAIN, str(config)], env={**os.environ, 'OMP_NUM_THREADS': '1'},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for_steps(proc, tmp_path / 'runs', 2)
    os.killpg(proc.pid, signum)  # the training process and its two workers
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    name = signal.Signals(signum).name
    assert re.fullmatch(rf'stopped by {name} at step \d+ \(epoch 0\); checkpoint written to .+; continue with: '
                        rf'python tools/train.py --resume .+', err.strip().splitlines()[-1]), err
    assert 'Traceback' not in err
    for _ in range(100):
        try:
            os.killpg(proc.pid, 0)  # a process of the group is still alive
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError('loader workers outlived the run')


def _worker_of_rank(launcher: int, rank: int) -> int:
    """The pid of the process of ``rank`` that torchrun (``launcher``) started."""
    children = [int(pid) for task in os.listdir(f'/proc/{launcher}/task')
                for pid in Path(f'/proc/{launcher}/task/{task}/children').read_text().split()]
    for pid in children:
        environ = Path(f'/proc/{pid}/environ').read_bytes().split(b'\0')
        if f'RANK={rank}'.encode() in environ:
            return pid
    raise AssertionError(f'no process of rank {rank} among {children}')


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='finds the worker processes in /proc')
def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(dataset, tmp_path):
    values = tiny_config(dataset, tmp_path / 'runs', epochs=6)
    proc = subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                             *TRAIN[1:], str(write_config(tmp_path / 'exp.yaml', values))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, 'OMP_NUM_THREADS': '1'})
    wait_for_steps(proc, tmp_path / 'runs', 1)
    os.kill(_worker_of_rank(proc.pid, 1), signal.SIGTERM)  # rank 0, which writes checkpoints, gets no signal
    out, err = proc.communicate(timeout=120)
    run = _run_dir(tmp_path / 'runs')
    lines = [line for line in (out + err).splitlines() if line.startswith('stopped by')]
    assert len(lines) == 1, err[-3000:]  # printed by rank 0 only
    found = re.fullmatch(rf'stopped by SIGTERM at step (\d+) \(epoch \d\); checkpoint written to '
                         rf'{run}/checkpoints/step-0*(\d+); continue with: torchrun --nproc_per_node 2 '
                         rf'tools/train.py --resume {run}', lines[0])
    assert found and found[1] == found[2], lines[0]
    step = int(found[1])
    assert step < 18, 'the run must be stopped before its end'  # 36 images, batch 6 per process: 3 steps per epoch
    state = torch.load(run / 'checkpoints' / 'last' / 'state.pt', weights_only=True)
    assert state['global_step'] == step and len(state['rng']) == 2  # both processes took part in the save


def test_a_second_ctrl_c_while_the_checkpoint_is_written_changes_nothing(dataset, tmp_path, monkeypatch, capsys):
    """Ctrl-C twice while step 2's checkpoint is written: the write completes, the run stops there (exit 75) and
    the previous signal handlers are back."""
    config = write_config(tmp_path / 'exp.yaml', tiny_config(dataset, tmp_path / 'runs', checkpoint_every=1))
    save = torch.save

    def save_pressing_ctrl_c(obj, *args, **kwargs):
        if isinstance(obj, dict) and obj.get('global_step') == 2:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
        return save(obj, *args, **kwargs)

    monkeypatch.setattr(torch, 'save', save_pressing_ctrl_c)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert main([str(config)]) == 75
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    run = _run_dir(tmp_path / 'runs')
    assert _stderr_lines(capsys) == [
        f'stopped by SIGINT at step 2 (epoch 0); checkpoint written to {run}/checkpoints/step-00000002; continue '
        f'with: python tools/train.py --resume {run}']
    monkeypatch.undo()
    trainer = Trainer(config_from_dict(tiny_config(dataset, tmp_path / 'runs')), run, resume=True, progress=False)
    assert trainer.global_step == 2 and trainer.batch_in_epoch == 2

    create_task = trainer_module.create_task  # SIGTERM while the resumed run is set up

    def create_task_terminated(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)
        return create_task(*args, **kwargs)

    monkeypatch.setattr(trainer_module, 'create_task', create_task_terminated)
    assert main(['--resume', str(run)]) == 75
    assert _stderr_lines(capsys) == [f'stopped by SIGTERM before training resumed; its checkpoints are unchanged; '
                                     f'continue with: python tools/train.py --resume {run}']
    assert os.readlink(run / 'checkpoints' / 'last') == 'step-00000002'


@pytest.mark.parametrize('where, signum, code, line', [
    ('create_task', signal.SIGINT, 130, 'interrupted by Ctrl-C before training started; no checkpoint written; run '
                                        'the command again'),
    ('create_task', signal.SIGTERM, 75, 'stopped by SIGTERM before training started; nothing to save, no checkpoint '
                                        'written; start the run again'),
    ('_batches', signal.SIGTERM, 75, 'stopped by SIGTERM before the first step; nothing to save, no checkpoint '
                                     'written; start the run again'),
    ('_batches', signal.SIGINT, 75, 'stopped by SIGINT before the first step; nothing to save, no checkpoint '
                                    'written; start the run again'),
])
def test_a_signal_before_the_first_step_is_one_line(dataset, tmp_path, monkeypatch, capsys, where, signum, code,
                                                    line):
    """While the model is built (``create_task``) or the first batch loads (``_batches``)."""
    original = getattr(trainer_module, where)

    def signalled(*args, **kwargs):
        signal.raise_signal(signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer_module, where, signalled)
    config = write_config(tmp_path / 'exp.yaml', tiny_config(dataset, tmp_path / 'runs'))
    assert main([str(config)]) == code
    assert _stderr_lines(capsys) == [line]
    assert not list((tmp_path / 'runs').glob('*/checkpoints/*'))


def _fail_state_save(exception):
    """``torch.save`` raising ``exception`` for the training state of step 3."""
    save = torch.save

    def failing(obj, *args, **kwargs):
        if isinstance(obj, dict) and obj.get('global_step') == 3:
            raise exception
        return save(obj, *args, **kwargs)
    return failing


def _fail_third_weights_save(*args, **kwargs):
    _fail_third_weights_save.calls += 1
    if _fail_third_weights_save.calls == 3:
        raise SafetensorError('Error while serializing: I/O error: No space left on device (os error 28)')
    return _fail_third_weights_save.save_file(*args, **kwargs)


def _full_disk(path):
    """``os.statvfs`` of a disk with no free block."""
    return os.statvfs_result((4096, 4096, 1000, 0, 0, 100, 0, 0, 0, 255))


NO_SPACE = 'no space left on device (errno 28); free space or set output= to another disk'


@pytest.mark.parametrize('fault, message', [
    ('state ENOSPC', f'cannot write checkpoint to RUN/checkpoints: {NO_SPACE}; the last good checkpoint is '
                     f'RUN/checkpoints/step-00000002'),
    ('weights ENOSPC', f'cannot write checkpoint to RUN/checkpoints: {NO_SPACE}; the last good checkpoint is '
                       f'RUN/checkpoints/step-00000002'),
    ('torch writer on a full disk', f'cannot write checkpoint to RUN/checkpoints: {NO_SPACE}; the last good '
                                    f'checkpoint is RUN/checkpoints/step-00000002'),
    ('state EROFS', 'cannot write checkpoint to RUN/checkpoints: read-only file system (errno 30); set output= to a '
                    'writable folder; the last good checkpoint is RUN/checkpoints/step-00000002'),
    ('log EACCES', 'cannot write logs to RUN: permission denied (errno 13); set output= to a writable folder; the '
                   'last good checkpoint is RUN/checkpoints/step-00000002'),
], ids=lambda value: value if len(value) < 30 else '')
def test_a_full_or_read_only_disk_is_one_line_and_keeps_the_last_checkpoint(dataset, tmp_path, monkeypatch, capsys,
                                                                            fault, message):
    if fault == 'state ENOSPC':
        monkeypatch.setattr(torch, 'save', _fail_state_save(OSError(errno.ENOSPC, 'No space left on device')))
    elif fault == 'weights ENOSPC':  # safetensors reports the OS error in its message
        _fail_third_weights_save.calls, _fail_third_weights_save.save_file = 0, checkpoint_module.save_file
        monkeypatch.setattr(checkpoint_module, 'save_file', _fail_third_weights_save)
    elif fault == 'torch writer on a full disk':  # torch.save names no cause: the disk itself is looked at
        monkeypatch.setattr(torch, 'save', _fail_state_save(
            RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 56896 vs 56788')))
        monkeypatch.setattr(os, 'statvfs', _full_disk)
    elif fault == 'state EROFS':
        monkeypatch.setattr(torch, 'save', _fail_state_save(OSError(errno.EROFS, 'Read-only file system')))
    else:
        log = trainer_module.RunLogger.log

        def failing_log(self, kind, step, *args, **kwargs):
            if step == 3:
                raise PermissionError(errno.EACCES, 'Permission denied')
            return log(self, kind, step, *args, **kwargs)
        monkeypatch.setattr(trainer_module.RunLogger, 'log', failing_log)
    values = tiny_config(dataset, tmp_path / 'runs', checkpoint_every=1)
    assert main([str(write_config(tmp_path / 'exp.yaml', values))]) == 1
    run = _run_dir(tmp_path / 'runs')
    assert _stderr_lines(capsys) == ['error: ' + message.replace('RUN', str(run))]
    assert sorted(path.name for path in (run / 'checkpoints').iterdir() if path.name.startswith('.')) == []
    monkeypatch.undo()
    trainer = Trainer(config_from_dict(values), run, resume=True, progress=False)  # it loads
    assert trainer.global_step == 2


@pytest.mark.parametrize('resume', [False, True])
@pytest.mark.parametrize('disk, message', [
    ('read-only', 'read-only file system (errno 30)'),
    ('no permission', 'permission denied (errno 13)'),
])
def test_an_output_folder_that_cannot_be_written_fails_at_once(dataset, tmp_path, monkeypatch, capsys, resume, disk,
                                                               message):
    """Before the model and data are built, and without leaving a folder behind."""
    values = tiny_config(dataset, tmp_path / 'runs')
    run = tmp_path / 'runs' / 'tiny-1'
    if resume:  # a run folder as a run leaves it
        run.mkdir(parents=True)
        write_config(run / 'config.yaml', config_to_dict(config_from_dict(values)))
    statvfs = os.statvfs
    monkeypatch.setattr(trainer_module, 'create_task', None)  # never reached
    if disk == 'read-only':
        monkeypatch.setattr(os, 'statvfs', lambda path: os.statvfs_result(
            (*statvfs(path)[:8], statvfs(path).f_flag | os.ST_RDONLY, 255)))
    else:
        monkeypatch.setattr(os, 'access', lambda path, mode, **kwargs: False)
    argv = ['--resume', str(run)] if resume else [str(write_config(tmp_path / 'exp.yaml', values))]
    assert main(argv) == 1
    (line,) = _stderr_lines(capsys)
    if resume:
        fix = ('make it writable or copy the run folder to a writable disk and resume it from there')
        assert line == f'error: cannot write to run folder {run}: {message}; {fix}'
        assert sorted(path.name for path in run.iterdir()) == ['config.yaml']
    else:
        assert re.fullmatch(rf'error: cannot create run folder {tmp_path}/runs/tiny-[\d-]+: '
                            rf'{re.escape(message)}; set output= to a writable folder', line), line
        assert not (tmp_path / 'runs').exists()
