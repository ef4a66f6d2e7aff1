"""The super-resolution recipes in configs/sr load, name registered models that accept their arguments, and follow
the published schedules; the SR demo config runs."""
from pathlib import Path

import pytest
import timm
import torch

import densezoo
from densezoo.engine import load_config, train

ROOT = Path(__file__).resolve().parents[2]
SR_CONFIGS = sorted((ROOT / 'configs' / 'sr').glob('*.yaml'))
PLAIN_SR_MODELS = [n for n in densezoo.list_models(task='sr') if not n.endswith(('_dwa', '_mudd'))]


def test_every_registered_sr_model_has_a_recipe():
    """One recipe per registered SR model (connected variants train with their plain model's recipe)."""
    named = sorted(load_config(path).model.name for path in SR_CONFIGS)
    assert named == sorted(PLAIN_SR_MODELS)


@pytest.mark.parametrize('path', SR_CONFIGS, ids=lambda p: p.stem)
def test_recipe_loads_and_names_a_registered_model(path):
    config = load_config(path)
    assert config.task == 'sr' and config.name == path.stem and config.model.name in PLAIN_SR_MODELS
    assert timm.models.is_model(config.model.name), f'{config.model.name} is not a registered model'
    with torch.device('meta'):  # the recipe's model arguments are accepted (no memory, no weights)
        model = timm.create_model(config.model.name, device='meta', **config.model.kwargs)
    assert model.upscale >= 1
    # the published schedules count optimizer steps (iterations)
    assert config.optim.name == 'adam' and config.optim.weight_decay == 0 and config.epochs is None
    assert config.sched.name == 'multistep' and config.sched.unit == 'steps' and config.sched.decay_rate == 0.5
    assert all(m <= config.max_steps for m in config.sched.decay_milestones)
    assert config.loss == ('charbonnier' if config.data.degradation in ('noise', 'jpeg') else 'l1')


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
