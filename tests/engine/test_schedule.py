"""Schedules counted in optimizer steps (sched.unit: steps) and runs sized by max_steps alone (epochs: null)."""
import pytest

from densezoo.engine import Trainer, config_from_dict
from tests.engine.conftest import tiny_config


def test_milestones_in_steps_and_epochs_from_max_steps(dataset, tmp_path):
    values = tiny_config(dataset, tmp_path / 'runs', epochs=None, max_steps=14)
    values['sched'] = dict(name='multistep', unit='steps', decay_milestones=[5, 10], decay_rate=0.5)
    trainer = Trainer(config_from_dict(values), tmp_path / 'run', progress=False)
    assert trainer.steps_per_epoch == 6 and trainer.epochs == 3  # 36 images, batch 6: 14 steps need 3 epochs
    base = values['optim']['lr']
    # the rate after update t is the one update t + 1 uses: steps 5 and 10 are the first at the lower rates
    lrs = [trainer.scheduler._get_lr(t)[0] for t in (3, 4, 8, 9)]
    assert lrs == pytest.approx([base, base / 2, base / 2, base / 4])


def test_milestones_in_epochs_are_unchanged(dataset, tmp_path):
    values = tiny_config(dataset, tmp_path / 'runs', epochs=4)
    values['sched'] = dict(name='multistep', decay_milestones=[1, 3], decay_rate=0.1, warmup_epochs=0)
    trainer = Trainer(config_from_dict(values), tmp_path / 'run', progress=False)
    base = values['optim']['lr']
    lrs = [trainer.scheduler._get_lr(t)[0] for t in (4, 5, 16, 17)]  # 6 steps per epoch
    assert lrs == pytest.approx([base, base / 10, base / 10, base / 100])


def test_warmup_and_cosine_in_steps(dataset, tmp_path):
    values = tiny_config(dataset, tmp_path / 'runs', epochs=None, max_steps=20)
    values['sched'] = dict(name='cosine', unit='steps', warmup_epochs=4, warmup_lr=0.0, min_lr=0.0)
    trainer = Trainer(config_from_dict(values), tmp_path / 'run', progress=False)
    base = values['optim']['lr']
    assert trainer.scheduler._get_lr(2)[0] == pytest.approx(base / 2)  # half way through 4 warm-up steps
    assert trainer.scheduler._get_lr(19)[0] < 0.02 * base  # cosine over the 20 steps
