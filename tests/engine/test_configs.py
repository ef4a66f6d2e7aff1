"""Every shipped config is valid, and the README's demo trains to well above chance."""
from pathlib import Path

import pytest

from densezoo.engine import load_config, train

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / 'configs').glob('*/*.yaml'))


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: f'{p.parent.name}/{p.name}')
def test_shipped_configs_load(path):
    config = load_config(path)
    assert config.model.name and config.data.root


def test_demo_config_learns_the_digits_quickly(tmp_path):
    """The README's main command, shortened to 3 of its epochs (the full demo reaches about 99%)."""
    config = load_config(ROOT / 'configs' / 'demo' / 'swin_digits.yaml',
                         [f'output={tmp_path}', 'epochs=3', f'data.root={ROOT / "data" / "digits"}'])
    result = train(config, progress=False)
    assert result.steps == 3 * 22  # 1,442 training images, batch 64
    assert result.metrics['count'] == 355
    assert result.best_metric > 70  # ten classes: chance is 10% (measured: 89.6% after 3 epochs)
    assert (result.run_dir / 'curve.png').is_file()
