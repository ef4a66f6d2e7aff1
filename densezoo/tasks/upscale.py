"""Upscale (or restore) the user's own images with an SR model: what ``tools/upscale.py`` and ``densezoo.upscale``
run.

Images keep what they are: grey stays grey, alpha is upscaled on its own (through the model, as a grey image), and
16-bit files give 16-bit results. Large images go through ``tiled_forward``; without a tile size, one is picked from
a memory budget by measuring the model's peak memory at two small sizes. Design notes: docs/sr-models.md.
"""
import copy
import glob
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import timm
from PIL import Image
import torch
from torch import nn

from densezoo.datasets.folder import bit_depth
from densezoo.datasets.image_io import WRITABLE, read_pixels, write_pixels
from densezoo.hub.load import load_sr
from densezoo.hub.runs import LoadError
from densezoo.profile.memory import TensorMemoryTracker
from densezoo.tasks.sr_eval import EvalError, load_sr_model, sr_forward
from densezoo.tasks.sr_inference import half_precision

__all__ = ['upscale', 'upscale_pixels', 'find_images', 'pick_tile', 'memory_budget', 'UpscaleError', 'DTYPES']

#: the tile's predicted peak memory times this must fit the budget
MEMORY_MARGIN = 1.25
DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}
_IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')
#: ITU-R BT.601 luma weights (PIL's 'L'): a colour model's output for a grey image, back to grey
_LUMA = (0.299, 0.587, 0.114)


class UpscaleError(ValueError):
    """Input the upscaler cannot use; the message says which and how to fix it."""


# ---------------------------------------------------------------------------------------------------------------
# inputs

def find_images(inputs: Sequence[Union[str, Path]]) -> List[Tuple[Path, Path]]:
    """``(image, name relative to its input)`` for files, folders (searched recursively) and glob patterns."""
    found = []
    for item in inputs:
        item = str(item)
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob('*') if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES
                           and not p.name.startswith('.'))
            if not files:
                raise UpscaleError(f'folder {item!r} holds no images ({", ".join(_IMAGE_SUFFIXES)})')
            found += [(p, p.relative_to(path)) for p in files]
        elif path.is_file():
            found.append((path, Path(path.name)))
        elif glob.has_magic(item):
            files = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not files:
                raise UpscaleError(f'pattern {item!r} matches no files')
            found += [(p, Path(p.name)) for p in files]
        else:
            raise UpscaleError(f'input {item!r} does not exist')
    if not found:
        raise UpscaleError('no input images given')
    return found


# ---------------------------------------------------------------------------------------------------------------
# memory budget and tile size

def memory_budget(device: torch.device) -> int:
    """Default bytes an upscale may use: half the free GPU memory, or a quarter of the available RAM."""
    if device.type == 'cuda':
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    try:
        with open('/proc/meminfo') as f:
            info = dict(line.split(':', 1) for line in f)
        available = int(info['MemAvailable'].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        available = 8 * 2 ** 30
    return int(available * 0.25)


def _peak_bytes(model: nn.Module, side: int, dtype: torch.dtype, device: torch.device) -> int:
    x = torch.rand(1, model.in_chans, side, side, device=device).to(dtype)
    with torch.inference_mode(), TensorMemoryTracker() as tracker:
        model(x)
    return tracker.peak


def pick_tile(model: nn.Module, height: int, width: int, budget: int, overlap: int = 32,
              dtype: torch.dtype = torch.float32, device: Union[str, torch.device] = 'cpu') -> Optional[int]:
    """The largest LR tile side (a multiple of the model's padding multiple) whose forward pass fits ``budget``
    bytes, or None when the whole image fits.

    The peak memory of one forward pass is measured at two small sizes and taken as linear in the pixel count
    (window attention and convolutions are); tiles are then chosen on that line, within ``budget / MEMORY_MARGIN``
    (kernels' scratch memory, which depends on the thread count, is not quite linear).
    """
    multiple = max(getattr(model, 'pad_multiple', 1), 1)
    small = multiple * max(1, -(-16 // multiple))
    large = 2 * small
    device = torch.device(device)
    first, second = (_peak_bytes(model, side, dtype, device) for side in (small, large))
    budget = budget / MEMORY_MARGIN
    per_pixel = max((second - first) / (large * large - small * small), 1e-9)
    fixed = max(first - per_pixel * small * small, 0)
    if fixed + per_pixel * height * width <= budget:
        return None
    side = int(((budget - fixed) / per_pixel) ** 0.5) if budget > fixed else 0
    side -= side % multiple
    if side <= overlap:
        need = MEMORY_MARGIN * (fixed + per_pixel * (overlap + multiple) ** 2) / 2 ** 20
        raise UpscaleError(f'a memory budget of {MEMORY_MARGIN * budget / 2 ** 20:.0f} MiB leaves tiles of '
                           f'{max(side, 0)} pixels, '
                           f'no larger than the tile overlap {overlap}; give at least {need:.0f} MiB, a smaller '
                           f'--tile-overlap, or --tile N')
    return side


# ---------------------------------------------------------------------------------------------------------------
# one image

def _run(model: nn.Module, forward: Callable, planes: np.ndarray, dtype: torch.dtype,
         device: torch.device) -> np.ndarray:
    """The model's output for ``planes`` (H, W, C) in [0, 1], C the model's channels or a stack of grey planes."""
    if model.in_chans == 1 and planes.shape[2] > 1:  # each plane on its own through a grey model
        return np.concatenate([_run(model, forward, planes[..., i:i + 1], dtype, device)
                               for i in range(planes.shape[2])], axis=-1)
    x = torch.from_numpy(np.ascontiguousarray(planes.transpose(2, 0, 1)))[None].to(device)
    with torch.inference_mode():
        y = forward(model, x.to(dtype)).float()
    if not torch.isfinite(y).all():
        raise UpscaleError(f'the model gave non-finite values in {str(dtype).split(".")[-1]}; use --dtype float32 '
                           f'(or bfloat16)')
    return y[0].clamp(0, 1).cpu().numpy().transpose(1, 2, 0)


def _colour(model: nn.Module, forward, grey: np.ndarray, dtype, device) -> np.ndarray:
    """A grey plane (H, W, 1) through a model of any channel count, back as one plane."""
    if model.in_chans == 1:
        return _run(model, forward, grey, dtype, device)
    out = _run(model, forward, np.repeat(grey, model.in_chans, axis=-1), dtype, device)
    return out @ np.asarray(_LUMA, dtype=np.float32)[:, None] if out.shape[-1] == 3 else out.mean(-1, keepdims=True)


def upscale_pixels(model: nn.Module, pixels: np.ndarray, forward: Optional[Callable] = None,
                   dtype: torch.dtype = torch.float32, device: Union[str, torch.device] = 'cpu') -> np.ndarray:
    """The upscaled image of ``pixels`` (H, W, C: 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA; uint8, uint16 or float
    in [0, 1]), with the same channels and type."""
    forward = forward or sr_forward()
    device = torch.device(device)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 2, 3, 4):
        raise UpscaleError(f'expected an image (H, W) or (H, W, C) with 1 to 4 channels, got shape {pixels.shape}')
    if pixels.dtype in (np.uint8, np.uint16):
        top = float(np.iinfo(pixels.dtype).max)
        values = pixels.astype(np.float32) / top
    else:
        top, values = None, pixels.astype(np.float32)
    alpha = values[..., -1:] if pixels.shape[2] in (2, 4) else None
    colour = values[..., :3] if pixels.shape[2] >= 3 else values[..., :1]
    if colour.shape[2] == 1:
        out = _colour(model, forward, colour, dtype, device)
    else:
        out = _run(model, forward, colour, dtype, device)
    if alpha is not None:
        out = np.concatenate([out, _colour(model, forward, alpha, dtype, device)], axis=-1)
    if top is None:
        return out
    return np.round(out * top).astype(pixels.dtype)


# ---------------------------------------------------------------------------------------------------------------
# files

@dataclass
class Upscaled:
    source: Path
    output: Path
    size: Tuple[int, int]  # (H, W) of the input
    channels: int
    bits: int
    tile: Optional[int]


def _model(checkpoint, model, device, dtype: torch.dtype) -> nn.Module:
    if isinstance(model, nn.Module):
        if dtype != torch.float32 or next(model.parameters()).device != device:
            model = copy.deepcopy(model)  # the caller's model stays as it is
        return model.eval().to(device=device, dtype=dtype)
    return _load(checkpoint, model, device).to(dtype)


def _load(checkpoint, model, device) -> nn.Module:
    if checkpoint is None and model is None:
        raise UpscaleError('give the weights: a checkpoint file or run folder (checkpoint=...), or a model')
    try:
        if model is None:
            return load_sr(checkpoint, device=device)
        if checkpoint is None:
            return timm.create_model(model, pretrained=True).eval().to(device)
        try:
            return load_sr_model(model, checkpoint)[0].to(device)
        except EvalError as err:
            raise UpscaleError(str(err)) from None
    except (LoadError, RuntimeError) as err:
        raise UpscaleError(next(line for line in str(err).splitlines() if line.strip())) from None


def upscale(inputs: Union[str, Path, Sequence[Union[str, Path]], np.ndarray],
            out_dir: Optional[Union[str, Path]] = None,
            *, checkpoint=None, model: Optional[Union[str, nn.Module]] = None, tile: Optional[int] = None,
            tile_overlap: int = 32, self_ensemble: bool = False, dtype: str = 'float32',
            device: Optional[Union[str, torch.device]] = None, memory: Optional[float] = None,
            suffix: str = '', ext: str = 'png', progress: Optional[bool] = None, log: Optional[Callable] = None):
    """Upscale images with an SR model.

    Args:
        inputs: Image files, folders (searched recursively) or glob patterns, or an image array (H, W[, C]).
        out_dir: Where the upscaled files go (same relative names, ``ext`` suffix); not used for an array.
        checkpoint: An SR weights file (official release or densezoo) or a densezoo run folder; its architecture
            is recognised (``densezoo.load_sr``).
        model: A registered model name (with ``checkpoint``, or its registered weights), or a built model.
        tile: LR tile side; None picks one from ``memory`` (GiB; default half the free GPU memory or a quarter
            of the available RAM), or runs whole images when they fit.
        tile_overlap: LR pixels shared by neighbouring tiles.
        self_ensemble: The x8 flip / transpose ensemble.
        dtype: 'float32', 'bfloat16' or 'float16' (the model's weights and activations). float16 is calibrated on
            the first image: a SwinIR / DRCT / HAT stream that would overflow runs scaled down by a power of two.
        progress: A progress bar over the images (default: when stderr is a terminal).

    Returns the upscaled array for an array input, else a list of ``Upscaled`` records (source, output, size).
    """
    if dtype not in DTYPES:
        raise UpscaleError(f'dtype={dtype!r} is not one of {", ".join(DTYPES)}')
    if tile is not None and (tile < 1 or tile <= tile_overlap):
        raise UpscaleError(f'tile={tile} must be larger than tile_overlap={tile_overlap}')
    if tile_overlap < 0:
        raise UpscaleError(f'tile_overlap={tile_overlap} must be 0 or more')
    ext = '.' + ext.lower().lstrip('.')
    if ext not in WRITABLE:
        raise UpscaleError(f'ext={ext[1:]!r} cannot be written; choose one of '
                           f'{", ".join(s[1:] for s in WRITABLE)}')
    array = isinstance(inputs, np.ndarray)
    if not array:
        items = find_images([inputs] if isinstance(inputs, (str, Path)) else list(inputs))
        if out_dir is None:
            raise UpscaleError('give an output folder (out_dir / --out DIR)')
        outputs = [Path(out_dir) / name.with_name(name.stem + suffix + ext) for _, name in items]
        clash = _first_clash(items, outputs)
        if clash:
            raise UpscaleError(clash)
        _check_headers(items, ext)
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    torch_dtype = DTYPES[dtype]
    half = torch_dtype == torch.float16
    net = _model(checkpoint, model, device, torch.float32 if half else torch_dtype)
    if log is not None and hasattr(net, 'detected'):
        log(f'model: {net.detected}')
    if half:  # calibrated on the first image: the stream is scaled down if float16 would overflow
        first = inputs if array else read_pixels(items[0][0])[0]
        try:
            prepared = half_precision(net, _calibration_crop(first, net.in_chans).to(device))
        except ValueError as err:
            raise UpscaleError(str(err)) from None
        net = prepared.model
        if log is not None:
            log(str(prepared))
    budget = int(memory * 2 ** 30) if memory is not None else memory_budget(device)
    largest = tile or pick_tile(net, 2 ** 20, 2 ** 20, budget, tile_overlap, torch_dtype, device)

    def tile_for(size: Tuple[int, int]) -> Optional[int]:
        """``tile`` as given, else no tiles for an image that fits the budget whole, else the largest that fits."""
        if tile or largest is None or size[0] * size[1] > largest * largest:
            return largest
        return None

    if array:
        chosen = tile_for(inputs.shape[:2])
        return upscale_pixels(net, inputs, sr_forward(chosen, tile_overlap, self_ensemble), torch_dtype, device)
    done = []
    show = sys.stderr.isatty() and not os.environ.get('CI') if progress is None else progress
    pairs = list(zip(items, outputs))
    if show:
        from tqdm import tqdm
        pairs = tqdm(pairs, desc='upscale', unit='image', dynamic_ncols=True)
    for (source, _), output in pairs:
        pixels, bits = read_pixels(source)
        chosen = tile_for(pixels.shape[:2])
        result = upscale_pixels(net, pixels, sr_forward(chosen, tile_overlap, self_ensemble), torch_dtype, device)
        try:
            write_pixels(output, result)
        except OSError as err:
            raise UpscaleError(f'cannot write {str(output)!r}: {err.strerror or err}') from None
        done.append(Upscaled(source, output, pixels.shape[:2], pixels.shape[2], bits, chosen))
    return done


def _calibration_crop(pixels: np.ndarray, channels: int, side: int = 64) -> torch.Tensor:
    """The centre ``side`` x ``side`` crop of an image (H, W[, C]) as a model input (1, channels, h, w) in [0, 1]."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    values = pixels.astype(np.float32) / (float(np.iinfo(pixels.dtype).max) if pixels.dtype.kind == 'u' else 1.)
    colour = values[..., :3] if values.shape[2] >= 3 else values[..., :1]
    colour = np.repeat(colour, channels, axis=-1) if colour.shape[2] == 1 else colour[..., :channels]
    top, left = max(0, (colour.shape[0] - side) // 2), max(0, (colour.shape[1] - side) // 2)
    crop = colour[top:top + side, left:left + side]
    return torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))[None]


def _check_headers(items: Sequence[Tuple[Path, Path]], ext: str) -> None:
    """Open every input's header (not its pixels): an unreadable file, or a 16-bit one for an 8-bit format, stops
    the run before the model is loaded."""
    for source, name in items:
        try:
            with Image.open(source) as img:
                deep = bit_depth(img) == 16
        except (OSError, SyntaxError, ValueError) as err:
            first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
            raise UpscaleError(f'image {str(source)!r} cannot be read ({first}); is it a damaged or unsupported '
                               f'file?') from None
        if deep and not WRITABLE[ext]:
            raise UpscaleError(f'{ext} holds 8 bits per channel, but {name.stem}{ext} has 16; write .png or .tiff')


def _first_clash(items: Sequence[Tuple[Path, Path]], outputs: Iterable[Path]) -> Optional[str]:
    seen = {}
    for (source, _), output in zip(items, outputs):
        if output in seen:
            return (f'{str(seen[output])!r} and {str(source)!r} would both be written to {str(output)!r}; upscale '
                    f'them into different folders or give a folder instead of the files')
        seen[output] = source
    return None
