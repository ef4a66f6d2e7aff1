"""tools/latency.py and the measurement library under it."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from densezoo.profile import TensorMemoryTracker, training_step_memory
from densezoo.profile.latency import measure_latency, peak_memory, percentile

ROOT = Path(__file__).resolve().parents[2]


def test_percentile_interpolates():
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5
    assert percentile([7.0], 99) == 7.0


def test_measure_latency_ratios_against_first_model():
    torch.manual_seed(0)
    small = timm.create_model('test_resnet')
    large = timm.create_model('test_resnet')
    models = {'small': small, 'large': large}
    inputs = {'small': torch.randn(2, 3, 64, 64), 'large': torch.randn(2, 3, 128, 128)}
    results = measure_latency(models, inputs, warmup=1, iters=5)
    assert [r.name for r in results] == ['small', 'large']
    first, second = results
    assert first.speed_ratio == 1.0 and first.memory_ratio == 1.0
    for r in results:
        assert 0 < r.p50_ms <= r.p90_ms <= r.p99_ms
        assert r.throughput == pytest.approx(2 / r.p50_ms * 1e3)
        assert len(r.times_ms) == 5 and r.mode == "infer"
        assert r.page_faults is not None and r.page_faults >= 0  # counted on the CPU (Linux)
    assert second.speed_ratio == pytest.approx(first.p50_ms / second.p50_ms)
    # four times the pixels: the activations (and so the peak) of the larger input are clearly larger
    assert second.memory_ratio > 1.5
    train = measure_latency({'small': small}, {'small': inputs['small']}, warmup=1, iters=2, train=True)[0]
    assert train.mode == 'train' and train.peak_memory > results[0].peak_memory


def test_memory_tracker_counts_new_storages_not_views():
    x = torch.randn(1000, 1000)  # 4 MB, made outside the tracker
    with TensorMemoryTracker() as tracker:
        view = x[:10].t()  # a view: no allocation
        y = x * 2  # 4 MB
        y.add_(1)  # in place: no allocation
        z = y + 1  # 4 MB more
        del z
        w = y.sum()
    assert tracker.peak == 8_000_000 + 0 * view.numel()
    assert tracker.live == 4_000_000 + w.element_size()


def test_training_step_memory_reports_weights_and_peak():
    model = torch.nn.Sequential(torch.nn.Linear(100, 100), torch.nn.ReLU(), torch.nn.Linear(100, 1))
    result = training_step_memory(model, torch.randn(32, 100))
    assert result['weights'] == (100 * 100 + 100 + 100 + 1) * 4
    assert result['peak'] == result['peak_step'] + result['weights'] + 32 * 100 * 4
    assert result['peak_step'] >= result['weights']  # gradients of every weight are created in the step
    assert all(p.grad is None for p in model.parameters())
    assert peak_memory(model, torch.randn(32, 100), train=False) > result['weights']


def _run(*args):
    return subprocess.run([sys.executable, str(ROOT / 'tools' / 'latency.py'), *args], capture_output=True,
                          text=True, cwd=ROOT)


def test_cli_table_and_json(tmp_path):
    out = tmp_path / 'latency.json'
    proc = _run('test_vit', 'test_vit', '--batch-size', '1', '2', '--iters', '2', '--warmup', '1',
                '--json', str(out))
    assert proc.returncode == 0, proc.stderr
    assert 'no CUDA device found' in proc.stderr or 'cuda' in proc.stderr.lower()
    assert 'batch 1, infer' in proc.stdout and 'batch 2, infer' in proc.stdout
    assert 'test_vit #2' in proc.stdout  # the same model twice is measured twice
    payload = json.loads(out.read_text())
    assert [(r['name'], r['batch_size']) for r in payload['results']] == [
        ('test_vit', 1), ('test_vit #2', 1), ('test_vit', 2), ('test_vit #2', 2)]
    assert payload['results'][0]['speed_ratio'] == 1.0


def test_cli_rejects_unknown_model_with_suggestion():
    proc = _run('swin_tiny_patch4_window7_224_dwaa')
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: unknown model 'swin_tiny_patch4_window7_224_dwaa'; did you mean swin_tiny_patch4_window7_224_dwa, "
        "swin_tiny_patch4_window7_224, swin_tiny_patch4_window7_224_mudd?")


def test_cli_rejects_bad_model_kwargs():
    proc = _run('test_vit', '--model-kwargs', 'depth')
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: model kwarg 'depth' is not of the form key=value"


@pytest.mark.parametrize('args, message', [
    (['--batch-size', '0'], 'argument --batch-size: must be at least 1, got 0'),
    (['--batch-size', '1', '-2'], 'argument --batch-size: must be at least 1, got -2'),
    (['--iters', '0'], 'argument --iters: must be at least 1, got 0'),
    (['--img-size', '-5'], 'argument --img-size: must be at least 1, got -5'),
    (['--warmup', '-1'], 'argument --warmup: must be at least 0, got -1'),
    (['--threads', '0'], 'argument --threads: must be at least 1, got 0'),
    (['--iters', 'many'], "argument --iters: must be an integer, got 'many'"),
    (['--device', 'tpu'], "argument --device: must be one of cpu, cuda, cuda:N, got 'tpu'"),
])
def test_cli_rejects_out_of_range_numbers_in_one_line(capsys, args, message):
    from densezoo.cli.latency import parse_args
    with pytest.raises(SystemExit) as info:
        parse_args(['test_vit', *args])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f'error: {message}')
    valid = parse_args(['test_vit', '--warmup', '0', '--batch-size', '1', '4', '--device', 'cuda:1'])
    assert valid.batch_size == [1, 4] and valid.warmup == 0 and valid.device == 'cuda:1'


@pytest.mark.parametrize('tool, args, message', [
    ('latency.py', ['--batch-size', '0'], 'latency.py: error: argument --batch-size: must be at least 1, got 0'),
    ('flops.py', ['--img-size', '0'], 'flops.py: error: argument --img-size: must be at least 1, got 0'),
    ('eval_sr.py', ['--checkpoint', 'w.pth', '--data', 'd', '--jpeg-quality', '0'],
     'eval_sr.py: error: argument --jpeg-quality: must be at least 1, got 0'),
])
def test_tools_reject_bad_numbers_before_building_anything(tool, args, message):
    proc = subprocess.run([sys.executable, str(ROOT / 'tools' / tool), 'test_vit', *args], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 2 and proc.stdout == ''
    assert proc.stderr.strip().splitlines()[-1] == message


def test_cli_rejects_model_kwargs_the_model_does_not_take():
    proc = _run('test_vit', '--model-kwargs', 'depthh=2', '--iters', '1', '--warmup', '0')
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('error: test_vit: ') and "unexpected keyword argument 'depthh'" in last, proc.stderr
