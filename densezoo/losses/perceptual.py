"""Perceptual and style losses on the features of a frozen VGG19, as BasicSR's ``PerceptualLoss``.

The VGG19 weights come from a file the user gives (torchvision's ``vgg19-dcbe5e4b.pth``, its ``features.*``
entries alone, or the same as ``.safetensors``); nothing is downloaded. ``random_weights=True`` builds the loss
without a file, for tests. Layers are named as BasicSR names them: ``conv1_2`` is the output of the second conv
before its ReLU, ``relu1_2`` after it.
"""
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Tuple, Union

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.vgg import cfgs, make_layers

from densezoo.checkpoint_io import WeightsFileError, load_weights_file

__all__ = ['PerceptualLoss', 'VGGFeatureExtractor', 'VGGWeightsError', 'gram_matrix', 'VGG19_LAYERS',
           'VGG19_WEIGHTS_ADVICE']

PathLike = Union[str, Path]


def _vgg19_layer_names() -> Tuple[str, ...]:
    names = []
    for block, convs in enumerate((2, 2, 4, 4, 4), start=1):
        for i in range(1, convs + 1):
            names += [f'conv{block}_{i}', f'relu{block}_{i}']
        names.append(f'pool{block}')
    return tuple(names)


#: the names of torchvision's ``vgg19().features`` modules, in order: ``VGG19_LAYERS[i]`` names ``features[i]``
VGG19_LAYERS = _vgg19_layer_names()
VGG19_WEIGHTS_ADVICE = ("download torchvision's vgg19 weights (vgg19-dcbe5e4b.pth, "
                        "https://download.pytorch.org/models/vgg19-dcbe5e4b.pth) and give its path")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGGWeightsError(WeightsFileError):
    """The VGG19 weights of a perceptual loss are missing, unreadable or not VGG19's; the message is one line that
    says what is wrong and how to fix it. ``path`` is None when no file was given."""

    def __init__(self, path: Optional[PathLike], problem: str):
        self.path, self.problem = (None if path is None else Path(path)), problem
        if path is None:
            message = (f'the perceptual loss needs VGG19 weights and {problem}; {VGG19_WEIGHTS_ADVICE} as '
                       f'weights_file (random_weights=True builds an untrained loss, for tests only)')
        else:
            message = f'perceptual loss weights file {str(path)!r} {problem}; {VGG19_WEIGHTS_ADVICE}'
        ValueError.__init__(self, message)


def _feature_weights(path: PathLike, state: object, needed: Iterable[str]) -> Dict[str, torch.Tensor]:
    """The entries ``needed`` (keys of ``vgg19().features``: '0.weight', ...) of the state dict a file holds, which
    has them with or without the ``features.`` prefix."""
    if not isinstance(state, Mapping) or not all(isinstance(key, str) for key in state):
        raise VGGWeightsError(path, f'holds a {type(state).__name__}, not a state dict')
    prefix = 'features.' if any(key.startswith('features.') for key in state) else ''
    needed = list(needed)
    missing = [key for key in needed if prefix + key not in state]
    if missing:
        found = ', '.join(repr(key) for key in list(state)[:3]) or 'none'
        raise VGGWeightsError(path, f'is not a VGG19 state dict: it lacks {len(missing)} of the {len(needed)} '
                                    f'entries needed, the first features.{missing[0]} (its first keys: {found})')
    return {key: state[prefix + key] for key in needed}


class VGGFeatureExtractor(nn.Module):
    """The features of a frozen VGG19 at the named layers (``VGG19_LAYERS``), as a dict name -> tensor.

    Only the modules up to the last named layer are kept; its parameters never require grad and it stays in eval
    mode whatever ``train()`` says. The input is an RGB image in [0, 1] (in [-1, 1] with ``range_norm``), normalised
    with ImageNet's mean and std when ``use_input_norm``.
    """

    def __init__(self, layers: Iterable[str], weights_file: Optional[PathLike] = None, random_weights: bool = False,
                 use_input_norm: bool = True, range_norm: bool = False):
        super().__init__()
        self.layers = tuple(dict.fromkeys(layers))
        unknown = [name for name in self.layers if name not in VGG19_LAYERS]
        if not self.layers or unknown:
            raise ValueError(f'VGG19 layers must be some of {", ".join(VGG19_LAYERS)}; got '
                             f'{", ".join(map(repr, unknown)) if unknown else "none"}')
        if weights_file is not None and random_weights:
            raise ValueError('give either weights_file (VGG19 weights) or random_weights=True, not both')
        if weights_file is None and not random_weights:
            raise VGGWeightsError(None, 'weights_file is None')
        self.use_input_norm, self.range_norm = use_input_norm, range_norm

        last = max(VGG19_LAYERS.index(name) for name in self.layers)
        modules = []
        for module in make_layers(cfgs['E'])[:last + 1]:  # torchvision's vgg19().features
            # out-of-place ReLU: a conv's output that is returned must not be overwritten by the ReLU after it
            modules.append(nn.ReLU() if isinstance(module, nn.ReLU) else module)
        self.body = nn.Sequential(OrderedDict(zip(VGG19_LAYERS, modules)))
        if weights_file is None:
            self._init_random()
        else:
            self._load(weights_file)
        self.body.requires_grad_(False)
        self.body.eval()
        self.register_buffer('mean', torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _init_random(self) -> None:
        """torchvision's VGG initialisation."""
        for module in self.body:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu')
                nn.init.zeros_(module.bias)

    def _load(self, path: PathLike) -> None:
        try:
            state = load_weights_file(path)
        except WeightsFileError as err:
            raise VGGWeightsError(path, err.problem) from None
        indices = {name: str(i) for i, name in enumerate(VGG19_LAYERS)}
        own = self.body.state_dict()
        wanted = {key: indices[key.split('.')[0]] + '.' + key.split('.')[1] for key in own}  # conv1_1.weight: 0.weight
        found = _feature_weights(path, state, wanted.values())
        for key, source in wanted.items():
            tensor = found[source]
            if not isinstance(tensor, torch.Tensor) or tensor.shape != own[key].shape:
                shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise VGGWeightsError(path, f'is not VGG19\'s: {source} ({key}) is {shape}, VGG19 has '
                                            f'{tuple(own[key].shape)}')
        self.body.load_state_dict({key: found[source] for key, source in wanted.items()})

    def train(self, mode: bool = True) -> 'VGGFeatureExtractor':
        super().train(mode)
        self.body.eval()  # frozen: always in eval mode
        return self

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if self.range_norm:
            x = (x + 1) / 2
        if self.use_input_norm:
            x = (x - self.mean) / self.std
        features = {}
        for name, module in self.body.named_children():
            x = module(x)
            if name in self.layers:
                features[name] = x
        return features


def gram_matrix(x: torch.Tensor) -> torch.Tensor:
    """The (B, C, C) Gram matrices of (B, C, H, W) features, divided by C·H·W."""
    b, c, h, w = x.shape
    flat = x.reshape(b, c, h * w)
    return torch.bmm(flat, flat.transpose(1, 2)) / (c * h * w)


CRITERIA = ('l1', 'l2', 'fro')


class PerceptualLoss(nn.Module):
    """Perceptual loss (feature distance) and style loss (Gram-matrix distance) on VGG19 features.

    ``forward(x, gt)`` returns ``(perceptual, style)``: each is the weighted sum over ``layer_weights`` of the
    criterion between the layer's features (``perceptual``) or their Gram matrices (``style``) of ``x`` and ``gt``,
    times ``perceptual_weight`` or ``style_weight``; either is None where its weight is 0. BasicSR's arguments and
    values, except that the weights come from ``weights_file`` (or ``random_weights=True``).

    Args:
        layer_weights: VGG19 layer name (``VGG19_LAYERS``, e.g. ``'conv5_4'``) -> weight.
        weights_file: torchvision's ``vgg19-dcbe5e4b.pth`` (or its ``features.*`` entries, or ``.safetensors``).
        random_weights: build it untrained without a file (tests); never implied by a missing ``weights_file``.
        use_input_norm: normalise the input with ImageNet's mean and std (images in [0, 1]).
        range_norm: map inputs from [-1, 1] to [0, 1] first.
        perceptual_weight: factor of the feature term; 0 skips it.
        style_weight: factor of the style term; 0 skips it.
        criterion: ``'l1'`` (mean absolute error), ``'l2'`` (mean squared error) or ``'fro'`` (Frobenius norm).
    """

    def __init__(self, layer_weights: Mapping[str, float], weights_file: Optional[PathLike] = None,
                 random_weights: bool = False, use_input_norm: bool = True, range_norm: bool = False,
                 perceptual_weight: float = 1.0, style_weight: float = 0., criterion: str = 'l1'):
        super().__init__()
        if criterion not in CRITERIA:
            raise ValueError(f'criterion must be one of {", ".join(CRITERIA)}, got {criterion!r}')
        self.layer_weights = dict(layer_weights)
        self.perceptual_weight, self.style_weight, self.criterion = perceptual_weight, style_weight, criterion
        self.vgg = VGGFeatureExtractor(self.layer_weights, weights_file=weights_file, random_weights=random_weights,
                                       use_input_norm=use_input_norm, range_norm=range_norm)

    def _distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.criterion == 'l1':
            return F.l1_loss(a, b)
        if self.criterion == 'l2':
            return F.mse_loss(a, b)
        return torch.linalg.vector_norm(a - b)  # 'fro': over every element, the batch included

    def _weighted_sum(self, pairs) -> torch.Tensor:
        return sum(self._distance(a, b) * self.layer_weights[name] for name, a, b in pairs)

    def forward(self, x: torch.Tensor, gt: torch.Tensor) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        x_features = self.vgg(x)
        with torch.no_grad():
            gt_features = self.vgg(gt.detach())
        perceptual = style = None
        if self.perceptual_weight > 0:
            perceptual = self._weighted_sum((name, x_features[name], gt_features[name])
                                            for name in x_features) * self.perceptual_weight
        if self.style_weight > 0:
            style = self._weighted_sum((name, gram_matrix(x_features[name]), gram_matrix(gt_features[name]))
                                       for name in x_features) * self.style_weight
        return perceptual, style
