"""densezoo.inspect_connections: every connection starts where the plain network is (no move), the reported moves and
coefficients are the parameters' own, MUDD's generated weights are recorded, and the heat maps are drawn."""
import math

import pytest
import timm
import torch

import densezoo
from densezoo.layers.connections import StageConnection
from densezoo.models.inspection import dwa_matrix, start_values
from tests.helpers import perturb_connections

KINDS = ['residual', 'dwa', 'mudd', 'rir', 'dense', 'laurel', 'rezero', 'value_residual']


def tiny_vit(kind: str, **options):
    model = timm.create_model('vit_tiny_patch16_224', img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2,
                              num_classes=3)
    return densezoo.connect(model, kind, **options)


@pytest.mark.parametrize('kind', KINDS)
def test_a_fresh_connection_has_not_moved(kind):
    reports = densezoo.inspect_connections(tiny_vit(kind), sample=torch.rand(2, 3, 32, 32))
    assert [r.kind for r in reports] == [kind]
    assert all(value == 0 for value in reports[0].moved.values())


@pytest.mark.parametrize('kind', ['dwa', 'mudd', 'rir', 'laurel', 'rezero', 'value_residual'])
def test_moves_are_the_rms_change_of_the_parameters(kind):
    model = tiny_vit(kind)
    connection = next(m for m in model.modules() if isinstance(m, StageConnection))
    start = start_values(connection)
    assert start, 'a connection with coefficients fixes their start values'
    perturb_connections(model, std=0.1)
    report = densezoo.inspect_connections(model)[0]
    params = dict(connection.named_parameters())
    assert set(report.moved) == set(start)
    for key, value in report.moved.items():
        assert value == pytest.approx(float((params[key].detach() - start[key]).pow(2).mean().sqrt()), rel=1e-6)
        assert value > 0.01


def test_random_starts_are_left_out():
    """MUDD's first generator layers start random: only the zero second layers and the biases have a fixed start."""
    connection = next(m for m in tiny_vit('mudd').modules() if isinstance(m, StageConnection))
    fixed = set(start_values(connection))
    assert fixed == {f'w2.{i}' for i in range(4)} | {f'bias.{i}' for i in range(4)}
    state = torch.get_rng_state()
    start_values(connection)
    assert torch.equal(state, torch.get_rng_state())  # the global random state is left as it was


def test_dwa_matrix_places_each_weight_on_its_input():
    model = tiny_vit('dwa', dilation=2)
    connection = next(m for m in model.modules() if isinstance(m, StageConnection))
    fresh = dwa_matrix(connection)
    assert fresh.shape == (4, 5)
    for i in range(4):  # the start: 1 on the block's own output X_{i+1}, 0 on the other inputs it averages
        row = fresh[i]
        assert row[i + 1] == 1 and all(row[j] == 0 for j in range(i + 1) if (i + 1 - j) % 2 == 0)
        assert all(math.isnan(row[j]) for j in range(5) if j > i + 1 or (i + 1 - j) % 2)
    perturb_connections(model, std=0.3)
    matrix = densezoo.inspect_connections(model)[0].coefficients['alphas']
    assert torch.equal(matrix[3, [0, 2, 4]], connection.alphas['3'].detach())


def test_mudd_reports_its_generated_weights():
    model = tiny_vit('mudd').eval()
    sample = torch.rand(2, 3, 32, 32)
    fresh = densezoo.inspect_connections(model, sample)[0]
    for i in range(4):  # the second generator layer starts at zero: the generated weights are the static ones
        assert torch.equal(fresh.dynamic[f'mean.{i}'], fresh.coefficients[f'bias.{i}'])
        assert torch.equal(fresh.dynamic[f'std.{i}'], torch.zeros_like(fresh.dynamic[f'std.{i}']))
    perturb_connections(model, std=0.1)
    moved = densezoo.inspect_connections(model, sample)[0]
    assert all(moved.dynamic[f'std.{i}'].max() > 0 for i in range(4))
    assert moved.dynamic['mean.0'].shape[-1] == 2 and moved.dynamic['mean.3'].shape == (1, 5)
    # the recording leaves the connection's method as it was
    assert 'dynamic_weights' not in vars(next(m for m in model.modules() if isinstance(m, StageConnection)))


def test_scalar_coefficients():
    laurel = densezoo.inspect_connections(tiny_vit('laurel'))[0].coefficients
    assert torch.equal(laurel['alpha'], torch.ones(4)) and torch.equal(laurel['beta'], torch.ones(4))
    assert torch.equal(densezoo.inspect_connections(tiny_vit('rezero'))[0].coefficients['alpha'], torch.zeros(4))
    model = tiny_vit('value_residual')
    start = next(m for m in model.modules() if isinstance(m, StageConnection)).lambda_init  # the family's start
    lambdas = densezoo.inspect_connections(model)[0].coefficients['lambdas']
    assert torch.equal(lambdas, torch.full((3,), start))
    scale = densezoo.inspect_connections(tiny_vit('rir', group_size=2))[0].coefficients['scale']
    assert torch.allclose(scale, torch.ones(2))


def test_plot(tmp_path):
    model = perturb_connections(tiny_vit('mudd'), std=0.1)
    path = densezoo.plot_connections(densezoo.inspect_connections(model, torch.rand(1, 3, 32, 32)),
                                     tmp_path / 'mudd.png')
    from PIL import Image
    assert Image.open(path).size[0] > 200
    with pytest.raises(ValueError, match='no connection with coefficients to plot'):
        densezoo.plot_connections(densezoo.inspect_connections(tiny_vit('residual')), tmp_path / 'none.png')
