"""tools/flops.py and densezoo.profile.flops: both counters see attention, in-place fusions and weighted sums."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from densezoo.layers.connections import StageConnection
from densezoo.profile.flops import count, format_table
from tests.helpers import load_tool

ROOT = Path(__file__).resolve().parents[2]
SWIN = 'swin_tiny_patch4_window7_224'
# swin_tiny at 224: (tokens, dim, depth) of each stage
STAGES = [(56 * 56, 96, 2), (28 * 28, 192, 2), (14 * 14, 384, 6), (7 * 7, 768, 2)]


def _load_tool():
    return load_tool('flops')


class _AttentionThenAddmm(nn.Module):
    """Fused attention (the CPU flash kernel: D == Dv, no dropout) and an in-place matrix accumulation."""

    def __init__(self, dim: int = 8, out: int = 5, keys: int = 6):
        super().__init__()
        self.keys = keys
        self.weight = nn.Parameter(torch.randn(dim, out))

    def forward(self, x):  # (B, H, L, D)
        kv = x[:, :, :self.keys]
        y = F.scaled_dot_product_attention(x, kv, kv).flatten(0, 2)
        return y.new_zeros(y.shape[0], self.weight.shape[1]).addmm_(y, self.weight)


def test_attention_and_inplace_addmm_counted_exactly_by_both():
    model = _AttentionThenAddmm()
    report = count(model, input_size=(3, 10, 8), batch_size=2)
    rows = 2 * 3 * 10
    attention = rows * 6 * (8 + 8)  # B*H*Lq * Lk * (D + Dv)
    addmm = rows * 8 * 5
    assert report.macs_fvcore == report.macs_torch == attention + addmm
    assert report.agreement == 0 and report.flops == 2 * (attention + addmm)
    assert report.params == 40 and report.mixing_macs == 0
    assert report.activations == rows * (6 + 8)  # what the unfused attention makes: scores and output


@pytest.fixture(scope='module')
def swin_plain():
    return count(timm.create_model(SWIN), name=SWIN)


def test_swin_tiny_matches_timm_published_counts(swin_plain):
    # timm's card: 28.3 M params, 4.5 GMACs, 17.1 M activations; fvcore also counts layer norms, torch does not
    assert swin_plain.params == 28_288_354
    assert swin_plain.macs_fvcore == pytest.approx(4.51e9, rel=0.01)
    assert swin_plain.macs_torch == pytest.approx(4.491e9, rel=0.001)
    assert 0 < swin_plain.agreement < 0.02
    assert swin_plain.activations == pytest.approx(17.1e6, rel=0.01)


def test_pvt_v2_attention_is_counted():
    report = count(timm.create_model('pvt_v2_b0'), activations=False)
    # without the fused attention both counters give about 0.53 GMACs
    assert report.macs_fvcore == pytest.approx(0.572e9, rel=0.005)
    assert report.macs_torch == pytest.approx(0.566e9, rel=0.005)
    assert report.agreement < 0.02


def _dwa_macs() -> int:
    # dilation = period = 1: block i averages X_0..X_{i+1}, i + 2 scalars, one multiply-add per element each
    return sum(tokens * dim * sum(i + 2 for i in range(depth)) for tokens, dim, depth in STAGES)


def _mudd_macs() -> int:
    total = 0
    for tokens, dim, depth in STAGES:
        for i in range(depth):
            inputs = i + 2  # one stream mixing X_0..X_{i+1}
            hidden = inputs // 64 * 64 + 64
            total += tokens * (dim * hidden + hidden * inputs)  # generator D -> hidden -> C * (i + 2)
            total += tokens * dim * inputs  # the weighted sum
    return total


def _rir_macs() -> int:
    # groups of 2 blocks and a long skip: depth / 2 + 1 linear D x D projections per stage
    return sum(tokens * dim * dim * (depth // 2 + 1) for tokens, dim, depth in STAGES)


def _dense_macs(growth: int = 32) -> int:
    # per block: transition D -> growth, fusion of D + (i + 1) * growth channels -> D
    return sum(tokens * (dim * growth + dim * (dim + (i + 1) * growth))
               for tokens, dim, depth in STAGES for i in range(depth))


CONNECTIONS = {
    'dwa': (_dwa_macs, dict(dilation=1, period=1)),
    'mudd': (_mudd_macs, dict(num_streams=1)),
    'rir': (_rir_macs, dict(group_size=2, long_skip=True, projection='linear')),
    'dense': (_dense_macs, dict(growth=32)),
}


@pytest.mark.parametrize('kind', list(CONNECTIONS))
def test_connection_macs_are_plain_plus_their_formula(kind, swin_plain):
    formula, options = CONNECTIONS[kind]
    model = timm.create_model(f'{SWIN}_{kind}')
    connections = [m for m in model.modules() if isinstance(m, StageConnection)]
    assert [c.num_blocks for c in connections] == [depth for _, _, depth in STAGES]
    assert all(getattr(c, key) == value for c in connections for key, value in options.items())

    report = count(model.train(), activations=False)
    assert report.macs_fvcore == swin_plain.macs_fvcore + formula()
    assert report.macs_torch == swin_plain.macs_torch + formula()
    assert model.training  # the mode is restored
    assert not any(c._forward_hooks for c in connections)  # and the counting hooks removed


def test_format_table_rows():
    report = count(_AttentionThenAddmm(), input_size=(3, 10, 8), name='tiny')
    assert format_table([report]).splitlines() == [
        '| model | params | GMACs | activations (M) |', '|---|---:|---:|---:|', '| `tiny` | 40 | 0.00 | 0.0 |']


def test_cli_markdown_table_and_json_file(tmp_path, capsys):
    out = tmp_path / 'flops.json'
    assert _load_tool().main(['test_vit', 'test_resnet', '--table', '--json', str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    cells = [[c.strip() for c in line.strip().strip('|').split('|')] for line in lines]
    assert cells[0] == ['model', 'params', 'GMACs', 'activations (M)']
    assert all(re.fullmatch(r'-{3,}:?', c) for c in cells[1])
    assert [row[0] for row in cells[2:]] == ['`test_vit`', '`test_resnet`']

    payload = json.loads(out.read_text())
    assert payload['batch_size'] == 1 and payload['torch'] == torch.__version__
    results = {r['name']: r for r in payload['results']}
    for row in cells[2:]:
        result = results[row[0].strip('`')]
        assert int(row[1].replace(',', '')) == result['params']
        assert float(row[2]) == round(result['macs_fvcore'] / 1e9, 2)
        assert float(row[3]) == round(result['activations'] / 1e6, 1)
        assert result['flops'] == 2 * result['macs_fvcore'] and result['agreement'] < 0.02
    assert results['test_vit']['params'] == sum(p.numel() for p in timm.create_model('test_vit').parameters())


def test_cli_json_on_stdout_keeps_the_table_off_it(capsys):
    assert _load_tool().main(['test_vit', '--batch-size', '2', '--json']) == 0
    captured = capsys.readouterr()
    payload = json.loads(captured.out)
    assert payload['batch_size'] == 2 and payload['results'][0]['input_size'] == [3, 160, 160]
    assert 'GMACs fvcore' in captured.err and 'test_vit' in captured.err


def test_cli_unknown_model_exits_2_with_one_line():
    proc = subprocess.run([sys.executable, str(ROOT / 'tools' / 'flops.py'), 'test_vit', 'swin_tiny_patch4_window7'],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and proc.stdout == ''
    assert proc.stderr.startswith("error: unknown model 'swin_tiny_patch4_window7'")
    assert len(proc.stderr.strip().splitlines()) == 1
