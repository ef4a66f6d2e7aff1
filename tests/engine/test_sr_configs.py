"""The super-resolution recipes in configs/sr load, name registered models that accept their arguments, and follow
the published schedules; the SR demo config runs."""
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

import densezoo
from densezoo.engine import load_config, train

ROOT = Path(__file__).resolve().parents[2]
SR_CONFIGS = sorted((ROOT / 'configs' / 'sr').glob('*.yaml'))
PLAIN_SR_MODELS = [n for n in densezoo.list_models(task='sr') if not n.endswith(('_dwa', '_mudd'))]


def test_every_registered_sr_model_has_a_recipe():
    """One recipe per registered SR model (connected variants train with their plain model's recipe)."""
    named = sorted({load_config(path).model.name for path in SR_CONFIGS})
    assert named == sorted(PLAIN_SR_MODELS)


@pytest.mark.parametrize('path', SR_CONFIGS, ids=lambda p: p.stem)
def test_recipe_loads_and_names_a_registered_model(path):
    config = load_config(path)
    assert config.task in ('sr', 'sr_gan') and config.name == path.stem and config.model.name in PLAIN_SR_MODELS
    assert timm.models.is_model(config.model.name), f'{config.model.name} is not a registered model'
    with torch.device('meta'):  # the recipe's model arguments are accepted (no memory, no weights)
        model = timm.create_model(config.model.name, device='meta', **config.model.kwargs)
    assert model.upscale >= 1
    # the published schedules count optimizer steps (iterations)
    assert config.optim.name == 'adam' and config.optim.weight_decay == 0 and config.epochs is None
    assert config.sched.name == 'multistep' and config.sched.unit == 'steps' and config.sched.decay_rate == 0.5
    assert all(m <= config.max_steps for m in config.sched.decay_milestones)
    assert config.loss == ('charbonnier' if config.data.degradation in ('noise', 'jpeg') else 'l1')


#: the real-world recipes' published values (KAIR's SwinIR real-world jsons; the HAT and DRCT repositories'
#: train_Real_*.yml, Real-ESRGAN's settings): degradation, sharpened targets, lr, betas, milestones, steps, crop
REAL_WORLD = {
    'swinir_real_x4': ('sr', 'swinir_real_x4', 'bsrgan', [], 2e-4, (0.9, 0.999),
                       (500000, 800000, 900000, 950000, 1000000), 1000000, True),
    'swinir_real_x4_gan': ('sr_gan', 'swinir_real_x4', 'bsrgan', [], 1e-4, (0.9, 0.999),
                           (400000, 500000, 550000, 575000, 600000), 600000, True),
    'real_hat_x4_psnr': ('sr', 'hat_x4', 'realesrgan', ['pixel'], 1e-4, (0.9, 0.99), (1000000,), 1000000, False),
    'real_hat_x4_gan': ('sr_gan', 'hat_x4', 'realesrgan', ['pixel', 'perceptual'], 1e-4, (0.9, 0.99), (400000,),
                        400000, False),
    'real_drct_x4_psnr': ('sr', 'drct_x4', 'realesrgan', ['pixel'], 1e-4, (0.9, 0.99), (1000000,), 1000000, False),
    'real_drct_x4_gan': ('sr_gan', 'drct_x4', 'realesrgan', ['pixel', 'perceptual'], 1e-4, (0.9, 0.99), (400000,),
                         400000, False),
}


@pytest.mark.parametrize('name', sorted(REAL_WORLD))
def test_real_world_recipes_are_the_published_ones(name):
    task, model, degradation, sharpen, lr, betas, milestones, steps, rotations = REAL_WORLD[name]
    config = load_config(ROOT / 'configs' / 'sr' / f'{name}.yaml')
    assert (config.task, config.model.name, config.data.degradation) == (task, model, degradation)
    assert config.sharpen == sharpen
    assert config.optim.lr == lr and tuple(config.optim.kwargs['betas']) == betas
    assert config.sched.decay_milestones == milestones and config.max_steps == steps
    assert config.data.lr_patch == 64 and config.data.rot90 == rotations and config.ema_decay == 0.999
    assert config.model.kwargs['img_size'] == 64 and config.data.degradation_options == {}
    if task == 'sr_gan':  # L1 1 + VGG19 perceptual 1 (conv1_2 .. conv5_4: 0.1, 0.1, 1, 1, 1) + vanilla GAN 0.1
        assert config.pixel_weight == 1 and config.perceptual.weight == 1 and config.perceptual.style_weight == 0
        assert config.perceptual.layer_weights == {'conv1_2': 0.1, 'conv2_2': 0.1, 'conv3_4': 1.0, 'conv4_4': 1.0,
                                                   'conv5_4': 1.0}
        gan = config.gan
        assert (gan.type, gan.weight, gan.num_feat, gan.skip_connection) == ('vanilla', 0.1, 64, True)
        assert gan.optim.lr == 1e-4 and tuple(gan.optim.kwargs['betas']) == betas


def test_classical_recipe_is_the_swinir_papers():
    config = load_config(ROOT / 'configs' / 'sr' / 'swinir_classical_x2_df2k.yaml')
    assert config.optim.lr == 2e-4 and tuple(config.optim.kwargs['betas']) == (0.9, 0.99)
    assert config.sched.decay_milestones == (250000, 400000, 450000, 475000) and config.max_steps == 500000
    assert config.ema_decay == 0.999 and config.data.lr_patch == 64 and config.data.batch_size * 8 == 32


def test_sr_demo_config_runs(tmp_path):
    """The SR demo's config, cut to four steps: its model, data and comparison image work together."""
    config = load_config(ROOT / 'configs' / 'demo' / 'swinir_light_x2_sr.yaml',
                         [f'output={tmp_path}', 'epochs=1', 'data.repeat=2', 'data.batch_size=4',
                          f'data.root={ROOT / "data" / "sr_demo"}'])
    result = train(config, progress=False)
    assert result.steps == 4 and result.metrics['count'] == 1  # 9 images x repeat 2, batch 4
    assert (result.run_dir / 'comparison.png').is_file() and result.outputs['baseline_psnr'] > 20


def test_real_sr_demo_runs_both_stages_and_writes_its_panel(tmp_path):
    """The real-world demo with its configs cut to a few steps: stage 2 starts from stage 1's EMA weights, the panel
    holds three rows (input | stage 1 | stage 2 | HR), and a second call keeps the finished stages."""
    from densezoo.cli.real_sr_demo import run_demo
    from safetensors.torch import load_file
    configs = {}
    for stage in ('psnr', 'gan'):
        configs[stage] = tmp_path / f'{stage}.yaml'
        configs[stage].write_text(f'_base_: {ROOT / "configs" / "demo" / f"real_sr_{stage}.yaml"}\n'
                                  f'epochs: 1\ndata:\n  repeat: 1\n  batch_size: 4\n')
    out = tmp_path / 'demo'
    scores = run_demo(out, configs['psnr'], configs['gan'], ROOT / 'data' / 'sr_demo')
    assert [row['seed'] for row in scores] == [0, 1, 2]
    assert set(scores[0]) == {'seed', 'input', 'stage 1 (L1)', 'stage 2 (GAN)', 'HR'}
    assert all(5 < row['stage 2 (GAN)']['psnr'] < 40 and row['HR']['niqe'] > 0 for row in scores)  # 2 steps
    assert Image.open(out / 'panel.png').size == (4 * 256 + 3 * 4, 3 * (256 + 14) + 2 * 4)
    stage1 = load_file(str(out / 'psnr' / 'checkpoints' / 'best' / 'ema.safetensors'))
    config = (out / 'gan' / 'config.yaml').read_text()
    assert 'pretrained_file: ' + str(out / 'psnr' / 'checkpoints' / 'best' / 'ema.safetensors') in config
    assert stage1.keys() == load_file(str(out / 'gan' / 'checkpoints' / 'last' / 'model.safetensors')).keys()
    log = (out / 'gan' / 'log.jsonl').read_text()
    assert run_demo(out, configs['psnr'], configs['gan'], ROOT / 'data' / 'sr_demo') == scores
    assert (out / 'gan' / 'log.jsonl').read_text().count('"kind": "train"') == log.count('"kind": "train"')
