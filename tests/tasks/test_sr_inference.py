"""x8 self-ensemble and tiled inference of SR models."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from densezoo.tasks.sr_inference import self_ensemble, tile_starts, tiled_forward
from tests.sr_standin import StandInSR


def _random_standin(scale: int, seed: int = 0) -> StandInSR:
    """The stand-in with random weights everywhere: receptive field 5x5 LR pixels (two 3x3 convs)."""
    torch.manual_seed(seed)
    model = StandInSR(upscale=scale, width=8)
    nn.init.normal_(model.conv2.weight, std=0.2)
    return model.eval()


def _d4(x, k, flip):
    """An independent spelling of the 8 symmetries: rotate by k quarter turns, then maybe mirror."""
    x = torch.rot90(x, k, dims=(-2, -1))
    return x.flip(-1) if flip else x


def _d4_inverse(y, k, flip):
    y = y.flip(-1) if flip else y
    return torch.rot90(y, -k, dims=(-2, -1))


@torch.no_grad()
def test_self_ensemble_is_the_mean_over_the_eight_symmetries():
    model = _random_standin(2)
    lr = torch.rand(2, 3, 9, 12)
    expected = torch.stack([_d4_inverse(model(_d4(lr, k, f)), k, f) for k in range(4) for f in (False, True)])
    assert torch.allclose(self_ensemble(model, lr), expected.mean(0), atol=1e-6)
    assert not torch.allclose(self_ensemble(model, lr), model(lr), atol=1e-3)  # the model is not symmetric


@torch.no_grad()
def test_self_ensemble_is_equivariant_and_exact_for_symmetric_models():
    model = _random_standin(3, seed=1)
    lr = torch.rand(1, 3, 7, 10)
    out = self_ensemble(model, lr)
    for k in range(4):
        for flip in (False, True):
            assert torch.allclose(self_ensemble(model, _d4(lr, k, flip)), _d4(out, k, flip), atol=1e-6)

    class Symmetric(nn.Module):  # a per-pixel map and nearest upsampling commute with every symmetry
        def forward(self, x):
            return F.interpolate(torch.sigmoid(3 * x - 1), scale_factor=2, mode='nearest')

    assert torch.allclose(self_ensemble(Symmetric(), lr), Symmetric()(lr), atol=1e-7)


def test_tile_starts_cover_with_the_overlap():
    assert tile_starts(10, 16, 4) == [0]
    assert tile_starts(30, 12, 4) == [0, 8, 16, 18]
    for length, tile, overlap in [(31, 8, 3), (100, 17, 0), (9, 8, 7)]:
        starts = tile_starts(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] + tile == length
        assert all(0 < b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize('scale, size, tile, overlap', [(2, (21, 30), 8, 4), (3, (17, 13), 7, 5), (2, (40, 9), 12, 4),
                                                        (1, (20, 20), 8, 6)])
@torch.no_grad()
def test_tiles_equal_the_whole_image_when_the_receptive_field_fits_in_the_overlap(scale, size, tile, overlap):
    """The stand-in sees 2 LR pixels to each side; tiles drop overlap // 2 >= 2 pixels along inner edges."""
    model = _random_standin(scale)
    lr = torch.rand(2, 3, *size)
    whole = model(lr)
    tiled = tiled_forward(model, lr, tile=tile, overlap=overlap)
    assert tiled.shape == whole.shape
    assert (tiled - whole).abs().max() < 1e-4


@torch.no_grad()
def test_too_small_an_overlap_shows_the_seams():
    model = _random_standin(2)
    lr = torch.rand(1, 3, 24, 24)
    assert (tiled_forward(model, lr, tile=8, overlap=2) - model(lr)).abs().max() > 1e-3  # margin 1 < reach 2
    assert torch.equal(tiled_forward(model, lr, tile=32, overlap=4), model(lr))  # one tile: the plain forward


@torch.no_grad()
def test_tiles_compose_with_the_self_ensemble():
    model = _random_standin(2)
    lr = torch.rand(1, 3, 19, 22)
    tiled = self_ensemble(model, lr, forward=lambda m, x: tiled_forward(m, x, tile=8, overlap=4))
    assert (tiled - self_ensemble(model, lr)).abs().max() < 1e-4


@pytest.mark.parametrize('kwargs, message', [
    (dict(tile=8, overlap=8), r'^tile=8 must be larger than overlap=8$'),
    (dict(tile=4, overlap=6), r'^tile=4 must be larger than overlap=6$'),
    (dict(tile=0, overlap=0), r'^tile=0 and overlap=0 are not allowed; tile must be positive and overlap 0 or more$'),
    (dict(tile=8, overlap=-1), r'^tile=8 and overlap=-1 are not allowed'),
])
def test_bad_tiles_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiled_forward(_random_standin(2), torch.rand(1, 3, 20, 20), **kwargs)
    with pytest.raises(ValueError, match=r'^lr must be a batch \(B, C, H, W\), got shape \(3, 20, 20\)$'):
        tiled_forward(_random_standin(2), torch.rand(3, 20, 20), tile=8, overlap=2)
