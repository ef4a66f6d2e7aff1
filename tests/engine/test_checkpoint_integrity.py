"""Checkpoints that prove themselves: manifests, pruning to the newest K, resuming from the newest intact checkpoint,
a half-written log line, and one-line errors for damaged weights files."""
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import tests.sr_standin  # noqa: F401  (registers the stand-in models)
from densezoo.checkpoint_io import WeightsFileError, check_weights_file, load_weights_file
from densezoo.cli.eval_sr import main as eval_sr
from densezoo.engine import Trainer, TrainingError, config_from_dict, train
from densezoo.engine.checkpoint import save_checkpoint
from densezoo.engine.logger import RunLogger
from tests.engine.conftest import make_dataset, tiny_config
from tests.helpers import one_line
from tests.sr_standin import StandInSR

TIMING = ('images_per_s', 'elapsed_s')


def _records(run: Path) -> list:
    """The log records of a run without their timings."""
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run / 'log.jsonl').read_text().splitlines()]


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
    """A finished run (12 steps, checkpoints at steps 5, 6, 10 and 12, EMA and stochastic depth on), its values and
    its final weights and log."""
    tmp = tmp_path_factory.mktemp('integrity')
    values = tiny_config(make_dataset(tmp / 'data'), tmp / 'runs', epochs=2, checkpoint_every=5, ema_decay=0.9,
                         keep_checkpoints=3)
    values['model']['drop_path_rate'] = 0.2
    run = train(config_from_dict(values), run_dir=tmp / 'run', progress=False).run_dir
    last = run / 'checkpoints' / 'last'
    weights = {name: load_file(str(last / name)) for name in ('model.safetensors', 'ema.safetensors')}
    return values, run, weights, _records(run)


def _copy(finished, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished[1], tmp_path / 'run', symlinks=True))


def _step_folders(run: Path) -> set:
    return {p.name for p in (run / 'checkpoints').iterdir() if not p.is_symlink()}


def test_damaged_last_checkpoint_falls_back_and_ends_bit_identical(finished, tmp_path, caplog):
    values, _, reference, reference_log = finished
    run = _copy(finished, tmp_path)
    checkpoints = run / 'checkpoints'
    assert os.readlink(checkpoints / 'last') == 'step-00000012'
    # keep_checkpoints=3: the three newest and the best one
    assert _step_folders(run) == {'step-00000006', 'step-00000010', 'step-00000012', os.readlink(checkpoints / 'best')}
    weights = checkpoints / 'step-00000012' / 'model.safetensors'
    with open(weights, 'r+b') as f:  # 1 KB of zeros inside the tensor data: the header still reads
        f.seek(weights.stat().st_size - 1536)
        f.write(bytes(1024))
    load_file(str(weights))  # safetensors alone does not notice
    with open(run / 'log.jsonl', 'a') as f:  # a run killed while appending to its log
        f.write('{"kind": "train", "epoch": 1, "st')
    caplog.set_level(logging.WARNING)
    train(config_from_dict(values), run_dir=run, resume=True, progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert ('checkpoints/step-00000012: model.safetensors does not match its checksum (file damaged); resuming from '
            'checkpoints/step-00000010 instead') in warnings
    assert (f'{run / "log.jsonl"}: dropped its last line {len(reference_log) + 1}, written only in part '
            f'(Unterminated string starting at: line 1 column 31 (char 30)); the run was stopped while logging') \
        in warnings
    assert os.readlink(checkpoints / 'last') == 'step-00000012-1'
    for name, tensors in reference.items():
        resumed = load_file(str(checkpoints / 'last' / name))
        assert resumed.keys() == tensors.keys()
        for key in tensors:
            assert torch.equal(resumed[key], tensors[key]), f'{name}: {key}'
    assert _records(run) == reference_log  # steps 11 and 12 replayed once, with the same losses


def test_keep_checkpoints_keeps_the_newest_and_the_best(tmp_path):
    directory, model = tmp_path / 'checkpoints', nn.Linear(2, 2)
    for step in range(1, 7):
        save_checkpoint(directory, step, model, dict(global_step=step), best=step == 2, keep=3)
    assert _step_folders(tmp_path) == {'step-00000002', 'step-00000004', 'step-00000005', 'step-00000006'}
    assert os.readlink(directory / 'last') == 'step-00000006' and os.readlink(directory / 'best') == 'step-00000002'
    folder = directory / 'step-00000006'
    manifest = json.loads((folder / 'manifest.json').read_text())
    assert manifest['step'] == 6 and sorted(manifest['files']) == ['model.safetensors', 'state.pt']
    for name, entry in manifest['files'].items():
        data = (folder / name).read_bytes()
        assert entry == dict(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    # a run that resumed from step 4 saves step 5 again: the later step 6 goes, and so does an unfinished folder
    (directory / '.step-00000009.tmp').mkdir()
    (directory / 'exported').mkdir()
    save_checkpoint(directory, 5, model, dict(global_step=5), keep=3)
    assert _step_folders(tmp_path) == {'step-00000002', 'step-00000004', 'step-00000005', 'step-00000005-1',
                                       'exported'}


def test_no_intact_checkpoint_is_a_one_line_error(finished, tmp_path):
    values, run = finished[0], _copy(finished, tmp_path)
    sizes = {}
    for name in ('step-00000006', 'step-00000010', 'step-00000012'):
        state = run / 'checkpoints' / name / 'state.pt'
        sizes[name] = state.stat().st_size
        state.write_bytes(state.read_bytes()[:10])
    with pytest.raises(TrainingError) as error:
        Trainer(config_from_dict(values), run, resume=True, progress=False)
    reasons = '; '.join(f'checkpoints/{name}: state.pt has 10 bytes but had {sizes[name]} when written (file '
                        f'truncated or damaged)' for name in ('step-00000012', 'step-00000010', 'step-00000006'))
    assert one_line(error) == (f'{run / "checkpoints"} holds no intact checkpoint to resume from ({reasons}); start '
                               f'a new run')


def test_checkpoints_without_manifest_still_resume(finished, tmp_path, caplog):
    """Folders written before manifests existed load unverified; a damaged file there is still caught."""
    values, run = finished[0], _copy(finished, tmp_path)
    for manifest in (run / 'checkpoints').glob('step-*/manifest.json'):
        manifest.unlink()
    (run / 'checkpoints' / 'step-00000012' / 'model.safetensors').write_bytes(b'')
    caplog.set_level(logging.DEBUG)
    trainer = Trainer(config_from_dict(values), run, resume=True, progress=False)
    assert trainer.global_step == 10
    messages = [r.getMessage() for r in caplog.records]
    assert (f'{(run / "checkpoints" / "step-00000010").resolve()} has no manifest.json (written by an older '
            f'densezoo); its files are not verified') in messages
    assert ('checkpoints/step-00000012: model.safetensors is damaged or not a checkpoint (zero bytes); resuming '
            'from checkpoints/step-00000010 instead') in messages


def test_log_lines_that_do_not_parse(tmp_path, caplog):
    log = tmp_path / 'log.jsonl'
    lines = [json.dumps(dict(kind='train', epoch=0, step=step, loss=1.0 / step)) for step in (1, 2, 3)]
    log.write_text('\n'.join(lines) + '\n{"kind": "tra')
    caplog.set_level(logging.WARNING)
    logger = RunLogger(tmp_path, resume_step=2, tensorboard=False)
    assert [r['step'] for r in logger.records] == [1, 2]
    assert [r.getMessage() for r in caplog.records] == [
        f'{log}: dropped its last line 4, written only in part (Unterminated string starting at: line 1 column 10 '
        f'(char 9)); the run was stopped while logging']
    assert log.read_text() == '\n'.join(lines[:2]) + '\n'
    log.write_text('\n'.join([lines[0], '{"kind": "tra', lines[2]]) + '\n')
    with pytest.raises(TrainingError) as error:
        RunLogger(tmp_path, resume_step=2, tensorboard=False)
    assert one_line(error) == (f'{log} line 2 is not a log record (Unterminated string starting at: line 1 column 10 '
                               f'(char 9)); repair or delete that line')


def _damaged(folder: Path, kind: str, suffix: str) -> Path:
    """A weights file of the stand-in SR model with zero bytes, cut in half or replaced by random bytes."""
    path = folder / f'{kind}{suffix}'
    state = StandInSR(upscale=2).state_dict()
    save_file(state, str(path)) if suffix == '.safetensors' else torch.save(state, path)
    data = path.read_bytes()
    path.write_bytes({'zero': b'', 'truncated': data[:len(data) // 2],
                      'random': np.random.default_rng(0).bytes(4096)}[kind])
    return path


DAMAGED = [
    ('zero', '.safetensors', 'zero bytes'),
    ('zero', '.pth', 'zero bytes'),
    ('truncated', '.safetensors', 'safetensors: incomplete metadata, file not fully covered'),
    ('truncated', '.pth', 'truncated: the zip archive misses its central directory'),
    ('random', '.safetensors', 'safetensors: header too large'),
    ('random', '.pth', 'not a PyTorch file: Unsupported operand 95'),
]


@pytest.mark.parametrize('kind,suffix,reason', DAMAGED, ids=[f'{k}{s}' for k, s, _ in DAMAGED])
def test_damaged_weights_files_are_one_line_errors(dataset, tmp_path, capsys, kind, suffix, reason):
    path = _damaged(tmp_path, kind, suffix)
    expected = f"weights file '{path}' is damaged or not a checkpoint ({reason}); download or write it again"
    for read in (load_weights_file, check_weights_file):
        with pytest.raises(WeightsFileError) as error:
            read(path)
        assert one_line(error) == expected
    assert eval_sr(['densezoo_test_sr_x2', '--checkpoint', str(path), '--data', str(tmp_path)]) == 2
    assert capsys.readouterr().err == f'error: {expected}\n'
    values = tiny_config(dataset, tmp_path / 'runs')
    values['model']['pretrained_file'] = str(path)
    with pytest.raises(WeightsFileError) as error:
        Trainer(config_from_dict(values), tmp_path / 'run', progress=False)
    assert one_line(error) == expected


def test_keep_checkpoints_must_be_positive(tmp_path):
    from densezoo.config import ConfigError
    with pytest.raises(ConfigError, match=r'^keep_checkpoints=0 must be at least 1$'):
        config_from_dict(tiny_config(tmp_path, tmp_path / 'runs', keep_checkpoints=0))


def test_evaluation_verifies_a_checkpoint_folder(tmp_path):
    from densezoo.tasks.sr_eval import EvalError, load_sr_model
    folder = save_checkpoint(tmp_path / 'checkpoints', 3, StandInSR(upscale=2), dict(global_step=3))
    load_sr_model('densezoo_test_sr_x2', folder)  # intact: loads
    weights = folder / 'model.safetensors'
    with open(weights, 'r+b') as f:  # a byte of the tensor data flipped: safetensors alone would load it
        f.seek(weights.stat().st_size - 1)
        last = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([last[0] ^ 1]))
    for path in (folder, weights):
        with pytest.raises(EvalError) as error:
            load_sr_model('densezoo_test_sr_x2', path)
        assert one_line(error) == (f"checkpoint folder '{folder}' is damaged: model.safetensors does not match its "
                                   f"checksum (file damaged); use another checkpoint of the run")


def test_resuming_with_another_model_is_one_line(finished, tmp_path, capsys):
    """A resumed run whose model options were changed: one line naming the checkpoint and the first misfit, not
    torch's list of every tensor; the checkpoints stay as they were."""
    from densezoo.cli.train import main
    run = _copy(finished, tmp_path)
    before = _step_folders(run)
    assert main(['--resume', str(run), '--opt', 'model.kwargs.embed_dim=16']) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        'error: checkpoints/step-00000012 does not fit the model: 58 tensors differ in shape (first: '
        'patch_embed.proj.weight, [8, 3, 2, 2] in the checkpoint, [16, 3, 2, 2] in the model); resume with the '
        'model options the run was trained with (its config.yaml)')
    assert _step_folders(run) == before and os.readlink(run / 'checkpoints' / 'last') == 'step-00000012'
