"""tools/validate.py and densezoo.tasks.validate: classification numbers equal a plain loop over timm's own eval
transform and a run's logged validation; segmentation numbers equal densezoo's metrics computed directly and a
run's logged validation; one-line errors before any compute; JSON output."""
import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from timm.data import ImageDataset, create_transform, resolve_data_config

import densezoo  # noqa: F401  (registers densezoo's models)
from densezoo.engine import config_from_dict, train
from densezoo.engine.checkpoint import save_weights
from densezoo.heads.segmentor import create_segmentor
from densezoo.metrics.segmentation import confusion_matrix, segmentation_scores
from densezoo.tasks.segmentation import slide_inference
from densezoo.tasks.validate import model_source, prepare_classification, run_classification, validate
from tests.engine.conftest import TINY_MODEL, make_dataset, tiny_config
from tests.helpers import load_tool

ROOT = Path(__file__).resolve().parents[2]
NAME = TINY_MODEL['name']
KWARGS = TINY_MODEL['kwargs']  # a 16x16 Swin
SEG_BACKBONE = dict(embed_dim=8, depths=[1, 1, 2, 1], num_heads=[1, 1, 2, 2], window_size=4)
SEG_HEAD = dict(channels=8)
CLASSES = [f'c{i}' for i in range(7)]  # more than five: top-5 is not 100% by construction


def _tool():
    return load_tool('validate')


def _records(run: Path, step: int) -> dict:
    """The validation record of ``run``'s log at ``step``."""
    records = [json.loads(line) for line in (run / 'log.jsonl').read_text().splitlines()]
    return next(r for r in records if r['kind'] == 'val' and r['step'] == step)


def _best_step(run: Path) -> int:
    return json.loads((run / 'checkpoints' / 'best' / 'manifest.json').read_text())['step']


# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def folder(tmp_path_factory) -> Path:
    """``val/<c0..c6>/<n>.png``: noisy images of different sizes, so resizing and cropping matter."""
    root = tmp_path_factory.mktemp('imagenet')
    rng = np.random.default_rng(0)
    for k, name in enumerate(CLASSES):
        (root / 'val' / name).mkdir(parents=True)
        for n in range(3):
            size = (18 + 3 * n, 24 - 2 * n, 3)
            pixels = np.clip(rng.normal(30 * k, 60, size), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / 'val' / name / f'{n}.png')
    return root


@pytest.fixture(scope='module')
def classifier_file(tmp_path_factory) -> Path:
    """A timm training checkpoint of the 16x16 Swin with 7 classes: 'state_dict', 'state_dict_ema' (different
    weights) and the arguments as an ``argparse.Namespace``."""
    torch.manual_seed(0)
    model = timm.create_model(NAME, num_classes=len(CLASSES), **KWARGS)
    ema = timm.create_model(NAME, num_classes=len(CLASSES), **KWARGS)
    with torch.no_grad():
        for param in [*model.parameters(), *ema.parameters()]:
            param.normal_(0, 0.3)
    path = tmp_path_factory.mktemp('weights') / 'checkpoint.pth.tar'
    torch.save(dict(state_dict=model.state_dict(), state_dict_ema=ema.state_dict(), epoch=3,
                    args=argparse.Namespace(model=NAME)), path)
    return path


def _plain_loop(state: dict, data: Path) -> dict:
    """Top-1 / top-5 / loss of the model with ``state`` over timm's ImageDataset with timm's eval transform, image by
    image."""
    model = timm.create_model(NAME, num_classes=len(CLASSES), **KWARGS).eval()
    model.load_state_dict(state)
    config = resolve_data_config({'img_size': KWARGS['img_size']}, model=model, use_test_size=True)
    dataset = ImageDataset(str(data), transform=create_transform(**config, is_training=False))
    top1 = top5 = loss = 0.
    with torch.no_grad():
        for image, target in dataset:
            logits = model(image[None])[0]
            top1 += float(logits.argmax() == target)
            top5 += float(target in logits.topk(5).indices)
            loss += F.cross_entropy(logits[None], torch.tensor([target])).item()
    return dict(top1=100 * top1 / len(dataset), top5=100 * top5 / len(dataset), loss=loss / len(dataset),
                count=len(dataset), config=config)


def test_classification_equals_a_plain_loop_with_timms_transform(folder, classifier_file):
    checkpoint = torch.load(classifier_file, weights_only=False)
    for ema, key in ((True, 'state_dict_ema'), (False, 'state_dict')):
        source = model_source(NAME, classifier_file, ema=ema, model_kwargs=KWARGS)
        setup = prepare_classification(source, folder, batch_size=4)  # batches of 4, the last one of 1
        assert setup.dataset.folder == folder / 'val' and setup.classes == CLASSES
        result = run_classification(setup)
        expected = _plain_loop(checkpoint[key], folder / 'val')
        assert result.images == expected['count'] == 21 and result.num_classes == 7 and result.topk == 5
        assert result.top1 == pytest.approx(expected['top1'], abs=1e-9)
        assert result.top5 == pytest.approx(expected['top5'], abs=1e-9)
        assert result.loss == pytest.approx(expected['loss'], rel=1e-5)
        assert {k: result.data_config[k] for k in expected['config']} == expected['config']
    assert 0 < result.top1 < 100 and 0 < result.top5 < 100  # the numbers say something
    assert result.summary() == (f' * Acc@1 {result.top1:.3f} ({100 - result.top1:.3f}) Acc@5 {result.top5:.3f} '
                                f'({100 - result.top5:.3f})')
    row = result.to_dict()
    assert row['model'] == NAME and row['img_size'] == 16 and row['crop_pct'] == 0.9
    assert row['interpolation'] == 'bicubic' and row['param_count'] == round(result.param_count / 1e6, 2)
    assert row['top1_err'] == pytest.approx(100 - row['top1'])


def test_classification_options_change_the_transform(folder, classifier_file):
    source = model_source(NAME, classifier_file, model_kwargs=KWARGS)
    setup = prepare_classification(source, folder / 'val', crop_pct=1.0, interpolation='bilinear')
    assert setup.data_config['crop_pct'] == 1.0 and setup.data_config['interpolation'] == 'bilinear'
    assert setup.batch_size == 256
    mapped = folder.parent / 'class_map.txt'
    mapped.write_text('\n'.join(reversed(CLASSES)) + '\n')
    reversed_setup = prepare_classification(source, folder, class_map=mapped)
    assert reversed_setup.dataset.class_to_idx['c0'] == 6
    plain = run_classification(prepare_classification(source, folder))
    assert run_classification(reversed_setup).loss != pytest.approx(plain.loss, rel=1e-3)


# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def cls_run(tmp_path_factory) -> Path:
    """A classification run of two steps with EMA: its validation is neither perfect nor useless."""
    tmp = tmp_path_factory.mktemp('cls_run')
    data = make_dataset(tmp / 'data', per_class=(6, 5))
    values = tiny_config(data, tmp / 'runs', epochs=1, max_steps=2, ema_decay=0.5,
                         **{'data.batch_size': 4, 'optim.lr': 3e-4})
    values['data']['val_batch_size'] = 4  # 15 images: batches of 4, 4, 4, 3
    return train(config_from_dict(values), run_dir=tmp / 'run', progress=False).run_dir


def test_a_run_reproduces_its_logged_validation(cls_run, capsys):
    logged = _records(cls_run, _best_step(cls_run))
    assert 0 < logged['top1'] < 100 or 0 < logged['ema_top1'] < 100
    for args, prefix, weights in (([], 'ema_', 'ema.safetensors'), (['--no-ema'], '', 'model.safetensors')):
        assert _tool().main([str(cls_run), '--json', '--workers', '0', *args]) == 0
        captured = capsys.readouterr()
        result = json.loads(captured.out)
        assert result['checkpoint'].endswith(weights) and result['batch_size'] == 4
        assert result['images'] == logged[f'{prefix}count'] == 15 and result['topk'] == 3
        assert result['top1'] == round(logged[f'{prefix}top1'], 4)
        assert result['top5'] == round(logged[f'{prefix}top5'], 4)
        assert result['loss'] == logged[f'{prefix}loss']  # exactly: the same transform, batches and sums
        assert " * Acc@1" in captured.err and "the run's training classes" in captured.err
    assert result['img_size'] == 16 and result['crop_pct'] == 1.0


def test_a_run_maps_classes_as_it_trained(cls_run, tmp_path):
    """Validation data with only some of the classes keeps the run's indices (blue 0, green 1, red 2)."""
    data = Path(yaml.safe_load((cls_run / 'config.yaml').read_text())['data']['root'])
    subset = tmp_path / 'subset'
    for name in ('green', 'red'):
        (subset / name).mkdir(parents=True)
        for image in sorted((data / 'val' / name).iterdir()):
            (subset / name / image.name).write_bytes(image.read_bytes())
    source = model_source(str(cls_run))
    setup = prepare_classification(source, subset)
    assert setup.classes == ['blue', 'green', 'red'] and setup.dataset.class_to_idx == dict(blue=0, green=1, red=2)
    assert sorted({label for _, label in setup.dataset.samples}) == [1, 2]
    result = run_classification(setup)
    model = setup.model
    correct = loss = 0.
    with torch.no_grad():
        for image, label in (setup.dataset[i] for i in range(len(setup.dataset))):
            logits = model(image[None])
            correct += float(logits.argmax() == label)
            loss += F.cross_entropy(logits, torch.tensor([label])).item()
    assert result.images == 10 and result.top1 == pytest.approx(10 * correct)
    assert result.loss == pytest.approx(loss / 10, rel=1e-5)


# ----------------------------------------------------------------------------------------------------------------
SEG_COLOURS = [(20, 20, 20), (220, 40, 40), (40, 200, 40)]


def make_ade(root: Path, counts=(4, 3), seed: int = 0) -> Path:
    """``images/{training,validation}`` and ``annotations/...``: 3 classes (background, red and green boxes) with
    box borders ignored (255); validation images of sizes no multiple of 32."""
    rng = np.random.default_rng(seed)
    for split, count, size in (('training', counts[0], (32, 32)), ('validation', counts[1], (40, 52))):
        for folder in ('images', 'annotations'):
            (root / folder / split).mkdir(parents=True, exist_ok=True)
        for n in range(count):
            labels = np.zeros(size, np.uint8)
            for cls in (1, 2):
                top, left = rng.integers(0, size[0] - 12), rng.integers(0, size[1] - 12)
                labels[top:top + 12, left:left + 12] = cls
                labels[top, left:left + 12] = 255
            image = np.array(SEG_COLOURS, np.float32)[np.minimum(labels, 2)] + rng.normal(0, 25, (*size, 3))
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / 'images' / split / f'{n}.png')
            Image.fromarray(labels, mode='L').save(root / 'annotations' / split / f'{n}.png')
    return root


@pytest.fixture(scope='module')
def ade(tmp_path_factory) -> Path:
    return make_ade(tmp_path_factory.mktemp('ade'))


@pytest.fixture(scope='module')
def segmentor_file(tmp_path_factory):
    torch.manual_seed(1)
    model = create_segmentor(NAME, head='upernet', num_classes=3, head_kwargs=SEG_HEAD, **SEG_BACKBONE).eval()
    with torch.no_grad():
        model.decode_head.conv_seg.weight.normal_(0, 1.0)  # logits that differ from pixel to pixel
    path = tmp_path_factory.mktemp('seg_weights') / 'segmentor.safetensors'
    save_weights(model, path)
    return model, path


def _direct_seg(model, ade: Path, window=None, stride=None):
    """Confusion matrix, scores and loss of ``model`` image by image, normalised here with ImageNet's statistics."""
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    matrix = torch.zeros(3, 3, dtype=torch.int64)
    loss = 0.
    names = sorted((ade / 'images' / 'validation').iterdir())
    with torch.no_grad():
        for path in names:
            pixels = (np.asarray(Image.open(path).convert('RGB'), np.float32) / 255 - mean) / std
            image = torch.from_numpy(pixels.transpose(2, 0, 1).astype(np.float32))[None]
            label = torch.from_numpy(np.asarray(Image.open(ade / 'annotations' / 'validation' / path.name),
                                                np.int64))[None]
            logits = model(image) if window is None else slide_inference(model, image, 3, window, stride)
            loss += F.cross_entropy(logits, label, ignore_index=255).item()
            matrix += confusion_matrix(logits.argmax(1), label, 3)
    return matrix, segmentation_scores(matrix), loss / len(names)


@pytest.mark.parametrize('mode', ['whole', 'slide'])
def test_segmentation_equals_densezoo_metrics_computed_directly(ade, segmentor_file, mode):
    model, path = segmentor_file
    options = dict(mode='slide', crop_size=(32, 32), stride=(16, 24)) if mode == 'slide' else {}
    result = validate(NAME, ade, checkpoint=path, task='seg', model_kwargs=SEG_BACKBONE, head_kwargs=SEG_HEAD,
                      **options)
    window = dict(window=(32, 32), stride=(16, 24)) if mode == 'slide' else {}
    matrix, scores, loss = _direct_seg(model, ade, **window)
    assert result.images == 3 and result.split == 'validation' and result.num_classes == 3 and result.mode == mode
    assert 0 < scores['mIoU'] < 100 and int((matrix.sum(0) > 0).sum()) == 3  # every class predicted somewhere
    for key in ('mIoU', 'mAcc', 'aAcc'):
        assert getattr(result, key) == pytest.approx(scores[key], abs=1e-9)
    assert result.loss == pytest.approx(loss, rel=1e-5)
    matrix = matrix.double()
    iou = matrix.diag() / (matrix.sum(0) + matrix.sum(1) - matrix.diag())
    assert result.iou == pytest.approx((100 * iou).tolist(), abs=1e-9)
    assert result.acc == pytest.approx((100 * matrix.diag() / matrix.sum(1)).tolist(), abs=1e-9)


def test_windows_covering_the_image_score_as_whole_images(ade, segmentor_file):
    _, path = segmentor_file
    common = dict(checkpoint=path, task='seg', model_kwargs=SEG_BACKBONE, head_kwargs=SEG_HEAD)
    whole = validate(NAME, ade, **common)
    covering = validate(NAME, ade, mode='slide', crop_size=(40, 52), **common)
    assert covering.loss == pytest.approx(whole.loss, rel=1e-6) and covering.mIoU == pytest.approx(whole.mIoU)
    assert (covering.mode, covering.crop_size, covering.stride) == ('slide', (40, 52), (26, 34))


@pytest.fixture(scope='module')
def seg_run(tmp_path_factory) -> Path:
    """A seg run of a few steps on the generated folder, validating in sliding windows."""
    tmp = tmp_path_factory.mktemp('seg_run')
    data = make_ade(tmp / 'data', counts=(4, 3), seed=1)
    values = dict(
        task='seg', name='tiny_seg', output=str(tmp / 'runs'), seed=0, epochs=1, max_steps=3, log_every=1,
        model=dict(name=NAME, kwargs=dict(SEG_BACKBONE), head='upernet', head_kwargs=dict(SEG_HEAD), aux_head=True),
        data=dict(root=str(data), train_split='training', val_split='validation', num_classes=3, img_size=32,
                  batch_size=2, workers=0, ratio_range=[1.0, 1.0], val_slide_window=32, val_slide_stride=20),
        optim=dict(name='adamw', lr=1e-2, weight_decay=0.0), sched=dict(name='cosine', warmup_epochs=0))
    return train(config_from_dict(values), run_dir=tmp / 'run', progress=False).run_dir


def test_a_seg_run_reproduces_its_logged_validation(seg_run, capsys, tmp_path):
    logged = _records(seg_run, _best_step(seg_run))
    assert _tool().main([str(seg_run), '--json', str(tmp_path / 'r.json')]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / 'r.json').read_text())
    assert result['mode'] == 'slide' and result['crop_size'] == [32, 32] and result['stride'] == [20, 20]
    assert result['images'] == logged['count'] == 3 and result['split'] == 'validation'
    for key in ('mIoU', 'mAcc', 'aAcc', 'loss'):
        assert result[key] == logged[key], key  # exactly: the same windows, matrix and sums
    assert [row['index'] for row in result['per_class']] == [0, 1, 2]
    assert re.search(r' \* mIoU \d+\.\d\d mAcc \d+\.\d\d aAcc \d+\.\d\d', out) and 'slide 32x32 stride 20x20' in out
    whole = validate(str(seg_run), mode='whole')
    assert whole.mode == 'whole' and whole.loss != result['loss']


# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def sr_run(tmp_path_factory) -> Path:
    """A run folder of task sr: its config and one checkpoint with weights."""
    run = tmp_path_factory.mktemp('sr_run')
    (run / 'checkpoints' / 'last').mkdir(parents=True)
    save_weights(torch.nn.Conv2d(3, 3, 1), run / 'checkpoints' / 'last' / 'model.safetensors')
    (run / 'config.yaml').write_text('task: sr\nmodel: {name: swinir_light_x2}\n')
    return run


@pytest.mark.parametrize('case, message', [
    ('no data', r"error: data folder '.*missing' does not exist$"),
    ('empty data', r"error: data folder '.*empty' has no class sub-folders; expected <class>/<image> inside it$"),
    ('class without images', r"error: class folder '.*c9' has no images \(.*\); add images or remove the folder$"),
    ('unknown model', r"error: unknown model 'swin_tiny_patch4_window7_224_dwx'; did you mean .*"
                      r"swin_tiny_patch4_window7_224_dwa"),
    ('no run', r"error: run folder '.*runs/missing' does not exist$"),
    ('no weights', rf'error: {NAME} needs weights: give --checkpoint FILE \(or a densezoo run folder\) or '
                   rf'--pretrained'),
    ('does not fit', rf"error: the weights in '.*checkpoint.pth.tar' do not fit {NAME} \(.*\); check "
                     rf"--model-kwargs$"),
    ('class count', rf'error: {NAME} has 7 classes but the data has 6 classes \(the class folders of .*val, '
                    rf'sorted\); evaluate a model trained on these classes \(or give --class-map\)$'),
    ('other task', r"error: run '.*' is a run of task seg, not classification; leave out --task$"),
    ('sr run', r"error: run '.*' is a run of task sr, which this tool does not evaluate \(classification, seg\); "
               r"evaluate super-resolution runs with densezoo-eval-sr"),
    ('seg option', r'error: --crop-size applies to segmentation \(--task seg\) only; this is a classification '
                   r'evaluation$'),
    ('stride', r'error: --stride 40 40 is larger than --crop-size 32 32; pixels between windows would get no '
               r'logits$'),
    ('run head', r"error: --head describes the segmentor of a weights file; a run's config gives it \(leave it "
                 r"out\)$"),
])
def test_errors_are_one_line_before_any_compute(folder, classifier_file, seg_run, sr_run, tmp_path, capsys, case,
                                                message):
    kwargs = ['--model-kwargs', *(f'{k}={v}' for k, v in KWARGS.items())]
    args = [NAME, '--checkpoint', str(classifier_file), '--data', str(folder), *kwargs]
    if case == 'no data':
        args[4] = str(tmp_path / 'missing')
    elif case == 'empty data':
        (tmp_path / 'empty').mkdir()
        args[4] = str(tmp_path / 'empty')
    elif case == 'class without images':
        for name in CLASSES[:6]:
            (tmp_path / 'val' / name).mkdir(parents=True)
            Image.new('RGB', (4, 4)).save(tmp_path / 'val' / name / 'a.png')
        (tmp_path / 'val' / 'c9').mkdir()
        args[4] = str(tmp_path)
    elif case == 'unknown model':
        args[0] = 'swin_tiny_patch4_window7_224_dwx'
    elif case == 'no run':
        args = [str(tmp_path / 'runs' / 'missing')]
    elif case == 'no weights':
        args = [NAME, '--data', str(folder)]
    elif case == 'does not fit':
        args[args.index('embed_dim=8')] = 'embed_dim=16'
    elif case == 'class count':
        for name in CLASSES[:6]:
            (tmp_path / 'val' / name).mkdir(parents=True)
            Image.new('RGB', (4, 4)).save(tmp_path / 'val' / name / 'a.png')
        args[4] = str(tmp_path)
    elif case == 'other task':
        args = [str(seg_run), '--task', 'classification']
    elif case == 'sr run':
        args = [str(sr_run)]
    elif case == 'seg option':
        args += ['--crop-size', '32']
    elif case == 'stride':
        args = [str(seg_run), '--mode', 'slide', '--crop-size', '32', '--stride', '40']
    elif case == 'run head':
        args = [str(seg_run), '--head', 'fpn']
    assert _tool().main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ''  # nothing measured, nothing reported
    assert len(captured.err.strip().splitlines()) == 1
    assert re.match(message, captured.err.strip()), captured.err


def test_the_module_exits_with_2(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))
    result = subprocess.run([sys.executable, '-m', 'densezoo.cli.validate', NAME, '--pretrained', '--data',
                             str(tmp_path / 'none')], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ''
    assert result.stderr.strip() == f"error: data folder '{tmp_path / 'none'}' does not exist"
