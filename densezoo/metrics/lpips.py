"""LPIPS, the learned perceptual image distance of Zhang et al. ("The unreasonable effectiveness of deep features as
a perceptual metric", CVPR 2018), version 0.1, as the ``lpips`` package 0.1.4 computes it; lower is more similar.

Images are RGB in [0, 1] (``lpips`` itself takes [-1, 1]). A torchvision backbone (AlexNet, VGG16 or SqueezeNet
1.1) gives features at several depths; each is unit-normalised over its channels, the squared differences of the two
images are weighted by a learned 1x1 layer (``lin0``, ``lin1``, ...), averaged over space and summed over depths.
Weights come only from files given: torchvision's backbone file and the ``lpips`` package's ``weights/v0.1/<net>.pth``.
The module is frozen (eval mode, no trainable parameters) but differentiable in its inputs, so it also serves as a
loss.
"""
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torchvision

from densezoo.checkpoint_io import WeightsFileError, load_weights_file

__all__ = ['LPIPS', 'NETS', 'LIN_CHANNELS', 'BACKBONE_FILES', 'MIN_SIZE']

PathLike = Union[str, Path]
#: backbone -> the channels of the features compared, i.e. of ``lin0``, ``lin1``, ...
LIN_CHANNELS: Dict[str, Tuple[int, ...]] = {
    'alex': (64, 192, 384, 256, 256),
    'vgg': (64, 128, 256, 512, 512),
    'squeeze': (64, 128, 256, 384, 384, 512, 512),
}
NETS = tuple(LIN_CHANNELS)
#: backbone -> torchvision's ImageNet weights file, the one ``backbone_weights`` names
BACKBONE_FILES = {
    'alex': 'alexnet-owt-7be5be79.pth',
    'vgg': 'vgg16-397923af.pth',
    'squeeze': 'squeezenet1_1-b8a52dc0.pth',
}
_BUILDERS = {'alex': ('alexnet', 'AlexNet_Weights'), 'vgg': ('vgg16', 'VGG16_Weights'),
             'squeeze': ('squeezenet1_1', 'SqueezeNet1_1_Weights')}
#: backbone -> the end (exclusive) in ``features`` of each compared stage (after its ReLU), as ``lpips`` slices it
_STAGE_ENDS = {'alex': (2, 5, 8, 10, 12), 'vgg': (4, 9, 16, 23, 30), 'squeeze': (2, 5, 8, 10, 11, 12, 13)}
#: backbone -> the smallest height and width its pooling layers take
MIN_SIZE = {'alex': 31, 'vgg': 16, 'squeeze': 17}
# the input normalisation of lpips v0.1 (its ScalingLayer), for images in [-1, 1]
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_EPS = 1e-10  # added to the channel norm, as lpips does


def _backbone_advice(net: str) -> str:
    name, weights = _BUILDERS[net]
    return (f"give torchvision's ImageNet weights of {name}, {BACKBONE_FILES[net]} (the file at "
            f"torchvision.models.{weights}.IMAGENET1K_V1.url)")


def _lin_advice(net: str) -> str:
    return (f"give the lpips package's weights/v0.1/{net}.pth (in the lpips folder that `pip install lpips==0.1.4` "
            f"installs)")


def _read(path: PathLike, advice: str) -> Dict[str, torch.Tensor]:
    """The tensors of a weights file; any problem is a one-line ``WeightsFileError`` naming the file."""
    try:
        state = load_weights_file(path)
    except WeightsFileError as err:
        raise WeightsFileError(err.path, err.problem, advice) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsFileError(path, f'holds a {type(state).__name__}, not a state dict of tensors', advice)
    return state


def _match(path: PathLike, state: Dict[str, torch.Tensor], expected: Dict[str, torch.Size], what: str,
           advice: str) -> Dict[str, torch.Tensor]:
    """The tensors of ``state`` named in ``expected`` (others are ignored), after checking their names and shapes."""
    missing = [key for key in expected if key not in state]
    if missing:
        more = f' and {len(missing) - 1} more' if len(missing) > 1 else ''
        raise WeightsFileError(path, f'is not {what}: it lacks {missing[0]!r}{more}', advice)
    for key, shape in expected.items():
        if state[key].shape != shape:
            raise WeightsFileError(path, f'is not {what}: {key!r} has shape {tuple(state[key].shape)}, '
                                         f'not {tuple(shape)}', advice)
    return {key: state[key] for key in expected}


class LPIPS(nn.Module):
    """LPIPS v0.1 distance between images in [0, 1].

    Args:
        net: Backbone, 'alex' (the usual choice), 'vgg' or 'squeeze'.
        backbone_weights: torchvision's weights file of that backbone (``BACKBONE_FILES``); only its ``features.*``
            tensors are used.
        lin_weights: The ``lpips`` package's ``weights/v0.1/<net>.pth`` (tensors ``lin0.model.1.weight``, ...).
        random_weights: Use random weights instead of files (PyTorch's default initialisation for the backbone,
            non-negative for the linear layers); for tests only, the distance means nothing then.

    ``forward(x, y)`` takes two float tensors (B, 3, H, W) or (3, H, W) in [0, 1] and gives the distance of each pair,
    shape (B,) or a scalar.
    """

    def __init__(self, net: str = 'alex', backbone_weights: Optional[PathLike] = None,
                 lin_weights: Optional[PathLike] = None, random_weights: bool = False):
        super().__init__()
        if net not in LIN_CHANNELS:
            raise ValueError(f'unknown LPIPS backbone {net!r}; choose one of {", ".join(NETS)}')
        if random_weights:
            if backbone_weights is not None or lin_weights is not None:
                raise ValueError('random_weights=True takes no weights files')
        elif backbone_weights is None or lin_weights is None:
            raise ValueError(f'LPIPS needs backbone_weights ({BACKBONE_FILES[net]} from torchvision) and lin_weights '
                             f'(weights/v0.1/{net}.pth of the lpips package), or random_weights=True for tests')
        self.net = net
        channels = LIN_CHANNELS[net]
        lins = [nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in channels]
        lin_shapes = {f'lin{i}.model.1.weight': lin.weight.shape for i, lin in enumerate(lins)}
        if not random_weights:  # read both files before building anything: a wrong file fails at once
            advice = _lin_advice(net)
            lin_state = _match(lin_weights, _read(lin_weights, advice), lin_shapes,
                               f'the LPIPS {net} linear layers', advice)
            backbone_state = _read(backbone_weights, _backbone_advice(net))
        with torch.device('meta'):  # the layers without their weights (nor the classifier's, which go unused)
            backbone = getattr(torchvision.models, _BUILDERS[net][0])(weights=None)
        features = backbone.features[:_STAGE_ENDS[net][-1]].to_empty(device='cpu')
        if random_weights:
            for layer in features.modules():
                if isinstance(layer, nn.Conv2d):
                    layer.reset_parameters()
            for lin in lins:
                nn.init.uniform_(lin.weight, 0, 2 / lin.weight.shape[1])
        else:
            expected = {f'features.{key}': value.shape for key, value in features.state_dict().items()}
            advice = _backbone_advice(net)
            backbone_state = _match(backbone_weights, backbone_state, expected,
                                    f'torchvision {_BUILDERS[net][0]} weights', advice)
            features.load_state_dict({key[len('features.'):]: value for key, value in backbone_state.items()})
            for lin, key in zip(lins, lin_shapes):
                with torch.no_grad():
                    lin.weight.copy_(lin_state[key])
        self.features = features
        self.lins = nn.ModuleList(lins)
        self.register_buffer('shift', torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('scale', torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        """Stays in eval mode: LPIPS is a fixed metric."""
        return super().train(False)

    def stages(self, x: torch.Tensor) -> Sequence[torch.Tensor]:
        """The backbone features compared, for images (B, 3, H, W) in [0, 1]."""
        h = ((2 * x - 1) - self.shift) / self.scale
        outputs, start = [], 0
        for end in _STAGE_ENDS[self.net]:
            for layer in self.features[start:end]:
                h = layer(h)
            outputs.append(h)
            start = end
        return outputs

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape:
            raise ValueError(f'the images differ in shape: {tuple(x.shape)} and {tuple(y.shape)}')
        single = x.dim() == 3
        if single:
            x, y = x[None], y[None]
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f'LPIPS takes RGB images (3, H, W) or (B, 3, H, W), got shape {tuple(x.shape)}')
        if min(x.shape[-2:]) < MIN_SIZE[self.net]:
            raise ValueError(f'LPIPS with {self.net} needs images of at least {MIN_SIZE[self.net]}x'
                             f'{MIN_SIZE[self.net]} pixels, got {x.shape[-2]}x{x.shape[-1]}')
        total = 0
        for lin, fx, fy in zip(self.lins, self.stages(x), self.stages(y)):
            fx = fx / (fx.pow(2).sum(dim=1, keepdim=True).sqrt() + _EPS)
            fy = fy / (fy.pow(2).sum(dim=1, keepdim=True).sqrt() + _EPS)
            total = total + lin((fx - fy) ** 2).mean(dim=(1, 2, 3))
        return total[0] if single else total
