"""tools/inspect_connections.py: the report of a connected model's weights file, MUDD's generated weights on an
image, and one-line errors."""
import json
from pathlib import Path

import timm

import densezoo
from densezoo.engine.checkpoint import save_weights
from tests.helpers import load_tool, perturb_connections

IMAGE = Path(__file__).resolve().parents[2] / 'data' / 'sr_demo' / 'val' / 'HR' / 'china_171_384.png'
ARGS = ['img_size=32', 'patch_size=8', 'embed_dim=32', 'depth=4', 'num_heads=2', 'num_classes=3']


def _weights(name: str, path: Path):
    model = timm.create_model(name, **{k: int(v) for k, v in (a.split('=') for a in ARGS)})
    perturb_connections(model, std=0.1)
    save_weights(model, path)
    return model


def test_report_of_a_weights_file(tmp_path, capsys):
    model = _weights('vit_tiny_patch16_224_dwa', tmp_path / 'dwa.safetensors')
    tool = load_tool('inspect_connections')
    assert tool.main(['vit_tiny_patch16_224_dwa', '--checkpoint', str(tmp_path / 'dwa.safetensors'),
                      '--model-kwargs', *ARGS, '--out', str(tmp_path / 'out')]) == 0
    out = capsys.readouterr().out
    assert out.startswith('connection: dwa, 4 blocks, largest move') and 'heat maps:' in out
    report = json.loads((tmp_path / 'out' / 'connections.json').read_text())
    expected = densezoo.inspect_connections(model.eval())[0]
    record = report['connections'][0]
    assert record['kind'] == 'dwa' and record['moved'] == expected.moved
    alphas = expected.coefficients['alphas']
    assert record['coefficients']['alphas'][3] == alphas[3].tolist()
    assert record['coefficients']['alphas'][0][2] is None  # no weight there: null in JSON
    assert (tmp_path / 'out' / 'connections.png').stat().st_size > 1000


def test_mudd_weights_on_an_image(tmp_path, capsys):
    _weights('vit_tiny_patch16_224_mudd', tmp_path / 'mudd.safetensors')
    tool = load_tool('inspect_connections')
    assert tool.main(['vit_tiny_patch16_224_mudd', '--checkpoint', str(tmp_path / 'mudd.safetensors'),
                      '--model-kwargs', *ARGS, '--sample', str(IMAGE), '--out', str(tmp_path / 'out')]) == 0
    record = json.loads((tmp_path / 'out' / 'connections.json').read_text())['connections'][0]
    assert sorted(record['dynamic']) == sorted([f'{s}.{i}' for s in ('mean', 'std') for i in range(4)])
    assert max(max(row) for row in record['dynamic']['std.0']) > 0


def test_errors_are_one_line(tmp_path, capsys):
    tool = load_tool('inspect_connections')
    plain = timm.create_model('vit_tiny_patch16_224', **{k: int(v) for k, v in (a.split('=') for a in ARGS)})
    save_weights(plain, tmp_path / 'plain.safetensors')
    assert tool.main(['vit_tiny_patch16_224', '--checkpoint', str(tmp_path / 'plain.safetensors'),
                      '--model-kwargs', *ARGS, '--out', str(tmp_path / 'out')]) == 2
    assert capsys.readouterr().err == ('error: vit_tiny_patch16_224 has no connections to inspect; give a connected '
                                       'model (e.g. vit_tiny_patch16_224_dwa)\n')
    (tmp_path / 'bad.png').write_bytes(b'not an image')
    _weights('vit_tiny_patch16_224_mudd', tmp_path / 'mudd.safetensors')
    assert tool.main(['vit_tiny_patch16_224_mudd', '--checkpoint', str(tmp_path / 'mudd.safetensors'),
                      '--model-kwargs', *ARGS, '--sample', str(tmp_path / 'bad.png'), '--out', str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'error: --sample {tmp_path / "bad.png"}: cannot read the image') and err.count('\n') == 1


def test_history_of_a_run(tmp_path, capsys):
    """--history: the moves at step 0 (all zero), then at each kept checkpoint those of that checkpoint's model."""
    from densezoo.engine import config_from_dict, train
    from densezoo.hub.export import open_model
    from tests.engine.conftest import make_dataset, tiny_config
    values = tiny_config(make_dataset(tmp_path / 'data'), tmp_path / 'runs', checkpoint_every=2, keep_checkpoints=9)
    values['model']['name'] = 'swin_tiny_patch4_window7_224_mudd'
    run = train(config_from_dict(values), run_dir=tmp_path / 'run', progress=False).run_dir
    tool = load_tool('inspect_connections')
    assert tool.main([str(run), '--history', '--out', str(tmp_path / 'out')]) == 0
    assert 'moves by step:' in capsys.readouterr().out
    history = json.loads((tmp_path / 'out' / 'history.json').read_text())
    assert [entry['step'] for entry in history] == [0, 2, 4, 6, 8, 10, 12]
    names = ['layers.0.connection', 'layers.1.connection']
    assert sorted(history[0]['moved']) == names
    assert all(v == 0 for name in names for v in history[0]['moved'][name].values())
    for entry in history[1:]:
        # the end of epoch 1 (step 6) is a second checkpoint of that step: the later one counts
        folder = sorted((run / 'checkpoints').glob(f'step-{entry["step"]:08d}*'))[-1]
        model = open_model(folder).model
        expected = {r.name: r.moved for r in densezoo.inspect_connections(model)}
        assert entry['moved'] == expected and max(expected[names[0]].values()) > 0
    assert (tmp_path / 'out' / 'history.png').stat().st_size > 1000
    assert tool.main(['swin_tiny_patch4_window7_224_mudd', '--checkpoint', str(run), '--history',
                      '--out', str(tmp_path / 'o')]) == 2
    assert capsys.readouterr().err == ("error: --history needs a run folder; 'swin_tiny_patch4_window7_224_mudd' is "
                                       "not one\n")
