"""densezoo models as ``torch.export`` programs (``.pt2``) and ONNX files, taking any height and width they accept.

``export_program`` saves the program with ``torch.export.save``; ``export_onnx`` turns the same program into ONNX
with PyTorch's dynamo-based exporter (``torch.onnx.export(..., dynamo=True)``, which needs onnxscript): the
TorchScript-based exporter is deprecated and records the window layouts that SwinIR, DRCT and HAT compute from the
input size as constants of one size. ``input_sizes`` says which heights and widths an exported model accepts.
Dynamic sizes need torch >= 2.8; static ones work from torch 2.6.

Design notes, the sizes per family and the measured differences: docs/export.md.
"""
import contextlib
import re
from pathlib import Path
from typing import NamedTuple, Optional, Tuple, Union

import torch
from torch import nn

from densezoo.layers.fast_path import fast_path
from densezoo.models._sr import SRModel

__all__ = ['InputSizes', 'input_sizes', 'export', 'export_program', 'export_onnx', 'DYNAMIC_TORCH']

#: the first torch that exports every family with dynamic sizes correctly (2.7 has the size-oblivious reasoning
#: ``_size_oblivious`` turns on, but fails on HAT and writes Swin ONNX files that fail at other sizes)
DYNAMIC_TORCH = (2, 8)

PathLike = Union[str, Path]


class InputSizes(NamedTuple):
    """The heights and widths an exported model accepts: multiples of ``multiple`` from ``minimum`` on (no upper
    bound). ``example`` is the size it is traced at, above the minimum and not square, so that no grid of windows
    or patches is traced at a side of one (it would be specialised)."""
    multiple: int
    minimum: int
    example: Tuple[int, int]

    def accepts(self, height: int, width: int) -> bool:
        return all(size >= self.minimum and size % self.multiple == 0 for size in (height, width))

    def __str__(self) -> str:
        if self.multiple == 1:
            return f'any height and width from {self.minimum}'
        return f'heights and widths that are multiples of {self.multiple} from {self.minimum}'


def _name(model: nn.Module) -> str:
    if isinstance(model, torch.export.ExportedProgram):
        return 'the program'
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    return cfg.get('architecture') or type(model).__name__


def _stage_windows(model: nn.Module):
    """(largest attention window side, stride) of each feature stage that has windows (Swin, Swin V2)."""
    for info in getattr(model, 'feature_info', None) or ():
        try:
            stage = model.get_submodule(info['module'])
        except (AttributeError, KeyError):
            continue
        sides = [0]
        for module in stage.modules():
            window = getattr(module, 'window_size', None)
            sides.extend(window if isinstance(window, (tuple, list)) else [window] if isinstance(window, int) else [])
        if max(sides):
            yield max(sides), info['reduction']


def input_sizes(model: nn.Module) -> InputSizes:
    """The heights and widths ``model`` takes once exported with dynamic sizes.

    SR models: any size above the window (SwinIR, DRCT, HAT; they pad to a multiple of it) or from 2 (RCAN, RDN).
    Classification backbones: multiples of their largest feature stride (the patch for ViT and LookupViT, 32 for
    Swin, PVT and RDNet), from two strides on; LookupViT from its compressed grid on, Swin from the size that
    gives every stage more than one window per row and column. Raises ``ValueError`` for a model that takes one
    size only (created without ``dynamic_img_size=True``) or whose sizes are not known here.
    """
    if isinstance(model, SRModel):
        window = model.pad_multiple
        minimum = window + 1 if window > 1 else 2
        return InputSizes(1, minimum, (max(2 * window + 1, 11), max(3 * window + 1, 13)))
    name = _name(model)
    if getattr(model, 'dynamic_img_size', True) is False:
        size = 'x'.join(map(str, _static_size(model)))
        raise ValueError(f'{name} takes {size} inputs only; create it with dynamic_img_size=True '
                         f'(timm.create_model(..., dynamic_img_size=True)) to export it for other sizes, or export it '
                         f'with dynamic=False')
    reductions = [info['reduction'] for info in getattr(model, 'feature_info', None) or () if 'reduction' in info]
    if not reductions:
        raise ValueError(f'the input sizes of {name} are not known to densezoo; export it with dynamic=False')
    multiple = max(reductions)
    blocks = 2  # the smallest size, in multiples
    grid = getattr(model, 'compressed_grid', None)  # LookupViT: the lookup grid must cover the compressed one
    if grid is not None:
        blocks = max(blocks, *grid)
    for window, reduction in _stage_windows(model):  # Swin: more than one window per row in every stage
        blocks = max(blocks, window * reduction // multiple + 1)
    return InputSizes(multiple, blocks * multiple, ((blocks + 1) * multiple, (blocks + 2) * multiple))


def _static_size(model: nn.Module) -> Tuple[int, int]:
    """The input size of a model exported with static sizes when no example is given."""
    size = getattr(getattr(model, 'patch_embed', None), 'img_size', None) or getattr(model, 'img_size', None)
    if size is None:
        cfg = getattr(model, 'pretrained_cfg', None) or {}
        size = cfg.get('input_size', (3, 224, 224))[-2:]
    return tuple(size) if isinstance(size, (tuple, list)) else (size, size)


def _channels(model: nn.Module) -> int:
    channels = getattr(model, 'in_chans', None)
    if isinstance(channels, int):
        return channels
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    return cfg.get('input_size', (3,))[0]


def _example(model: nn.Module, example: Optional[torch.Tensor], sizes: Optional[InputSizes]) -> torch.Tensor:
    """The input the model is traced at: ``example``'s batch, channels, dtype and device; with dynamic sizes
    (``sizes``) at ``sizes.example``, else at ``example``'s size (default: the model's own input size)."""
    channels = _channels(model)
    given = example is not None
    if not given:
        parameter = next(model.parameters(), None)
        example = torch.rand(1, channels, *_static_size(model),
                             device=parameter.device if parameter is not None else None,
                             dtype=parameter.dtype if parameter is not None else None)
    elif not isinstance(example, torch.Tensor) or example.dim() != 4:
        shape = tuple(example.shape) if isinstance(example, torch.Tensor) else type(example).__name__
        raise ValueError(f'example must be an image batch (B, {channels}, H, W), got {shape}')
    elif example.shape[1] != channels:
        raise ValueError(f'example has {example.shape[1]} channels and {_name(model)} takes {channels}; give an '
                         f'example of shape (B, {channels}, H, W)')
    if sizes is None:
        return example
    if given and not sizes.accepts(*example.shape[-2:]):
        raise ValueError(f'example size {example.shape[-2]}x{example.shape[-1]} is not one {_name(model)} accepts '
                         f'when exported ({sizes})')
    return torch.rand(*example.shape[:2], *sizes.example, dtype=example.dtype, device=example.device)


def _dynamic_shapes(sizes: InputSizes):
    Dim = torch.export.Dim
    if sizes.multiple == 1:
        dims = [Dim(name, min=sizes.minimum) for name in ('height', 'width')]
    else:
        dims = [Dim(name, min=sizes.minimum // sizes.multiple) * sizes.multiple for name in ('rows', 'cols')]
    return ({2: dims[0], 3: dims[1]},)


def _size_oblivious():
    """Reason about sizes as if none were 0 or 1 (``input_sizes`` keeps every traced grid above 1), so that the
    shapes of the window arithmetic are proven for every size at once (torch >= 2.7; else nothing)."""
    from torch.fx.experimental import _config as config
    if hasattr(config, 'backed_size_oblivious'):
        return config.patch(backed_size_oblivious=True)
    return contextlib.nullcontext()


def _summary(error: BaseException) -> str:
    """The first line of the innermost cause of ``error``, without terminal colours."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = re.sub(r'\x1b\[[0-9;]*m', '', str(error))
    return next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)


def _version() -> Tuple[int, ...]:
    return tuple(int(part) for part in torch.__version__.split('+')[0].split('.')[:2])


def export(model: nn.Module, *, example: Optional[torch.Tensor] = None,
           dynamic: bool = True) -> 'torch.export.ExportedProgram':
    """``model`` in eval mode as a ``torch.export`` program on densezoo's reference path (no fast path).

    Args:
        model: A densezoo model (any SR family or classification backbone) or another timm backbone.
        example: An input batch (B, C, H, W): the program takes its batch size, channels, dtype and device. With
            ``dynamic`` its height and width only need to be accepted sizes (``input_sizes``): the model is traced
            at ``input_sizes(model).example``. Default: one random image of the model's own input size.
        dynamic: Any accepted height and width (``input_sizes``); False: the example's size only.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f'expected a torch.nn.Module to export, got {type(model).__name__}')
    if dynamic and _version() < DYNAMIC_TORCH:
        raise RuntimeError(f'exporting with dynamic height and width needs torch >= '
                           f'{".".join(map(str, DYNAMIC_TORCH))} (this is torch {torch.__version__}); upgrade torch '
                           f'or export with dynamic=False')
    sizes = input_sizes(model) if dynamic else None
    x = _example(model, example, sizes)
    training = model.training
    model.eval()
    try:
        with fast_path(False), _size_oblivious():
            return torch.export.export(model, (x,), dynamic_shapes=_dynamic_shapes(sizes) if sizes else None,
                                       strict=False)
    except Exception as error:
        hint = 'export it with dynamic=False' if dynamic else 'it may use an operation torch.export cannot record'
        raise RuntimeError(f'{_name(model)} could not be exported with torch.export ({_summary(error)}); '
                           f'{hint}') from error
    finally:
        model.train(training)


def _check_suffix(path: PathLike, suffix: str, what: str) -> Path:
    path = Path(path)
    if path.suffix != suffix:
        other = {'.onnx': 'export_onnx', '.pt2': 'export_program'}.get(path.suffix)
        use = f'; use {other} for {path.suffix} files' if other else ''
        raise ValueError(f'{what} files end in {suffix}; got {str(path)!r}{use}')
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _program(model: Union[nn.Module, 'torch.export.ExportedProgram'], example: Optional[torch.Tensor],
             dynamic: bool) -> 'torch.export.ExportedProgram':
    if isinstance(model, torch.export.ExportedProgram):
        return model
    return export(model, example=example, dynamic=dynamic)


def export_program(model: Union[nn.Module, 'torch.export.ExportedProgram'], path: PathLike, *,
                   example: Optional[torch.Tensor] = None, dynamic: bool = True) -> Path:
    """Save ``model`` as a ``torch.export`` program at ``path`` (``.pt2``; read it with ``torch.export.load`` and
    run ``program.module()(x)``). ``model`` may also be a program made by ``export`` (saved as it is);
    ``example`` and ``dynamic`` as in ``export``."""
    path = _check_suffix(path, '.pt2', 'torch.export program')
    torch.export.save(_program(model, example, dynamic), path)
    return path


#: models larger than this keep their weights in a file beside the ONNX file (ONNX's protobuf limit is 2 GB)
_EXTERNAL_DATA_BYTES = 1 << 30


def export_onnx(model: Union[nn.Module, 'torch.export.ExportedProgram'], path: PathLike, *,
                example: Optional[torch.Tensor] = None, dynamic: bool = True, opset: Optional[int] = None) -> Path:
    """Save ``model`` as an ONNX file at ``path`` (``.onnx``): its ``export`` program (or ``model`` itself, a program
    made by ``export``) converted by PyTorch's dynamo-based ONNX exporter. Input ``input`` (B, C, H, W), output
    ``output``; with ``dynamic`` the height and width axes are dynamic. ``opset``: the ONNX opset (default: the
    exporter's). Needs onnx and onnxscript (``pip install densezoo[onnx]``)."""
    path = _check_suffix(path, '.onnx', 'ONNX')
    for module in ('onnx', 'onnxscript'):
        try:
            __import__(module)
        except ImportError:
            raise RuntimeError(f'ONNX export needs the {module} package; pip install onnx onnxscript (or '
                               f'densezoo[onnx])') from None
    program = _program(model, example, dynamic)
    size = sum(t.numel() * t.element_size() for t in (*program.state_dict.values(), *program.constants.values())
               if isinstance(t, torch.Tensor))
    try:
        with fast_path(False), _size_oblivious():  # the exporter traces the program again
            onnx_program = torch.onnx.export(program, (), dynamo=True, opset_version=opset, input_names=['input'],
                                             output_names=['output'], optimize=True, verbose=False)
    except Exception as error:
        raise RuntimeError(f'{_name(model)} could not be converted to ONNX ({_summary(error)}); export it as a '
                           f'torch.export program (export_program) instead') from error
    onnx_program.save(str(path), external_data=size > _EXTERNAL_DATA_BYTES)
    return path
