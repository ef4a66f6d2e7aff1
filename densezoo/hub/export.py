"""Export densezoo models: the official layouts of the SR families, and timm model folders (``local-dir:``).

``official_state_dict`` / ``export_official`` write the state dict the official code loads strictly (SwinIR, DRCT,
HAT with their derived index and mask buffers; RCAN in the original EDSR-PyTorch layout or BasicSR's; RDN as
EDSR-PyTorch names it). ``export_timm_dir`` writes ``model.safetensors`` and ``config.json`` with the architecture
and its arguments, so ``timm.create_model('local-dir:PATH', pretrained=True)`` rebuilds the model. ``open_model``
gives the model (and its arguments) a registered name with weights, a run folder or an SR release file names.
"""
import os
from pathlib import Path
from typing import Any, Dict, Mapping, NamedTuple, Optional, Union

import timm
import torch
from timm.models import save_for_hf
from torch import nn

from densezoo.checkpoint_io import WeightsFileError, load_weights_file
from densezoo.hub.load import create_with_weights, load_sr_state, training_weights
from densezoo.hub.runs import LoadError, find_weights, mismatch, run_model, verified
from densezoo.models import rcan
from densezoo.models._sr import official_state_dict as window_official_state_dict
from densezoo.registry import check_model_names

__all__ = ['official_state_dict', 'export_official', 'export_timm_dir', 'OpenedModel', 'open_model',
           'OFFICIAL_LAYOUTS']

#: family -> the layouts ``official_state_dict`` writes (the first is the default)
OFFICIAL_LAYOUTS = {'SwinIR': ('official',), 'DRCT': ('official',), 'HAT': ('official',),
                    'RCAN': ('EDSR-PyTorch', 'BasicSR'), 'RDN': ('EDSR-PyTorch',)}


def _family(model: nn.Module) -> str:
    for cls in type(model).__mro__:
        if cls.__name__ in OFFICIAL_LAYOUTS:
            return cls.__name__
    raise ValueError(f'{type(model).__name__} has no official layout; the official layouts are those of '
                     f'{", ".join(OFFICIAL_LAYOUTS)} (use the timm-dir format for other models)')


def official_state_dict(model: nn.Module, layout: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """``model``'s weights as the official implementation of its family names and stores them.

    ``layout``: for RCAN ``'EDSR-PyTorch'`` (the authors' release format, default) or ``'BasicSR'``; the other
    families have one (``None``).
    """
    family = _family(model)
    layouts = OFFICIAL_LAYOUTS[family]
    layout = layout or layouts[0]
    if layout not in layouts:
        raise ValueError(f'layout={layout!r} is not one of {family}\'s: {", ".join(layouts)}')
    if family == 'RCAN':
        state = model.state_dict()
        return rcan.original_state_dict(model) if layout == 'EDSR-PyTorch' else {k: v.clone() for k, v in state.items()}
    if family == 'RDN':
        return {key: value.clone() for key, value in model.state_dict().items()}
    return window_official_state_dict(model)


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f'.{path.name}.partial')
    try:
        torch.save(obj, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def export_official(model: nn.Module, path: Union[str, Path], layout: Optional[str] = None) -> Path:
    """Write ``official_state_dict(model, layout)`` to ``path`` with ``torch.save``, as the releases do: under
    ``params`` / ``params_ema`` for the BasicSR / KAIR families (the key their test scripts read), as a bare
    state dict for the EDSR-PyTorch layouts."""
    state = official_state_dict(model, layout)
    family = _family(model)
    chosen = layout or OFFICIAL_LAYOUTS[family][0]
    wrapped = state if chosen == 'EDSR-PyTorch' else {getattr(model, 'checkpoint_key', 'params'): state}
    path = Path(path)
    _atomic_save(wrapped, path)
    return path


def export_timm_dir(model: nn.Module, path: Union[str, Path], model_args: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``model`` as a timm model folder: ``model.safetensors`` and ``config.json`` (architecture, pretrained
    cfg and ``model_args``: the arguments it was built with beyond the registered ones)."""
    if not getattr(model, 'pretrained_cfg', None) or not model.pretrained_cfg.get('architecture'):
        raise ValueError(f'{type(model).__name__} was not built by timm.create_model, so it has no registered '
                         f'architecture to name in config.json; build it with timm.create_model(name, ...)')
    args = {key: list(value) if isinstance(value, tuple) else value for key, value in (model_args or {}).items()}
    path = Path(path)
    save_for_hf(model, str(path), model_args=args, safe_serialization=True)
    return path


class OpenedModel(NamedTuple):
    model: nn.Module
    name: str  # registered name
    model_args: Dict[str, Any]  # the create_model arguments beyond the registered ones
    weights: str  # where the weights came from


def open_model(model: Union[str, Path], checkpoint: Optional[Union[str, Path]] = None, pretrained: bool = False,
               model_args: Optional[Mapping[str, Any]] = None, ema: bool = True) -> OpenedModel:
    """The model to export, in eval mode.

    ``model`` is a registered name (with ``checkpoint``, a weights file or densezoo checkpoint, or ``pretrained``),
    a densezoo run folder or checkpoint folder, or an SR weights file (recognised by ``densezoo.load_sr``).
    """
    model_args = dict(model_args or {})
    text = str(model)
    if Path(text).exists() and checkpoint is None:
        weights = verified(find_weights(text, ema))
        if weights.densezoo:
            return _densezoo_checkpoint(weights, text, None, model_args)
        try:
            loaded = load_sr_state(load_weights_file(weights.path), repr(text))
        except WeightsFileError as err:
            raise LoadError(str(err)) from None
        detected = loaded.detected
        return OpenedModel(loaded, detected.name, dict(detected.kwargs), text)
    try:
        check_model_names([text])
    except ValueError as err:
        if os.sep in text or text.endswith(('.pth', '.pt', '.safetensors', '.bin')):
            raise LoadError(f'{text!r} does not exist') from None
        raise LoadError(str(err)) from None
    if checkpoint is None and not pretrained:
        raise LoadError(f'{text}: give the weights with --checkpoint FILE (or a run folder), or --pretrained for '
                        f'its registered weights')
    if checkpoint is None:
        try:
            return OpenedModel(timm.create_model(text, pretrained=True, **model_args).eval(), text, model_args,
                               'registered weights')
        except RuntimeError as err:
            raise LoadError(f'{text}: its registered weights cannot be loaded here ({str(err).splitlines()[0]}); '
                            f'download them and give --checkpoint FILE') from None
    weights = verified(find_weights(checkpoint, ema))
    if weights.densezoo:
        return _densezoo_checkpoint(weights, str(checkpoint), text, model_args)
    try:
        state = training_weights(load_weights_file(weights.path), ema)
        built = create_with_weights(text, state, model_args)
    except WeightsFileError as err:
        raise LoadError(str(err)) from None
    except (RuntimeError, ValueError, TypeError) as err:
        raise LoadError(f'the weights in {str(weights.path)!r} do not fit {text} '
                        f'({mismatch(err)}); check the model name and --model-kwargs') from None
    return OpenedModel(built.eval(), text, model_args, str(weights.path))


def _densezoo_checkpoint(weights, source: str, name: Optional[str], model_args: Mapping[str, Any]) -> OpenedModel:
    """The model of a densezoo run or checkpoint folder (``name``: the model it must be, when the caller named
    one), built with the run's arguments and ``model_args`` over them, its state dict loaded strictly."""
    _refuse_segmentation(weights.config, source)
    state = load_weights_file(weights.path)
    trained, kwargs = run_model(weights.config, state)
    if name is None and trained is None:
        raise LoadError(f'{source!r} is a densezoo checkpoint without its run\'s config.yaml; give the model name '
                        f'and --checkpoint {source}')
    if name is not None and trained and trained != name:
        raise LoadError(f'checkpoint {source!r} was trained as {trained!r}, not {name!r}')
    name = name or trained
    kwargs.update(model_args)
    built = _create(name, kwargs)
    _load(built, state, str(weights.path))
    return OpenedModel(built.eval(), name, kwargs, str(weights.path))


def _refuse_segmentation(config: Optional[Mapping[str, Any]], source: str) -> None:
    if (config or {}).get('task') == 'seg':
        raise LoadError(f'{source!r} is a segmentation run: its model is a Segmentor (backbone and head), which '
                        f'neither timm folders nor the official SR layouts hold; load it with '
                        f'densezoo.heads.segmentor.load_segmentor_state')


def _create(name: str, kwargs: Mapping[str, Any]) -> nn.Module:
    try:
        return timm.create_model(name, **kwargs)
    except (TypeError, ValueError) as err:
        raise LoadError(f'{name} cannot be built with {dict(kwargs)}: {str(err).splitlines()[0]}') from None


def _load(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise LoadError(f'the weights in {source!r} do not fit {type(model).__name__}: {mismatch(err)}') from None
