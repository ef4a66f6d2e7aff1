"""The super-resolution recipes in configs/sr load, name registered models that accept their arguments, and follow
the published schedules; the SR demo config runs."""
from pathlib import Path

import pytest
import timm
import torch

import densezoo  # noqa: F401  (registers the models the recipes name)
from densezoo.engine import load_config, train

ROOT = Path(__file__).resolve().parents[2]
SR_CONFIGS = sorted((ROOT / 'configs' / 'sr').glob('*.yaml'))
#: the model each recipe trains (the SR families of the model zoo)
RECIPES = {
    'swinir_classical_x2_df2k': 'swinir_classical_x2', 'swinir_light_x2_div2k': 'swinir_light_x2',
    'swinir_real_x4': 'swinir_real_x4', 'swinir_denoise_color_sigma15': 'swinir_denoise_color',
    'swinir_jpeg_q40': 'swinir_jpeg', 'drct_x4_df2k': 'drct_x4', 'hat_x4_df2k': 'hat_x4',
    'rcan_x2_div2k': 'rcan_x2', 'rdn_x2_div2k': 'rdn_x2',
}


def test_one_recipe_per_family():
    assert sorted(p.stem for p in SR_CONFIGS) == sorted(RECIPES)


@pytest.mark.parametrize('path', SR_CONFIGS, ids=lambda p: p.stem)
def test_recipe_loads_and_names_a_registered_model(path):
    config = load_config(path)
    assert config.task == 'sr' and config.model.name == RECIPES[path.stem]
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
