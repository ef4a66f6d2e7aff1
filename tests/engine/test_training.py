"""The training engine end to end on a tiny dataset: outputs, exact resumption, DDP, interop, bad input."""
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

from densezoo.datasets import DataError
from densezoo.engine import NonFiniteLossError, Trainer, config_from_dict, train
from densezoo.engine.checkpoint import load_checkpoint
from tests.engine.conftest import (TINY_MODEL, assert_same_weights, logged_steps, make_dataset, tiny_config,
                                   write_config)

ROOT = Path(__file__).resolve().parents[2]
TRAIN = [sys.executable, str(ROOT / 'tools' / 'train.py')]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """One ordinary run, shared by the checks on its outputs."""
    tmp = tmp_path_factory.mktemp('run')
    config = config_from_dict(tiny_config(make_dataset(tmp / 'data'), tmp / 'runs', epochs=4))
    return config, train(config, progress=False)


def test_run_folder_outputs(trained):
    config, result = trained
    run = result.run_dir
    assert result.steps == 4 * 6  # 36 images, batch 6
    for name in ('config.yaml', 'log.csv', 'log.jsonl', 'curve.png'):
        assert (run / name).is_file(), name
    assert list((run / 'tensorboard').glob('events.out.tfevents.*'))
    assert Image.open(run / 'curve.png').size[0] > 500
    records = [json.loads(line) for line in (run / 'log.jsonl').read_text().splitlines()]
    train_losses = [r['loss'] for r in records if r['kind'] == 'train']
    val = [r for r in records if r['kind'] == 'val']
    assert len(train_losses) == 24 and len(val) == 4
    assert sum(train_losses[-4:]) < 0.7 * sum(train_losses[:4])  # it learns (measured: 0.63)
    assert val[-1]['top1'] == 100.0 and val[-1]['count'] == 12  # three colours: trivially separable
    assert result.best_metric == max(r['top1'] for r in val)
    assert (run / 'log.csv').read_text().splitlines()[0].startswith('kind,epoch,step,lr,loss,top1,top5')
    checkpoints = run / 'checkpoints'
    assert os.readlink(checkpoints / 'last') == 'step-00000024'
    assert sorted(p.name for p in checkpoints.iterdir() if not p.is_symlink()) == sorted(  # keep_checkpoints: 3
        {'step-00000012', 'step-00000018', 'step-00000024', os.readlink(checkpoints / 'best')})
    state = torch.load(checkpoints / 'last' / 'state.pt', weights_only=True)
    assert state['global_step'] == 24 and state['epoch'] == 4 and state['config']['data']['batch_size'] == 6


def test_timm_loads_the_trained_weights(trained):
    config, result = trained
    weights = result.run_dir / 'checkpoints' / 'best' / 'model.safetensors'
    # num_classes in the overlay too: timm drops a classifier trained for another number of classes
    model = timm.create_model(TINY_MODEL['name'], pretrained=True, num_classes=3,
                              pretrained_cfg_overlay=dict(file=str(weights), num_classes=3),
                              **TINY_MODEL['kwargs']).eval()
    trainer = Trainer(config, result.run_dir / 'eval', progress=False)
    load_checkpoint(result.run_dir / 'checkpoints' / 'best', trainer.model)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), trainer.model.eval()(x))
    assert trainer.evaluate()['top1'] == result.best_metric


def _last_step(run_dir: Path) -> int:
    link = run_dir / 'checkpoints' / 'last'
    return int(os.readlink(link).split('-')[1]) if link.is_symlink() else -1


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    """Killed with SIGKILL mid-epoch and resumed, a run ends with exactly the weights of an uninterrupted one.
    Stochastic depth, mixup, EMA and two loader workers are on, so every RNG and the data order must be restored."""
    data = make_dataset(tmp_path / 'data')
    values = tiny_config(data, tmp_path / 'runs', epochs=3, checkpoint_every=1, ema_decay=0.9)
    values['model']['drop_path_rate'] = 0.2
    values['data'].update(workers=2, mixup=0.4, label_smoothing=0.1)
    config = write_config(tmp_path / 'exp.yaml', values)
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    reference, interrupted = tmp_path / 'runs' / 'reference', tmp_path / 'runs' / 'interrupted'
    subprocess.run([*TRAIN, str(config), '--opt', 'name=reference'], env=env, check=True, capture_output=True)
    reference = next((tmp_path / 'runs').glob('reference-*'))

    proc = subprocess.Popen([*TRAIN, str(config), '--opt', 'name=interrupted'], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        runs = list((tmp_path / 'runs').glob('interrupted-*'))
        if runs and _last_step(runs[0]) >= 8:  # in the middle of the second epoch (6 steps per epoch)
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted = runs[0]
    assert 8 <= _last_step(interrupted) < 18, 'the run must be killed before its end'
    resumed = subprocess.run([*TRAIN, '--resume', str(interrupted)], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(reference / 'checkpoints' / 'last', interrupted / 'checkpoints' / 'last')
    assert logged_steps(interrupted) == list(range(1, 19))  # the replayed part of the log is not duplicated


def test_two_processes_reduce_metrics_exactly(tmp_path):
    data = make_dataset(tmp_path / 'data', per_class=(12, 5))  # 15 validation images: odd, not split evenly
    config = write_config(tmp_path / 'exp.yaml', tiny_config(data, tmp_path / 'runs', epochs=1))
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                           *TRAIN[1:], str(config)], capture_output=True, text=True,
                          env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = next((tmp_path / 'runs').glob('tiny-*'))
    val = [json.loads(line) for line in (run / 'log.jsonl').read_text().splitlines()
           if json.loads(line)['kind'] == 'val'][-1]
    assert val['count'] == 15 and val['step'] == 3  # 36 images, batch 6 per process, 2 processes
    trainer = Trainer(config_from_dict(tiny_config(data, tmp_path / 'single')), tmp_path / 'single',
                      progress=False)
    load_checkpoint(run / 'checkpoints' / 'last', trainer.model)
    single = trainer.evaluate()
    assert single['count'] == 15 and single['top1'] == pytest.approx(val['top1'])
    assert single['loss'] == pytest.approx(val['loss'], rel=1e-5)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(dataset, tmp_path):
    values = tiny_config(dataset, tmp_path / 'runs', checkpoint_every=1)
    values['optim'] = dict(name='sgd', lr=1e12, momentum=0.9, weight_decay=0.0)
    with pytest.raises(NonFiniteLossError, match=r'^loss is (nan|inf) at step \d+ \(epoch 0\); stopped, the last '
                                                 r'good checkpoint is .*checkpoints/step-\d+; lower optim.lr or '
                                                 r'set optim.clip_grad$'):
        train(config_from_dict(values), run_dir=tmp_path / 'run', progress=False)
    kept = load_file(str(tmp_path / 'run' / 'checkpoints' / 'last' / 'model.safetensors'))
    assert all(torch.isfinite(t).all() for t in kept.values() if t.is_floating_point())


def test_training_options_together(dataset, tmp_path):
    """bf16 autocast, gradient accumulation, clipping, layer decay, EMA, channels_last, gradient checkpointing, the
    albumentations pipeline and torch.compile (aot_eager backend) in one short run."""
    values = tiny_config(dataset, tmp_path / 'runs', epochs=1, amp='bf16', accumulation_steps=2, ema_decay=0.5)
    values['model'].update(channels_last=True, grad_checkpointing=True, compile=True, compile_backend='aot_eager')
    values['data']['pipeline'] = 'albumentations'
    values['optim'].update(clip_grad=1.0, layer_decay=0.8)
    result = train(config_from_dict(values), run_dir=tmp_path / 'run', progress=False)
    assert result.steps == 3  # 6 batches of 6, two per step
    assert {'top1', 'ema_top1', 'ema_loss'} <= set(result.metrics)
    assert all(torch.isfinite(torch.tensor(v)) for v in result.metrics.values())


@pytest.mark.parametrize('problem, message', [
    ('missing', r"^data folder '.*data/train' does not exist; expected <root>/<split>/<class>/<image>"),
    ('empty class', r"^class folder '.*train/green' has no images \(.png .jpg .jpeg\); add images or remove the "
                    r"folder$"),
    ('val class', r"^class folder '.*val/purple' is not a training class; use the same class folders in every "
                  r"split$"),
    ('corrupt', r"^cannot read image '.*train/red/0.png' \(.*\); fix or remove it, or set "
                r"data.corrupt_images=skip$"),
])
def test_bad_data_is_a_one_line_error(tmp_path, problem, message):
    root = tmp_path / 'data'
    if problem != 'missing':
        make_dataset(root)
    if problem == 'empty class':
        for path in (root / 'train' / 'green').iterdir():
            path.unlink()
    elif problem == 'val class':
        (root / 'val' / 'purple').mkdir()
        Image.new('RGB', (16, 16)).save(root / 'val' / 'purple' / '0.png')
    elif problem == 'corrupt':
        (root / 'train' / 'red' / '0.png').write_bytes(b'not a png')
    values = tiny_config(root, tmp_path / 'runs', epochs=1)
    values['data']['corrupt_images'] = 'error'
    with pytest.raises(DataError, match=message):
        train(config_from_dict(values), run_dir=tmp_path / 'run', progress=False)
    if problem != 'corrupt':  # found before training: no run folder is left behind
        assert not (tmp_path / 'run').exists()


def test_corrupt_images_are_skipped_with_a_warning_naming_them(dataset, tmp_path):
    (dataset / 'train' / 'blue' / '3.png').write_bytes(b'\x89PNG broken')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        result = train(config_from_dict(tiny_config(dataset, tmp_path / 'runs', epochs=1)),
                       run_dir=tmp_path / 'run', progress=False)
    assert result.steps == 5  # the data check leaves the unreadable image out: 11 images, batch 2, drop_last
    assert any('skipping 1 unreadable image: ' in str(w.message) and 'blue/3.png' in str(w.message) for w in caught)


def test_an_image_that_breaks_after_its_header_is_skipped_when_drawn(dataset, tmp_path):
    path = dataset / 'train' / 'blue' / '3.png'
    path.write_bytes(path.read_bytes()[:60])  # the header reads; the pixels do not
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        result = train(config_from_dict(tiny_config(dataset, tmp_path / 'runs', epochs=1)),
                       run_dir=tmp_path / 'run', progress=False)
    assert result.steps == 6  # the check passes it; the loader uses the next image instead
    assert any("skipping unreadable image '" in str(w.message) and 'blue/3.png' in str(w.message) for w in caught)


@pytest.mark.parametrize('opt, message', [
    ('model.name=swin_tiny_patch4_window7_224_dwaa', "error: unknown model 'swin_tiny_patch4_window7_224_dwaa'; "
                                                    "did you mean swin_tiny_patch4_window7_224_dwa"),
    ('data.bach_size=4', "error: unknown config key 'data.bach_size'; did you mean 'data.batch_size'?"),
    ('task=detection', "error: task='detection' is not known; choose one of classification"),
])
def test_cli_errors_are_one_line(dataset, tmp_path, opt, message):
    config = write_config(tmp_path / 'exp.yaml', tiny_config(dataset, tmp_path / 'runs'))
    proc = subprocess.run([*TRAIN, str(config), '--opt', opt], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(message)


def test_cli_reports_an_error_from_a_loader_worker_on_one_line(dataset, tmp_path):
    path = dataset / 'train' / 'red' / '0.png'
    path.write_bytes(path.read_bytes()[:60])  # the data check reads its header; a loader worker fails on its pixels
    values = tiny_config(dataset, tmp_path / 'runs', epochs=1)
    values['data'].update(workers=1, corrupt_images='error')
    proc = subprocess.run([*TRAIN, str(write_config(tmp_path / 'exp.yaml', values))], capture_output=True, text=True)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"error: cannot read image '.*train/red/0.png' \(.*\); fix or remove it, or set "
                        r"data.corrupt_images=skip", last), last
