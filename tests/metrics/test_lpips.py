"""LPIPS: a distance (zero for equal images, symmetric, positive otherwise), differentiable in its inputs, batched,
weights only from the files given with one-line errors naming them, and the values of the ``lpips`` package 0.1.4
(where it is installed) for the same weights."""
from pathlib import Path

import cv2
import pytest
import torch
import torchvision

from densezoo.checkpoint_io import WeightsFileError
from densezoo.metrics.lpips import LIN_CHANNELS, LPIPS, MIN_SIZE

DATA = Path(__file__).resolve().parents[2] / 'data' / 'sr_demo'


def _image(name: str) -> torch.Tensor:
    bgr = cv2.imread(str(DATA / name), cv2.IMREAD_COLOR)
    return torch.from_numpy(bgr[..., ::-1].copy()).permute(2, 0, 1).float() / 255


def _noisy(x: torch.Tensor, std: float = 0.05, seed: int = 0) -> torch.Tensor:
    return (x + std * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))).clamp(0, 1)


def _lin_state(net: str, seed: int = 0) -> dict:
    """Linear weights in the layout of the lpips package's weights/v0.1/<net>.pth (non-negative, as trained)."""
    generator = torch.Generator().manual_seed(seed)
    return {f'lin{i}.model.1.weight': torch.rand(1, c, 1, 1, generator=generator) / c
            for i, c in enumerate(LIN_CHANNELS[net])}


@pytest.fixture(scope='module')
def alex_files(tmp_path_factory):
    """A random AlexNet in the key format of torchvision's weights file (only the ``features`` it uses), and linear
    weights in the lpips layout."""
    root = tmp_path_factory.mktemp('lpips')
    torch.manual_seed(0)
    features = {k: v for k, v in torchvision.models.alexnet().state_dict().items() if k.startswith('features.')}
    torch.save(features, root / 'alexnet.pth')
    torch.save(_lin_state('alex'), root / 'alex.pth')
    return root / 'alexnet.pth', root / 'alex.pth'


@pytest.fixture(scope='module')
def alex(alex_files):
    return LPIPS('alex', backbone_weights=alex_files[0], lin_weights=alex_files[1])


def test_lin_file_layout():
    assert LIN_CHANNELS['alex'] == (64, 192, 384, 256, 256)
    assert {k: tuple(v.shape) for k, v in _lin_state('alex').items()} == {
        'lin0.model.1.weight': (1, 64, 1, 1), 'lin1.model.1.weight': (1, 192, 1, 1),
        'lin2.model.1.weight': (1, 384, 1, 1), 'lin3.model.1.weight': (1, 256, 1, 1),
        'lin4.model.1.weight': (1, 256, 1, 1)}


def test_weights_come_from_the_files(alex, alex_files):
    lin = _lin_state('alex')
    assert all(torch.equal(layer.weight, lin[f'lin{i}.model.1.weight']) for i, layer in enumerate(alex.lins))
    backbone = torch.load(alex_files[0], weights_only=True)
    assert torch.equal(alex.features[3].weight, backbone['features.3.weight'])
    assert not any(p.requires_grad for p in alex.parameters())


def test_a_distance(alex):
    x, y = _image('train/HR/flower_090_184.png')[:, :, :192], _image('train/HR/china_171_000.png')
    with torch.no_grad():
        assert alex(x, x).item() == 0
        d_xy, d_yx = alex(x, y).item(), alex(y, x).item()
        d_noise = alex(x, _noisy(x)).item()
    assert d_xy == pytest.approx(d_yx, rel=1e-6)
    assert d_xy > 0 and d_noise > 0


def test_batches_give_one_value_per_pair(alex):
    x = torch.stack([_image('train/HR/flower_000_000.png'), _image('train/HR/flower_090_184.png'),
                     _image('val/HR/china_171_384.png')])
    y = _noisy(x)
    with torch.no_grad():
        batch = alex(x, y)
        single = torch.stack([alex(a, b) for a, b in zip(x, y)])
    assert batch.shape == (3,) and single.shape == (3,)
    torch.testing.assert_close(batch, single, rtol=1e-5, atol=1e-7)


def test_gradient_reaches_the_input(alex):
    x = _image('train/HR/flower_000_000.png')[:, :128, :128]
    y = _noisy(x).requires_grad_()
    alex.train()  # a training loop switching modes: the metric stays in eval mode
    assert not alex.training
    alex(x, y).backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert all(p.grad is None for p in alex.parameters())


def test_random_weights_are_an_explicit_choice():
    model = LPIPS('squeeze', random_weights=True)
    x = _image('train/HR/flower_000_000.png')[:, :96, :96]
    with torch.no_grad():
        assert model(x, _noisy(x)).item() > 0
    with pytest.raises(ValueError, match='backbone_weights .*lin_weights.*random_weights=True'):
        LPIPS('alex')
    with pytest.raises(ValueError, match='takes no weights files'):
        LPIPS('alex', lin_weights='alex.pth', random_weights=True)
    with pytest.raises(ValueError, match="unknown LPIPS backbone 'resnet'"):
        LPIPS('resnet', random_weights=True)


@pytest.mark.parametrize('net', ['alex', 'vgg', 'squeeze'])
def test_smallest_images(net):
    model = LPIPS(net, random_weights=True)
    n = MIN_SIZE[net]
    with torch.no_grad():
        assert model(torch.rand(1, 3, n, 40), torch.rand(1, 3, n, 40)).shape == (1,)
        with pytest.raises(ValueError, match=f'at least {n}x{n} pixels, got {n - 1}x40'):
            model(torch.rand(3, n - 1, 40), torch.rand(3, n - 1, 40))


def test_shapes_are_checked(alex):
    with pytest.raises(ValueError, match='differ in shape'):
        alex(torch.rand(3, 64, 64), torch.rand(3, 64, 48))
    with pytest.raises(ValueError, match=r'RGB images \(3, H, W\) or \(B, 3, H, W\)'):
        alex(torch.rand(1, 64, 64), torch.rand(1, 64, 64))


def _one_line_error(match: str, **kwargs) -> str:
    with pytest.raises(WeightsFileError, match=match) as info:
        LPIPS('alex', **kwargs)
    assert '\n' not in str(info.value)
    return str(info.value)


def test_missing_files(alex_files, tmp_path):
    backbone, lin = alex_files
    message = _one_line_error('does not exist', backbone_weights=backbone, lin_weights=tmp_path / 'alex.pth')
    assert str(tmp_path / 'alex.pth') in message and 'weights/v0.1/alex.pth' in message and 'lpips' in message
    message = _one_line_error('does not exist', backbone_weights=tmp_path / 'none.pth', lin_weights=lin)
    assert 'none.pth' in message and 'alexnet-owt-7be5be79.pth' in message


def test_damaged_files(alex_files, tmp_path):
    backbone, lin = alex_files
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    assert 'empty.pth' in _one_line_error('damaged', backbone_weights=backbone, lin_weights=empty)
    cut = tmp_path / 'cut.pth'
    cut.write_bytes(backbone.read_bytes()[:5000])
    assert 'alexnet-owt-7be5be79.pth' in _one_line_error('damaged', backbone_weights=cut, lin_weights=lin)


def test_files_of_the_wrong_kind(alex_files, tmp_path):
    backbone, lin = alex_files
    torch.save(_lin_state('vgg'), tmp_path / 'vgg.pth')
    message = _one_line_error(r"'lin1.model.1.weight' has shape \(1, 128, 1, 1\), not \(1, 192, 1, 1\)",
                              backbone_weights=backbone, lin_weights=tmp_path / 'vgg.pth')
    assert 'vgg.pth' in message and 'weights/v0.1/alex.pth' in message
    renamed = {k.replace('.model.1.', '.'): v for k, v in _lin_state('alex').items()}
    torch.save(renamed, tmp_path / 'renamed.pth')
    _one_line_error("lacks 'lin0.model.1.weight' and 4 more", backbone_weights=backbone,
                    lin_weights=tmp_path / 'renamed.pth')
    torch.save(_lin_state('alex'), tmp_path / 'lin_as_backbone.pth')
    message = _one_line_error("is not torchvision alexnet weights: it lacks 'features.0.weight'",
                              backbone_weights=tmp_path / 'lin_as_backbone.pth', lin_weights=lin)
    assert 'alexnet-owt-7be5be79.pth' in message
    torch.save([torch.zeros(1)], tmp_path / 'list.pth')
    _one_line_error('holds a list, not a state dict', backbone_weights=tmp_path / 'list.pth', lin_weights=lin)


@pytest.mark.filterwarnings('ignore:.*deprecated since 0.13:UserWarning')  # lpips calls torchvision's old API
@pytest.mark.parametrize('net', ['alex', 'squeeze'])
def test_values_of_the_lpips_package(net, tmp_path):
    lpips = pytest.importorskip('lpips')
    # the same weights in both: a random torchvision backbone (lpips' pnet_rand=True downloads nothing) and the
    # linear layers that lpips ships (weights/v0.1/<net>.pth inside the package)
    reference = lpips.LPIPS(net=net, version='0.1', pnet_rand=True, verbose=False)
    lin_file = Path(lpips.__file__).parent / 'weights' / 'v0.1' / f'{net}.pth'
    backbone = {}
    for stage in reference.net.children():
        for key, value in stage.state_dict().items():
            backbone[f'features.{key}'] = value  # lpips' slices keep torchvision's layer numbers
    torch.save(backbone, tmp_path / 'backbone.pth')
    ours = LPIPS(net, backbone_weights=tmp_path / 'backbone.pth', lin_weights=lin_file)
    x = torch.stack([_image('train/HR/flower_090_184.png'), _image('val/HR/china_171_384.png')])
    small = torch.nn.functional.interpolate(x, scale_factor=0.25, mode='bicubic', antialias=True)
    blurred = torch.nn.functional.interpolate(small, size=x.shape[-2:], mode='bicubic').clamp(0, 1)
    with torch.no_grad():
        for y in (_noisy(x), blurred):
            torch.testing.assert_close(ours(x, y), reference(x, y, normalize=True).flatten(), rtol=1e-6, atol=1e-7)
