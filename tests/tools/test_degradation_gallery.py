"""tools/degradation_gallery.py: the panels of degraded samples are what the pipelines make for their seeds."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from densezoo.datasets.degradations import DEGRADATION_PIPELINES
from densezoo.datasets.sr import load_image
from tests.helpers import load_tool

IMAGE = Path(__file__).resolve().parents[2] / 'data' / 'sr_demo' / 'train' / 'HR' / 'china_171_000.png'


def test_gallery_shows_the_seeded_samples(tmp_path, capsys):
    tool = load_tool('degradation_gallery')
    assert tool.main(['--out', str(tmp_path), '--image', str(IMAGE), '--crop', '64', '--samples', '2',
                      '--seed', '5']) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ['bsrgan.png', 'kernels.png', 'realesrgan.png']
    img = load_image(IMAGE)
    top, left = (img.shape[0] - 64) // 2, (img.shape[1] - 64) // 2
    hr = img[top:top + 64, left:left + 64]
    panel = np.asarray(Image.open(tmp_path / 'realesrgan.png'))
    assert panel.shape[1] == 3 * 64 + 2 * 2  # HR and two samples, 2 px apart
    assert np.array_equal(panel[:64, :64], np.round(hr * 255).astype(np.uint8))
    lr = DEGRADATION_PIPELINES['realesrgan'](4)(hr, np.random.default_rng(6))  # the second sample: seed 6
    shown = panel[:64, 2 * 66:2 * 66 + 64]
    assert np.array_equal(shown[::4, ::4], np.round(lr * 255).astype(np.uint8))  # nearest-upscaled x4


def test_gallery_refuses_a_missing_image(tmp_path, capsys):
    tool = load_tool('degradation_gallery')
    with pytest.raises(SystemExit) as exit_:
        tool.main(['--out', str(tmp_path), '--image', str(tmp_path / 'none.png')])
    assert exit_.value.code == 2
    assert 'none.png does not exist' in capsys.readouterr().err
