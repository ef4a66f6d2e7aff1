"""``load_sr``: an SR model from a weights file, a state dict or a densezoo run, with nothing else to say.

A release file or state dict is recognised by ``densezoo.hub.detect``; a densezoo run folder or checkpoint folder
names its model in ``config.yaml``. Either way the registered model is built with those arguments, the weights load
strictly, and ``model.detected`` (a ``DetectedSR``) says what was found.
"""
import logging
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import timm
import torch
from torch import nn

from densezoo.checkpoint_io import WeightsFileError, load_weights_file
from densezoo.hub.detect import DetectedSR, describe, detect_sr, registered_family
from densezoo.hub.runs import LoadError, find_weights, mismatch, run_model, verified
from densezoo.models import rcan
from densezoo.models._sr import checkpoint_filter_fn

__all__ = ['load_sr', 'load_sr_state', 'training_weights', 'classifier_classes', 'pretrained_classes',
           'create_with_weights']

_logger = logging.getLogger(__name__)


def _filter(family: str):
    return rcan.checkpoint_filter_fn if family == 'RCAN' else checkpoint_filter_fn


def _first_line(err: Exception) -> str:
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


def _build(detected: DetectedSR, state: Mapping[str, Any], source: str, filtered: bool = True) -> nn.Module:
    try:
        model = timm.create_model(detected.name, **detected.kwargs)
    except (TypeError, ValueError) as err:
        raise LoadError(f'{source}: {detected.family} with the detected arguments cannot be built '
                        f'({_first_line(err)})') from None
    try:
        weights = _filter(detected.family)(dict(state), model) if filtered else state
        model.load_state_dict(weights, strict=True)
    except (RuntimeError, ValueError) as err:
        raise LoadError(f'{source} was recognised as {detected.family} ({detected.name}) but its weights do not '
                        f'load: {mismatch(err) if isinstance(err, RuntimeError) else _first_line(err)}') from None
    model.detected = detected
    return model.eval()


def load_sr_state(state_dict: Mapping[str, Any], source: str = 'the state dict') -> nn.Module:
    """The registered SR model ``state_dict`` (a state dict or a release file's dict) fits, loaded strictly."""
    detected = detect_sr(state_dict, source)
    return _build(detected, state_dict, source)


def _from_run(weights, source: str) -> nn.Module:
    name, kwargs = run_model(weights.config)
    if name is None:
        raise LoadError(f'{source} is a densezoo checkpoint without its run\'s config.yaml, so its model is not '
                        f'known; load the run folder, or the weights file with timm.create_model(name)')
    family = registered_family(name)
    if family is None:
        task = (weights.config or {}).get('task', 'another task')
        raise LoadError(f'{source} trained {name} ({task}), not a super-resolution model; load it with '
                        f'timm.create_model({name!r}) or densezoo.create_segmentor')
    entry = timm.models.model_entrypoint(name.split('.')[0])
    detected = describe(family, {**getattr(entry, 'arch_args', {}), **kwargs}, name, 'densezoo',
                        getattr(entry, 'connection_kind', ''))
    return _build(detected, load_weights_file(weights.path), source, filtered=False)


def load_sr(source: Union[str, Path, Mapping[str, Any]], ema: bool = True,
            device: Optional[Union[str, torch.device]] = None) -> nn.Module:
    """The SR model ``source`` holds, built and loaded strictly, in eval mode.

    Args:
        source: A weights file (an official release ``.pth`` of SwinIR, DRCT, HAT, RCAN or RDN, or a densezoo
            ``.safetensors`` / ``.pth``), a densezoo run folder or checkpoint folder, or a state dict.
        ema: For a densezoo run, its EMA weights when it kept them (else the model's).
        device: Where to put the model (default: the CPU).

    ``model.detected`` tells what was recognised (``str()`` of it is one line: family, scale, channels, width,
    depths, window, upsampler, layout, and the registered name it is built as). Anything that cannot be loaded is
    a one-line ``LoadError`` (a ``ValueError``).
    """
    if isinstance(source, Mapping):
        model = load_sr_state(source)
    else:
        try:
            weights = verified(find_weights(source, ema))
            if weights.densezoo:
                model = _from_run(weights, repr(str(source)))
            else:
                model = load_sr_state(load_weights_file(weights.path), repr(str(weights.path)))
        except WeightsFileError as err:
            raise LoadError(str(err)) from None
    _logger.info('%s', model.detected)
    return model.to(device) if device is not None else model


# ---------------------------------------------------------------------------------------------------------------
# any registered model with a weights file

def training_weights(checkpoint: Any, ema: bool = True) -> Dict[str, torch.Tensor]:
    """The model weights of a loaded weights file: of a timm or BasicSR training checkpoint its EMA weights with
    ``ema`` (``state_dict_ema``, ``model_ema``, ``params_ema``), else ``state_dict``, ``model`` or ``params``;
    without DataParallel's ``module.``."""
    if isinstance(checkpoint, Mapping):
        for key in (('state_dict_ema', 'model_ema', 'params_ema') if ema else ()) + ('state_dict', 'model', 'params'):
            if isinstance(checkpoint.get(key), Mapping):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise LoadError('the weights file holds no state dict (a mapping of names to tensors)')
    return {(k[7:] if k.startswith('module.') else k): v for k, v in checkpoint.items()}


def classifier_classes(name: str, kwargs: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> Optional[int]:
    """The number of classes the classifier weights in ``state`` give (found by the model's own classifier)."""
    try:
        with torch.device('meta'):
            probe = timm.create_model(name, **kwargs)
        head = probe.get_classifier()
    except Exception:  # the real build reports it
        return None
    for module_name, module in probe.named_modules():
        if module is head and isinstance(getattr(module, 'weight', None), torch.Tensor):
            weight = state.get(f'{module_name}.weight')
            return int(weight.shape[0]) if weight is not None and weight.ndim >= 1 else None
    return None


def pretrained_classes(name: str) -> Tuple[int, int]:
    """The number of classes of the pretrained cfg of ``name`` (a tag picks one), and its label offset."""
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except (RuntimeError, KeyError, ValueError):
        cfg = None
    return getattr(cfg, 'num_classes', None) or 1000, getattr(cfg, 'label_offset', None) or 0


def create_with_weights(name: str, state: Mapping[str, torch.Tensor], kwargs: Optional[Mapping[str, Any]] = None,
                        filtered: bool = True) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` with the weights ``state``, in eval mode.

    ``filtered``: through the model's checkpoint filter (official layouts), as timm loads pretrained weights; else
    the model's own state dict (densezoo checkpoints), loaded strictly. A classifier with another number of classes
    than the registered default (a fine-tuned checkpoint) sets ``num_classes`` unless ``kwargs`` gives it: timm
    would otherwise drop the trained classifier without a word. Errors are ``TypeError`` (an argument the model
    does not take) and ``RuntimeError`` / ``ValueError`` (weights that do not fit), as timm raises them.
    """
    kwargs = dict(kwargs or {})
    default, offset = pretrained_classes(name)
    found = classifier_classes(name, kwargs, state)
    if 'num_classes' not in kwargs and found is not None and found not in (default, default + offset):
        kwargs['num_classes'] = found
    if not filtered:
        model = timm.create_model(name, **kwargs)
        model.load_state_dict(state)
        return model.eval()
    model = timm.create_model(name, pretrained=True, **kwargs, pretrained_cfg_overlay=dict(
        state_dict=dict(state), num_classes=kwargs.get('num_classes', default)))
    if isinstance(getattr(model, 'pretrained_cfg', None), dict):
        model.pretrained_cfg.pop('state_dict', None)  # holds every tensor a second time
    return model.eval()
