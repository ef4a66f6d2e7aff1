"""tools/compare.py: connections × seeds as ordinary run folders with the same data per seed, the table's values
against the runs' logs and the profilers, resuming and rerunning, fine-tuning through ``{seed}``, torchrun, and
one-line errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml

from densezoo.cli.compare import variant_names
from densezoo.config import ConfigError
from densezoo.hub.export import open_model
from densezoo.profile.flops import count
from densezoo.tasks.classification import ClassificationTask
from tests.engine.conftest import logged_steps, make_dataset, tiny_config, write_config
from tests.helpers import load_tool

ROOT = Path(__file__).resolve().parents[2]
PLAIN = 'swin_tiny_patch4_window7_224'


@pytest.fixture
def config(tmp_path) -> Path:
    data = make_dataset(tmp_path / 'data')
    values = tiny_config(data, tmp_path / 'runs', keep_checkpoints=5)
    values['model']['name'] = PLAIN
    return write_config(tmp_path / 'tiny.yaml', values)


def _compare(config: Path, out: Path, *args: str) -> int:
    return load_tool('compare').main([str(config), '--out', str(out), '--latency-iters', '2', *args])


def _last_val(run: Path, key: str) -> float:
    records = [json.loads(line) for line in (run / 'log.jsonl').read_text().splitlines()]
    return [r for r in records if r['kind'] == 'val'][-1][key]


def test_variant_names():
    assert variant_names(f'{PLAIN}_dwa', ['residual', 'mudd', 'rir']) == {
        'residual': PLAIN, 'mudd': f'{PLAIN}_mudd', 'rir': f'{PLAIN}_rir'}
    assert variant_names('swinir_light_x2', ['dwa'])['dwa'] == 'swinir_light_x2_dwa'
    with pytest.raises(ConfigError, match=f'^{PLAIN} has no laurel variant; choose --connections from residual, '
                                          f'dwa, mudd, rir, dense$'):
        variant_names(PLAIN, ['dwa', 'laurel'])
    with pytest.raises(ConfigError, match=r"^model.name='nope' is not a registered model"):
        variant_names('nope', ['dwa'])


def test_connections_and_seeds(config, tmp_path, monkeypatch, capsys):
    seen = {}  # (model, seed) -> the batches its training steps saw
    original = ClassificationTask.training_loss

    def record(self, model, inputs, targets):
        seen.setdefault((self.config.model.name, self.config.seed), []).append(
            (inputs.double().sum().item(), targets.tolist()))
        return original(self, model, inputs, targets)

    monkeypatch.setattr(ClassificationTask, 'training_loss', record)
    out = tmp_path / 'cmp'
    assert _compare(config, out, '--connections', 'residual', 'dwa', '--seeds', '2') == 0
    printed = capsys.readouterr().out
    assert f'{PLAIN}_dwa' in printed and 'top1 mean ± std (n)' in printed

    # the same data order and augmentation for both connections of a seed, other data for the other seed
    assert seen[(PLAIN, 0)] == seen[(f'{PLAIN}_dwa', 0)]
    assert seen[(PLAIN, 1)] == seen[(f'{PLAIN}_dwa', 1)]
    assert seen[(PLAIN, 0)] != seen[(PLAIN, 1)]
    assert len(seen[(PLAIN, 0)]) == 12  # 36 images, batches of 6, 2 epochs

    report = json.loads((out / 'compare.json').read_text())
    assert report['metric'] == 'top1' and report['seeds'] == 2
    kwargs = yaml.safe_load(config.read_text())['model']['kwargs']
    for kind, entry in zip(('residual', 'dwa'), report['connections']):
        name = PLAIN if kind == 'residual' else f'{PLAIN}_{kind}'
        assert entry['connection'] == kind and entry['model'] == name and entry['seeds'] == [0, 1]
        runs = [out / f'{kind}-seed{seed}' for seed in (0, 1)]
        assert entry['run_dirs'] == [str(run) for run in runs]
        for run, seed in zip(runs, (0, 1)):  # ordinary run folders, of this model and seed
            saved = yaml.safe_load((run / 'config.yaml').read_text())
            assert saved['model']['name'] == name and saved['seed'] == seed
            assert logged_steps(run) == list(range(1, 13))
        assert entry['metric'] == [_last_val(run, 'top1') for run in runs]
        assert entry['mean'] == pytest.approx(sum(entry['metric']) / 2)
        model = timm.create_model(name, num_classes=3, **kwargs)
        assert entry['params'] == sum(p.numel() for p in model.parameters())
        assert entry['macs'] == count(model, (3, 16, 16), activations=False).macs_fvcore
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        assert entry['train_peak_bytes'] > weights and entry['latency_ms'] > 0
    first, second = report['connections']
    assert first['delta'] == [0.0, 0.0]
    assert second['delta'] == [a - b for a, b in zip(second['metric'], first['metric'])]  # paired by seed
    assert report['connections'][0]['speed_ratio'] == 1.0
    assert report['connections'][1]['macs'] > report['connections'][0]['macs']  # the mixing is counted
    assert (out / 'compare.png').stat().st_size > 1000
    table = (out / 'compare.md').read_text()
    assert table.count(f'| {PLAIN}') == 2 and '| residual |' in table


def test_rerun_keeps_finished_runs_and_resumes_a_stopped_one(config, tmp_path):
    out = tmp_path / 'cmp'
    assert _compare(config, out, '--connections', 'residual', '--seeds', '1') == 0
    first = out / 'residual-seed0'
    log = (first / 'log.jsonl').read_text()
    manifest = (first / 'checkpoints' / 'last' / 'manifest.json').read_text()
    assert _compare(config, out, '--connections', 'residual', 'mudd', '--seeds', '2') == 0
    assert (first / 'log.jsonl').read_text() == log  # kept as it was: not trained again
    assert (first / 'checkpoints' / 'last' / 'manifest.json').read_text() == manifest
    report = json.loads((out / 'compare.json').read_text())
    assert [e['seeds'] for e in report['connections']] == [[0, 1], [0, 1]]

    # a run stopped after its first epoch: its newest checkpoint gone, `last` on the epoch-1 one
    stopped = out / 'mudd-seed1' / 'checkpoints'
    folders = sorted(p for p in stopped.iterdir() if p.name.startswith('step-'))
    assert len(folders) == 2
    import shutil
    shutil.rmtree(folders[-1])
    (stopped / 'last').unlink()
    (stopped / 'last').symlink_to(folders[0].name)
    (stopped / 'best').unlink(missing_ok=True)
    (stopped / 'best').symlink_to(folders[0].name)
    assert _compare(config, out, '--connections', 'residual', 'mudd', '--seeds', '2') == 0
    again = json.loads((out / 'compare.json').read_text())
    assert again['connections'][1]['metric'] == report['connections'][1]['metric']  # resumed exactly
    assert logged_steps(out / 'mudd-seed1') == list(range(1, 13))


def test_a_changed_config_is_refused(config, tmp_path, capsys):
    out = tmp_path / 'cmp'
    assert _compare(config, out, '--connections', 'residual', '--seeds', '1') == 0
    capsys.readouterr()
    assert _compare(config, out, '--connections', 'residual', '--seeds', '1', '--opt', 'optim.lr=0.001') == 2
    assert capsys.readouterr().err == (f'error: {out}/residual-seed0 was trained with another config (optim.lr: 0.003 '
                                       f'-> 0.001); give another --out or delete that folder\n')


def test_fine_tuning_each_seed_from_its_plain_run(config, tmp_path):
    """``{seed}`` in an override names each seed's own plain run; the connected model starts as that plain model,
    classifier included."""
    plain = tmp_path / 'plain'
    assert _compare(config, plain, '--connections', 'residual', '--seeds', '2') == 0
    tuned = tmp_path / 'runs' / 'compare-tiny'  # the default --out: <output>/compare-<name>
    weights = f'{plain}/residual-seed{{seed}}/checkpoints/last/model.safetensors'
    assert load_tool('compare').main([str(config), '--latency-iters', '2', '--connections', 'dwa', 'mudd',
                                      '--seeds', '2', '--opt', 'epochs=1', f'model.pretrained_file={weights}']) == 0
    assert (tuned / 'compare.json').is_file()
    for seed in (0, 1):
        saved = yaml.safe_load((tuned / f'dwa-seed{seed}' / 'config.yaml').read_text())
        assert saved['model']['pretrained_file'] == weights.replace('{seed}', str(seed))

    from densezoo.distributed import init_distributed
    from densezoo.engine import load_config
    from densezoo.tasks.base import create_task
    x = torch.randn(4, 3, 16, 16)
    reference = open_model(plain / 'residual-seed1' / 'checkpoints' / 'last').model.eval()
    for kind in ('dwa', 'mudd'):
        values = load_config(config, [f'model.name={PLAIN}_{kind}', 'seed=1',
                                      f'model.pretrained_file={weights.replace("{seed}", "1")}'])
        model = create_task(values, init_distributed('cpu')).build_model().eval()
        with torch.no_grad():
            torch.testing.assert_close(model(x), reference(x), rtol=0, atol=1e-6)


def test_under_torchrun(config, tmp_path):
    out = tmp_path / 'cmp'
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(ROOT)}
    done = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                           str(ROOT / 'tools' / 'compare.py'), str(config), '--out', str(out), '--connections',
                           'residual', 'dwa', '--seeds', '1', '--latency-iters', '2'],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / 'compare.json').read_text())
    for entry in report['connections']:
        run = Path(entry['run_dirs'][0])
        assert logged_steps(run) == list(range(1, 7))  # each process takes half of every batch of 6
        assert entry['metric'] == [_last_val(run, 'top1')]
    assert done.stdout.count('top1 mean ± std (n)') == 1  # one table, from the first process


@pytest.mark.parametrize('args,message', [
    (['--connections', 'dwa', 'skip'], 'unknown connection skip; choose from residual, dwa, mudd, rir, dense, '
                                       'laurel, rezero, value_residual'),
    (['--connections', 'dwa', 'dwa'], '--connections dwa dwa names a connection twice'),
    (['--connections', 'residual', 'value_residual'], f'{PLAIN} has no value_residual variant; choose --connections '
                                                      f'from residual, dwa, mudd, rir, dense'),
])
def test_errors_are_one_line(config, tmp_path, capsys, args, message):
    assert _compare(config, tmp_path / 'cmp', *args) == 2
    assert capsys.readouterr().err == f'error: {message}\n'
    assert not (tmp_path / 'cmp').exists()


def test_missing_config(tmp_path, capsys):
    assert load_tool('compare').main([str(tmp_path / 'none.yaml'), '--connections', 'dwa']) == 2
    assert capsys.readouterr().err == f'error: config {tmp_path}/none.yaml does not exist\n'
