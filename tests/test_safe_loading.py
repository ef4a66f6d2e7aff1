"""No loading path runs pickled code: a crafted checkpoint that would create a file when unpickled is refused with a
one-line error everywhere densezoo reads weights, even with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 set."""
import ast
from pathlib import Path

import pytest
import torch

import densezoo
import tests.sr_standin  # noqa: F401  (registers the stand-in models)
from densezoo.checkpoint_io import WeightsFileError, check_weights_file, load_weights_file
from densezoo.cli.eval_sr import main as eval_sr
from densezoo.engine import Trainer, TrainingError, config_from_dict
from densezoo.engine.checkpoint import save_checkpoint
from densezoo.heads.segmentor import create_segmentor
from densezoo.tasks.sr_eval import load_sr_model
from tests.engine.conftest import TINY_MODEL, make_dataset, tiny_config
from tests.helpers import one_line

REFUSED = 'holds pickled code or objects that are not tensors (io.open); densezoo loads only tensors'


class _Trap:
    """Unpickling it opens ``marker`` for writing, which creates the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), 'w')


@pytest.fixture
def crafted(tmp_path, monkeypatch):
    """A .pth holding a tensor next to the trap, and the marker file it would create; loading it unsafely does."""
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    marker = tmp_path / 'marker'
    path = tmp_path / 'crafted.pth'
    torch.save({'state_dict': {'weight': torch.zeros(2)}, 'trap': _Trap(marker)}, path)
    torch.load(path, weights_only=False)
    assert marker.exists()  # the trap works
    marker.unlink()
    return path, marker


def test_the_loaders_refuse_it(crafted):
    path, marker = crafted
    for read in (load_weights_file, check_weights_file):
        with pytest.raises(WeightsFileError) as error:
            read(path)
        assert one_line(error) == f"weights file '{path}' {REFUSED}"
    assert not marker.exists()


def test_resume_refuses_a_crafted_state(crafted, tmp_path):
    """A crafted state.pt whose manifest matches it (so only the loader stands in the way)."""
    path, marker = crafted
    values = tiny_config(make_dataset(tmp_path / 'data'), tmp_path / 'runs')
    trainer = Trainer(config_from_dict(values), tmp_path / 'run', progress=False)
    save_checkpoint(tmp_path / 'run' / 'checkpoints', 1, trainer.model, dict(global_step=1, trap=_Trap(marker)))
    with pytest.raises(TrainingError) as error:
        Trainer(config_from_dict(values), tmp_path / 'run', resume=True, progress=False)
    assert one_line(error) == (f'{tmp_path / "run" / "checkpoints"} holds no intact checkpoint to resume from '
                               f'(checkpoints/step-00000001: state.pt {REFUSED.split(";")[0]}); start a new run')
    assert not marker.exists()


def test_pretrained_file_refuses_it(crafted, tmp_path):
    path, marker = crafted
    values = tiny_config(make_dataset(tmp_path / 'data'), tmp_path / 'runs')
    values['model']['pretrained_file'] = str(path)
    with pytest.raises(WeightsFileError) as error:
        Trainer(config_from_dict(values), tmp_path / 'run', progress=False)
    assert one_line(error) == f"weights file '{path}' {REFUSED}"
    assert not marker.exists()


def test_create_segmentor_refuses_it(crafted):
    path, marker = crafted
    with pytest.raises(WeightsFileError) as error:
        create_segmentor('resnet18', num_classes=3, head_kwargs=dict(channels=8), checkpoint=path)
    assert one_line(error) == f"weights file '{path}' {REFUSED}"
    assert not marker.exists()


def test_eval_sr_refuses_it(crafted, tmp_path, capsys):
    path, marker = crafted
    with pytest.raises(WeightsFileError, match='holds pickled code'):
        load_sr_model('densezoo_test_sr_x2', path)
    assert eval_sr(['densezoo_test_sr_x2', '--checkpoint', str(path), '--data', str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: weights file '{path}' {REFUSED}\n"
    assert not marker.exists()


def test_mm_backbone_refuses_it(crafted):
    pytest.importorskip('mmengine')
    from densezoo.mm.backbone import DenseZooBackbone
    path, marker = crafted
    init_cfg = dict(type='Pretrained', checkpoint=str(path))
    backbone = DenseZooBackbone(TINY_MODEL['name'], out_indices=(0, 1), init_cfg=init_cfg, **TINY_MODEL['kwargs'])
    with pytest.raises(WeightsFileError) as error:
        backbone.init_weights()
    assert one_line(error) == f"weights file '{path}' {REFUSED}"
    assert not marker.exists()


def test_every_torch_load_in_the_package_passes_weights_only():
    root = Path(densezoo.__file__).parent
    calls, unsafe = 0, []
    for path in sorted(root.rglob('*.py')):
        for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == 'load' \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == 'torch':
                calls += 1
                safe = any(k.arg == 'weights_only' and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords)
                if not safe:
                    unsafe.append(f'{path.relative_to(root.parent)}:{node.lineno}')
    assert calls >= 2 and unsafe == []
