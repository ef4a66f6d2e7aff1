"""The SR task on the training engine: it learns, logs PSNR / SSIM, resumes exactly, reduces metrics over processes
exactly, and stops on bad input with one-line reasons."""
import json

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

from densezoo.datasets import DataError
from densezoo.engine import ConfigError, Trainer, config_from_dict, train
from densezoo.engine.checkpoint import load_checkpoint
from densezoo.tasks.sr import CharbonnierLoss, SRTask, build_sr_loss
from densezoo.metrics.sr import psnr
from tests.sr_standin import make_sr_images, sr_config, torchrun_standin
from tests.helpers import load_tool


def _train_tool():
    return load_tool('train')


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('sr')
    root = make_sr_images(tmp / 'data', count=(6, 3), size=(32, 36))
    values = sr_config(root, tmp / 'runs', epochs=4, ema_decay=0.5)
    values['optim']['lr'] = 5e-3
    config = config_from_dict(values)
    return root, config, train(config, progress=False)


def test_training_improves_psnr_and_writes_its_outputs(trained):
    root, config, result = trained
    run = result.run_dir
    assert result.steps == 4 * 3  # 6 images x repeat 2, batch 4
    records = [json.loads(line) for line in (run / 'log.jsonl').read_text().splitlines()]
    losses = [r['loss'] for r in records if r['kind'] == 'train']
    val = [r for r in records if r['kind'] == 'val']
    assert len(losses) == 12 and len(val) == 4 and val[-1]['count'] == 3
    assert sum(losses[-3:]) < 0.9 * sum(losses[:3])  # the loss falls (measured: 0.84)
    assert val[-1]['psnr'] > val[0]['psnr'] + 2  # and validation PSNR rises (measured: +4.0 dB)
    assert {'ssim', 'ema_psnr', 'ema_ssim', 'ema_loss'} <= set(val[-1]) and 0 < val[-1]['ssim'] <= 1
    assert result.best_metric == max(r['ema_psnr'] for r in val)  # with EMA, its PSNR is the main metric
    assert (run / 'log.csv').read_text().splitlines()[0] == \
        'kind,epoch,step,lr,loss,psnr,ssim,images_per_s,elapsed_s'
    # milestones [4, 8] in optimizer steps: steps 4 and 8 are the first at the halved rates (the lr logged after
    # step n is the one step n + 1 uses)
    lrs = [r['lr'] for r in records if r['kind'] == 'train']
    assert lrs[:8] == pytest.approx([5e-3, 5e-3, 2.5e-3, 2.5e-3, 2.5e-3, 2.5e-3, 1.25e-3, 1.25e-3])
    # the comparison image: bicubic | model | HR crops of the first validation image, with their PSNRs
    outputs = result.outputs
    assert outputs['comparison'] == run / 'comparison.png' and outputs['comparison_image'] == '0000'
    assert Image.open(outputs['comparison']).size == (3 * 36 + 2 * 4, 32 + 14)
    assert outputs['baseline_name'] == 'bicubic' and 20 < outputs['baseline_psnr'] < 60
    assert outputs['model_psnr'] == pytest.approx(val[-1]['ema_psnr'], abs=3)  # one of the three images


def test_timm_loads_the_trained_weights_and_the_task_scores_them_alike(trained):
    root, config, result = trained
    weights = result.run_dir / 'checkpoints' / 'best' / 'model.safetensors'
    model = timm.create_model('densezoo_test_sr_x2', pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(weights))).eval()
    trainer = Trainer(config, result.run_dir / 'eval', progress=False)
    load_checkpoint(result.run_dir / 'checkpoints' / 'best', trainer.model)
    lr = torch.rand(1, 3, 10, 12)
    with torch.no_grad():
        assert torch.equal(model(lr), trainer.model.eval()(lr))
    metrics = trainer.evaluate()
    records = [json.loads(line) for line in (result.run_dir / 'log.jsonl').read_text().splitlines()]
    best = [r for r in records if r['kind'] == 'val' and r['step'] == result.best_step][0]
    assert metrics['psnr'] == pytest.approx(best['psnr'], abs=1e-9)
    # PSNR of one image by hand: the model output against the HR image, Y channel, border 2
    lr_img, hr_img = trainer.val_set[0]
    with torch.no_grad():
        out = trainer.model(lr_img[None])[0]
    assert 20 < psnr(out, hr_img, crop_border=2) < 60


def test_resumed_run_ends_bit_identical(tmp_path):
    """A run stopped mid-epoch (max_steps) and resumed ends with exactly the weights of an uninterrupted one:
    crops, flips, EMA, the step schedule and two loader workers all replay."""
    root = make_sr_images(tmp_path / 'data', count=(6, 1), size=(32, 36))
    values = sr_config(root, tmp_path / 'runs', epochs=3, ema_decay=0.7, checkpoint_every=1)
    values['data']['workers'] = 2
    reference = train(config_from_dict(values), run_dir=tmp_path / 'reference', progress=False)
    stopped = train(config_from_dict(dict(values, max_steps=4)), run_dir=tmp_path / 'resumed', progress=False)
    assert stopped.steps == 4  # in the middle of the second epoch (3 steps per epoch)
    resumed = train(config_from_dict(values), run_dir=tmp_path / 'resumed', resume=True, progress=False)
    assert resumed.steps == reference.steps == 9
    for name in ('model.safetensors', 'ema.safetensors'):
        a = load_file(str(tmp_path / 'reference' / 'checkpoints' / 'last' / name))
        b = load_file(str(tmp_path / 'resumed' / 'checkpoints' / 'last' / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_two_processes_reduce_psnr_exactly(tmp_path):
    """Three validation images over two processes (2 + 1): the logged means equal a one-process evaluation."""
    root = make_sr_images(tmp_path / 'data', count=(8, 3), size=(32, 36))
    config = tmp_path / 'sr.json'  # JSON is YAML
    config.write_text(json.dumps(sr_config(root, tmp_path / 'runs', epochs=1)))
    proc = torchrun_standin(config, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = next((tmp_path / 'runs').glob('tiny_sr-*'))
    val = [json.loads(line) for line in (run / 'log.jsonl').read_text().splitlines()
           if json.loads(line)['kind'] == 'val'][-1]
    assert val['count'] == 3 and val['step'] == 2  # 16 crops, batch 4 per process, 2 processes
    single = Trainer(config_from_dict(sr_config(root, tmp_path / 'single')), tmp_path / 'single', progress=False)
    load_checkpoint(run / 'checkpoints' / 'last', single.model)
    metrics = single.evaluate()
    assert metrics['count'] == 3
    for key in ('psnr', 'ssim', 'loss'):
        assert metrics[key] == pytest.approx(val[key], rel=1e-6), key


def test_losses():
    prediction, target = torch.tensor([0.5, 0.2]), torch.tensor([0.5, 0.6])
    assert build_sr_loss(None)(prediction, target).item() == pytest.approx(0.2)
    assert build_sr_loss('mse')(prediction, target).item() == pytest.approx(0.08)
    charbonnier = build_sr_loss('charbonnier', eps=1e-3)
    assert isinstance(charbonnier, CharbonnierLoss)
    expected = (1e-3 + (0.4 ** 2 + 1e-6) ** 0.5) / 2
    assert charbonnier(prediction, target).item() == pytest.approx(expected, rel=1e-6)


def test_denoising_with_charbonnier_and_the_rgb_metric(tmp_path):
    root = make_sr_images(tmp_path / 'data', count=(4, 1), size=(24, 24))
    values = sr_config(root, tmp_path / 'runs', epochs=1, loss='charbonnier')
    values['model']['name'] = 'densezoo_test_sr_denoise'
    values['data'].update(degradation='noise', noise_sigma=15.0)
    trainer = Trainer(config_from_dict(values), tmp_path / 'run', progress=False)
    assert trainer.task.scale == 1 and trainer.task.crop_border == 0 and trainer.task.y_channel is False
    assert isinstance(trainer.task.criterion, CharbonnierLoss)
    metrics = trainer.evaluate()
    assert 20 < metrics['psnr'] < 30  # the noisy input itself: sigma 15 is about 24.6 dB


@pytest.mark.parametrize('override, message', [
    ('loss=huber', r"^loss='huber' is not allowed; use l1, charbonnier or mse$"),
    ('data.degradation=blur', r"^data.degradation='blur' is not allowed; use bicubic, noise, jpeg, realesrgan, bsrgan$"),
    ('sched.unit=iters', r"^sched.unit='iters' is not allowed; use 'epochs' or 'steps'$"),
    ('data.channels=2', r'^data.channels=2 is not allowed; use 3, 1 or null$'),
    ('data.lr_pach=3', r"^unknown config key 'data.lr_pach'; did you mean 'data.lr_patch'\?$"),
    ('epochs=null', r'^epochs is null and max_steps is not set; set one of them$'),
    ('task=classification', r"^unknown config key 'data.lr_patch' for task classification; it is a key of tasks "
                            r"sr, sr_gan$"),
])
def test_bad_sr_config_values_are_one_line_errors(tmp_path, override, message):
    from densezoo.engine.config import apply_overrides
    values = apply_overrides(sr_config(tmp_path, tmp_path / 'runs'), override.split(' '))
    with pytest.raises(ConfigError, match=message):
        config_from_dict(values)


@pytest.mark.parametrize('problem, message', [
    ('missing', r"^HR folder '.*data/train/HR' does not exist$"),
    ('upscale', r'^data.upscale=3 does not match densezoo_test_sr_x2, which upscales x2; leave data.upscale '
                r'unset$'),
    ('lr folder', r"^LR folder '.*data/train/LR_bicubic/X2' does not exist$"),
])
def test_bad_sr_data_is_a_one_line_error_before_the_run_folder_exists(tmp_path, problem, message):
    root = tmp_path / 'data'
    if problem != 'missing':
        make_sr_images(root, count=(4, 1))
    values = sr_config(root, tmp_path / 'runs')
    if problem == 'upscale':
        values['data']['upscale'] = 3
    elif problem == 'lr folder':
        values['data']['lr_dir'] = 'LR_bicubic/X{scale}'
    with pytest.raises(DataError, match=message):
        train(config_from_dict(values), run_dir=tmp_path / 'run', progress=False)
    assert not (tmp_path / 'run').exists()


def test_train_tool_prints_the_comparison_and_one_line_errors(tmp_path, capsys):
    root = make_sr_images(tmp_path / 'data', count=(4, 1), size=(24, 24))
    config = tmp_path / 'sr.json'
    config.write_text(json.dumps(sr_config(root, tmp_path / 'runs', epochs=1)))
    tool = _train_tool()
    assert tool.main([str(config)]) == 0
    out = capsys.readouterr().out
    assert 'best validation' in out and 'comparison: ' in out and 'bicubic' in out
    assert tool.main([str(config), '--opt', 'data.upscale=4']) == 2
    assert capsys.readouterr().err.strip() == ('error: data.upscale=4 does not match densezoo_test_sr_x2, which '
                                               'upscales x2; leave data.upscale unset')
    assert SRTask.name == 'sr' and SRTask.main_metric == 'psnr'
