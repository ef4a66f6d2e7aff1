"""Test-session settings, and a tiny densezoo SR training run (a reduced swinir_light_x2, one epoch) shared by
the hub and tool tests."""
import os
from pathlib import Path

import pytest
import torch

if os.environ.get('PYTEST_XDIST_WORKER'):
    # one intra-op thread per worker process: the workers already use every core
    torch.set_num_threads(1)


#: a reduced swinir_light_x2 (the run's config.yaml must supply these arguments)
RUN_MODEL = dict(name='swinir_light_x2', kwargs=dict(img_size=8, window_size=4, depths=[2], num_heads=[2],
                                                     embed_dim=8))


@pytest.fixture(scope='session')
def sr_run(tmp_path_factory) -> Path:
    from densezoo.engine import config_from_dict, train
    from tests.sr_standin import make_sr_images, sr_config
    root = tmp_path_factory.mktemp('sr_run')
    data = make_sr_images(root / 'data', count=(2, 1), size=(16, 16))
    values = sr_config(data, root / 'runs', epochs=1, ema_decay=0.5, model=dict(RUN_MODEL))
    return train(config_from_dict(values), run_dir=root / 'run', progress=False).run_dir
