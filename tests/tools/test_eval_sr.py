"""tools/eval_sr.py and densezoo.tasks.sr_eval: benchmark folders, weights files and training runs, the options,
the table / JSON / PNG outputs, and one-line errors."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tests.sr_standin  # noqa: F401  (registers the stand-in models)
from densezoo.datasets import imresize
from densezoo.engine import config_from_dict, train
from densezoo.engine.checkpoint import save_weights
from densezoo.tasks.sr_eval import evaluate_benchmark, load_sr_model, sr_forward
from densezoo.metrics.sr import psnr, ssim
from tests.sr_standin import StandInSR, make_sr_images, smooth_image, sr_config
from tests.helpers import load_tool


def _tool():
    return load_tool('eval_sr')


@pytest.fixture(scope='module')
def bench(tmp_path_factory) -> Path:
    """``Set2/HR`` (sizes not multiples of 2, benchmark naming of the LR files) and ``Other/HR`` (no LR folder)."""
    root = tmp_path_factory.mktemp('bench')
    for name, sizes, with_lr in (('Set2', [(27, 30), (20, 23)], True), ('Other', [(24, 26)], False)):
        (root / name / 'HR').mkdir(parents=True)
        for i, size in enumerate(sizes):
            image = smooth_image(size, seed=10 + i)
            Image.fromarray(image).save(root / name / 'HR' / f'img{i}.png')
            if with_lr:
                (root / name / 'LR_bicubic' / 'X2').mkdir(parents=True, exist_ok=True)
                cut = image[:size[0] // 2 * 2, :size[1] // 2 * 2]
                Image.fromarray(imresize(cut, 1 / 2)).save(root / name / 'LR_bicubic' / 'X2' / f'img{i}x2.png')
    return root


@pytest.fixture(scope='module')
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = StandInSR(upscale=2)
    torch.nn.init.normal_(model.conv2.weight, std=0.01)
    path = tmp_path_factory.mktemp('weights') / 'standin_x2.safetensors'
    save_weights(model, path)
    return path


def _expected(model, folder: Path, name: str, lr_from_hr: bool):
    hr = np.asarray(Image.open(folder / 'HR' / f'{name}.png'))
    hr = hr[:hr.shape[0] // 2 * 2, :hr.shape[1] // 2 * 2]
    lr = imresize(hr, 1 / 2) if lr_from_hr else np.asarray(Image.open(folder / 'LR_bicubic' / 'X2' / f'{name}x2.png'))
    to_tensor = lambda x: torch.from_numpy(x.transpose(2, 0, 1) / np.float32(255))  # noqa: E731
    with torch.no_grad():
        sr = model(to_tensor(lr)[None])[0]
    return psnr(sr, to_tensor(hr), 2), ssim(sr, to_tensor(hr), 2), sr


def test_library_scores_match_a_direct_computation(bench, weights, tmp_path):
    model, used = load_sr_model('densezoo_test_sr_x2', weights)
    assert used == weights and not model.training
    scores = evaluate_benchmark(model, bench / 'Set2', 2, save_dir=tmp_path / 'out')
    assert scores.name == 'Set2' and scores.lr_source.endswith('LR_bicubic/X2')
    assert [i.name for i in scores.images] == ['img0', 'img1'] and scores.images[0].lr_size == (13, 15)
    for image in scores.images:
        expected_psnr, expected_ssim, sr = _expected(model, bench / 'Set2', image.name, lr_from_hr=False)
        assert image.psnr == pytest.approx(expected_psnr, abs=1e-9) and image.ssim == pytest.approx(expected_ssim)
        saved = np.asarray(Image.open(tmp_path / 'out' / 'Set2' / f'{image.name}.png'))
        assert np.array_equal(saved, (sr.clamp(0, 1) * 255).round().byte().numpy().transpose(1, 2, 0))
    assert scores.psnr == pytest.approx(sum(i.psnr for i in scores.images) / 2)
    other = evaluate_benchmark(model, bench / 'Other', 2)
    assert other.lr_source == 'bicubic from HR'
    assert other.images[0].psnr == pytest.approx(_expected(model, bench / 'Other', 'img0', lr_from_hr=True)[0])


def test_self_ensemble_and_tiles_in_the_library(bench, weights):
    model, _ = load_sr_model('densezoo_test_sr_x2', weights)
    plain = evaluate_benchmark(model, bench / 'Set2', 2)
    tiled = evaluate_benchmark(model, bench / 'Set2', 2, forward=sr_forward(tile=8, overlap=4))
    ensembled = evaluate_benchmark(model, bench / 'Set2', 2, forward=sr_forward(ensemble=True))
    assert [i.psnr for i in tiled.images] == pytest.approx([i.psnr for i in plain.images], abs=1e-3)
    assert [i.psnr for i in ensembled.images] != pytest.approx([i.psnr for i in plain.images], abs=1e-3)


def test_tool_prints_the_table_and_writes_json_and_images(bench, weights, tmp_path, capsys):
    code = _tool().main(['densezoo_test_sr_x2', '--checkpoint', str(weights), '--data', str(bench / 'Set2'),
                         str(bench / 'Other'), '--json', str(tmp_path / 'r.json'), '--save', str(tmp_path / 'sr'),
                         '--self-ensemble', '--tile', '8', '--tile-overlap', '4'])
    out = capsys.readouterr().out
    assert code == 0
    assert 'x2, Y channel, crop 2, self-ensemble x8, tiles 8 (overlap 4)' in out
    assert 'Set2/img0' in out and 'Set2 mean (2 images)' in out and 'Other mean (1 images)' in out
    results = json.loads((tmp_path / 'r.json').read_text())
    assert results['scale'] == 2 and results['self_ensemble'] and results['tile'] == 8
    assert [b['name'] for b in results['benchmarks']] == ['Set2', 'Other']
    assert len(results['benchmarks'][0]['images']) == 2 and results['benchmarks'][0]['images'][0]['lr_size'] == [13, 15]
    assert sorted(p.name for p in (tmp_path / 'sr' / 'Set2').iterdir()) == ['img0.png', 'img1.png']
    assert Image.open(tmp_path / 'sr' / 'Other' / 'img0.png').size == (26, 24)
    assert _tool().main(['densezoo_test_sr_x2', '--checkpoint', str(weights), '--data', str(bench / 'Set2'),
                         '--rgb', '--crop-border', '0', '--json']) == 0
    rgb = json.loads(capsys.readouterr().out)
    assert rgb['y_channel'] is False and rgb['crop_border'] == 0


def test_tool_evaluates_a_training_run_with_its_model_arguments(bench, tmp_path, capsys):
    data = make_sr_images(tmp_path / 'data', count=(4, 1), size=(24, 24))
    values = sr_config(data, tmp_path / 'runs', epochs=1, ema_decay=0.5)
    values['model']['kwargs'] = dict(width=6)  # not the default: the run's config.yaml must supply it
    result = train(config_from_dict(values), run_dir=tmp_path / 'run', progress=False)
    model, used = load_sr_model('densezoo_test_sr_x2', result.run_dir)
    assert used == (tmp_path / 'run' / 'checkpoints' / 'best' / 'ema.safetensors').resolve()
    assert model.conv1.out_channels == 6
    _, plain = load_sr_model('densezoo_test_sr_x2', result.run_dir, ema=False)
    assert plain.name == 'model.safetensors'
    _, inner = load_sr_model('densezoo_test_sr_x2', result.run_dir / 'checkpoints' / 'last' / 'model.safetensors')
    assert inner.name == 'model.safetensors'
    assert _tool().main(['densezoo_test_sr_x2', '--checkpoint', str(result.run_dir), '--data',
                         str(bench / 'Set2')]) == 0
    assert 'ema.safetensors' in capsys.readouterr().out


@pytest.mark.parametrize('case, message', [
    ('unknown model', r"error: unknown model 'densezoo_test_sr_x5'; did you mean .*densezoo_test_sr_x2"),
    ('no checkpoint', r"error: checkpoint '.*missing.safetensors' does not exist$"),
    ('no folder', r"error: benchmark folder '.*Set99' does not exist$"),
    ('no HR', r"error: benchmark folder '.*LR_bicubic' has no HR sub-folder; expected LR_bicubic/HR/\*.png \(and "
              r"optionally LR_bicubic/LR_bicubic/X2/\*.png\)$"),
    ('tile', r'error: --tile 4 --tile-overlap 4 are not allowed: the tile must be positive and larger than the '
             r'overlap \(0 or more\)$'),
    ('scale', r'error: --scale 3 does not match densezoo_test_sr_x2, which upscales x2$'),
    ('kwargs', r"error: the weights in '.*standin_x2.safetensors' do not fit densezoo_test_sr_x2 \(.*\); check "
               r"--model-kwargs$"),
    ('other run', r"error: checkpoint '.*run/checkpoints/step-00000001' was trained as 'densezoo_test_sr_x2', not "
                  r"'densezoo_test_sr_x3'$"),
])
def test_tool_errors_are_one_line(bench, weights, tmp_path, capsys, case, message):
    args = ['densezoo_test_sr_x2', '--checkpoint', str(weights), '--data', str(bench / 'Set2')]
    if case == 'unknown model':
        args[0] = 'densezoo_test_sr_x5'
    elif case == 'no checkpoint':
        args[2] = str(tmp_path / 'missing.safetensors')
    elif case == 'no folder':
        args[4] = str(bench / 'Set99')
    elif case == 'no HR':
        args[4] = str(bench / 'Set2' / 'LR_bicubic')
    elif case == 'tile':
        args += ['--tile', '4', '--tile-overlap', '4']
    elif case == 'scale':
        args += ['--scale', '3']
    elif case == 'kwargs':
        args += ['--model-kwargs', 'width=4']
    elif case == 'other run':
        run = tmp_path / 'run' / 'checkpoints' / 'step-00000001'
        run.mkdir(parents=True)
        save_weights(StandInSR(upscale=3), run / 'model.safetensors')
        (tmp_path / 'run' / 'config.yaml').write_text('model: {name: densezoo_test_sr_x2}\n')
        args = ['densezoo_test_sr_x3', '--checkpoint', str(run), '--data', str(bench / 'Set2')]
    assert _tool().main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert re.match(message, err), err


def test_tool_scores_niqe_and_lpips_on_real_world_inputs(weights, tmp_path, capsys):
    """NIQE and LPIPS (random weights in the files' layouts) on the bundled photograph degraded by the seeded
    Real-ESRGAN pipeline: the tool's numbers equal the metrics computed directly on the same input."""
    import torchvision
    from densezoo.metrics.lpips import LIN_CHANNELS, LPIPS
    from densezoo.metrics.niqe import niqe
    from densezoo.tasks.sr_eval import benchmark_dataset
    torch.manual_seed(0)
    torch.save({k: v for k, v in torchvision.models.alexnet().state_dict().items() if k.startswith('features.')},
               tmp_path / 'alexnet.pth')
    torch.save({f'lin{i}.model.1.weight': torch.rand(1, c, 1, 1) / c for i, c in enumerate(LIN_CHANNELS['alex'])},
               tmp_path / 'alex.pth')
    folder = Path(__file__).resolve().parents[2] / 'data' / 'sr_demo' / 'val'
    args = ['densezoo_test_sr_x2', '--checkpoint', str(weights), '--data', str(folder), '--degradation', 'realesrgan',
            '--seed', '3', '--niqe', '--lpips', 'alex', '--lpips-backbone', str(tmp_path / 'alexnet.pth'),
            '--lpips-weights', str(tmp_path / 'alex.pth'), '--json', str(tmp_path / 'r.json')]
    assert _tool().main(args) == 0
    out = capsys.readouterr().out
    assert 'NIQE' in out.splitlines()[1] and 'LPIPS' in out.splitlines()[1]
    result = json.loads((tmp_path / 'r.json').read_text())['benchmarks'][0]
    assert result['lr_source'] == 'HR degraded by realesrgan (seed 3)'
    lr, hr = benchmark_dataset(folder, 2, degradation='realesrgan', seed=3)[0][0]
    model, _ = load_sr_model('densezoo_test_sr_x2', weights)
    with torch.no_grad():
        sr = model(lr[None])[0]
        distance = float(LPIPS('alex', backbone_weights=tmp_path / 'alexnet.pth',
                               lin_weights=tmp_path / 'alex.pth')(sr.clamp(0, 1), hr))
    assert result['niqe'] == pytest.approx(niqe(sr, crop_border=2), abs=1e-9)
    assert result['lpips'] == pytest.approx(distance, abs=1e-6) and 0 < distance < 1
    assert result['psnr'] == pytest.approx(psnr(sr, hr, 2), abs=1e-9)
    # the same seed, the same inputs; another seed, other inputs
    assert _tool().main(args[:-2] + ['--json']) == 0
    assert json.loads(capsys.readouterr().out)['benchmarks'][0]['psnr'] == result['psnr']
    assert _tool().main(args[:8] + ['4', '--json']) == 0
    assert json.loads(capsys.readouterr().out)['benchmarks'][0]['psnr'] != result['psnr']


def test_tool_needs_both_lpips_files(weights, bench, capsys):
    assert _tool().main(['densezoo_test_sr_x2', '--checkpoint', str(weights), '--data', str(bench / 'Set2'),
                         '--lpips', 'alex']) == 2
    assert capsys.readouterr().err == ("error: --lpips alex needs --lpips-backbone (torchvision's ImageNet weights of "
                                       "the backbone) and --lpips-weights (the lpips package's weights/v0.1/alex.pth)"
                                       "\n")
