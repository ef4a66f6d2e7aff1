"""Evaluation of super-resolution models on benchmark folders (what ``tools/eval_sr.py`` runs).

``load_sr_model`` loads a weights file or a densezoo training run, ``benchmark_dataset`` reads a benchmark folder
(``HR/*.png``, optionally ``LR_bicubic/X{scale}/*.png``), and ``evaluate_benchmark`` scores it with the SR protocol
of ``densezoo.metrics.sr`` and, given ``metrics``, more (NIQE, LPIPS: ``quality_metrics``).

Design notes: docs/data.md.
"""
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import timm
import torch
from torch import nn

from densezoo.checkpoint_io import check_weights_file, load_weights_file
from densezoo.datasets import SRPairedDataset
from densezoo.datasets.sr import tensor_to_image
from densezoo.hub.runs import LoadError, find_weights, run_model, verified
from densezoo.registry import check_model_names
from densezoo.tasks.sr_inference import self_ensemble, tiled_forward
from densezoo.metrics.sr import psnr, ssim

__all__ = ['EvalError', 'ImageScore', 'BenchmarkScore', 'load_sr_model', 'benchmark_dataset',
           'evaluate_benchmark', 'sr_forward', 'quality_metrics', 'format_scores', 'scores_to_dict']


class EvalError(ValueError):
    """Evaluation input that cannot be used; the message says which and why."""


@dataclass
class ImageScore:
    name: str
    lr_size: Tuple[int, int]  # (H, W) of the input
    psnr: float
    ssim: float
    seconds: float
    extra: Dict[str, float] = field(default_factory=dict)  # NIQE, LPIPS, ... by name


@dataclass
class BenchmarkScore:
    name: str
    folder: str
    lr_source: str  # the LR folder, or 'bicubic from HR'
    images: List[ImageScore] = field(default_factory=list)

    @property
    def psnr(self) -> float:
        return sum(i.psnr for i in self.images) / max(len(self.images), 1)

    @property
    def ssim(self) -> float:
        return sum(i.ssim for i in self.images) / max(len(self.images), 1)

    def mean(self, metric: str) -> float:
        """The mean of an ``extra`` metric over the images."""
        return sum(i.extra[metric] for i in self.images) / max(len(self.images), 1)


# ----------------------------------------------------------------------------------------------------------------
def first_lines(err: Exception, count: int = 2) -> str:
    """The first ``count`` non-empty lines of an error's message, on one line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return ' '.join(lines[:count])


def load_sr_model(name: str, checkpoint, model_kwargs: Optional[Dict[str, Any]] = None,
                  ema: bool = True) -> Tuple[nn.Module, Path]:
    """The model ``name`` with the weights ``checkpoint`` names (see the module notes), in eval mode."""
    check_model_names([name])
    try:
        weights, densezoo_checkpoint, run_config = verified(find_weights(checkpoint, ema))
    except LoadError as err:
        raise EvalError(str(err)) from None
    trained, kwargs = run_model(run_config)
    if trained and trained != name:
        raise EvalError(f'checkpoint {str(checkpoint)!r} was trained as {trained!r}, not {name!r}')
    kwargs.update(model_kwargs or {})
    if densezoo_checkpoint:
        state = load_weights_file(weights)
    else:  # timm reads it; a damaged or unsafe file is reported here first, on one line naming it
        check_weights_file(weights)
    try:
        if densezoo_checkpoint:
            model = timm.create_model(name, **kwargs)
            model.load_state_dict(state)
        else:
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)), **kwargs)
    except RuntimeError as err:  # load_state_dict: keys or shapes that do not fit
        raise EvalError(f'the weights in {str(weights)!r} do not fit {name} ({first_lines(err)}); check '
                        f'--model-kwargs') from None
    except TypeError as err:  # an argument the model does not take
        raise EvalError(f'{name}: {err}') from None
    return model.eval(), weights


# ----------------------------------------------------------------------------------------------------------------
def benchmark_dataset(folder, scale: int, channels: int = 3, grey: str = 'L', degradation: str = 'bicubic',
                      noise_sigma: float = 25.0, jpeg_quality: int = 40,
                      seed: int = 0) -> Tuple[SRPairedDataset, str]:
    """The whole-image pairs of a benchmark folder and where its LR images come from (a real-world degradation
    draws from ``seed``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvalError(f'benchmark folder {str(folder)!r} does not exist')
    hr_dir = folder / 'HR'
    if not hr_dir.is_dir():
        raise EvalError(f'benchmark folder {str(folder)!r} has no HR sub-folder; expected {folder.name}/HR/*.png '
                        f'(and optionally {folder.name}/LR_bicubic/X{scale}/*.png)')
    lr_dir = folder / 'LR_bicubic' / f'X{scale}'
    use_lr = degradation == 'bicubic' and scale > 1 and lr_dir.is_dir()
    dataset = SRPairedDataset(hr_dir, lr_dir if use_lr else None, scale=scale, channels=channels, grey=grey,
                              degradation=degradation, noise_sigma=noise_sigma, jpeg_quality=jpeg_quality,
                              corrupt='error', seed=seed)
    source = str(lr_dir) if use_lr else {'bicubic': 'bicubic from HR', 'noise': f'HR + noise sigma {noise_sigma}',
                                          'jpeg': f'HR as JPEG quality {jpeg_quality}'}.get(
        degradation, f'HR degraded by {degradation} (seed {seed})')
    return dataset, source


def sr_forward(tile: Optional[int] = None, overlap: int = 32, ensemble: bool = False) -> Callable:
    """``forward(model, lr)`` with tiling and / or the x8 self-ensemble."""
    if tile is not None:
        if tile < 1 or overlap < 0 or overlap >= tile:
            raise EvalError(f'--tile {tile} --tile-overlap {overlap} are not allowed: the tile must be positive and '
                            f'larger than the overlap (0 or more)')
        single = partial(tiled_forward, tile=tile, overlap=overlap)
    else:
        def single(model, x):
            return model(x)
    if ensemble:
        return lambda model, x: self_ensemble(model, x, forward=single)
    return single


def quality_metrics(niqe: bool = False, lpips_net: Optional[str] = None, lpips_backbone=None, lpips_weights=None,
                    device='cpu') -> Dict[str, Callable]:
    """The metrics beside PSNR / SSIM for ``evaluate_benchmark``: NIQE of the output (no reference; lower is better,
    the border cut as for PSNR) and LPIPS between output and HR (whole images; lower is better), its weights from
    the files given."""
    metrics: Dict[str, Callable] = {}
    if niqe:
        from densezoo.metrics.niqe import niqe as niqe_score
        metrics['niqe'] = lambda sr, hr, crop: niqe_score(sr, crop_border=crop)
    if lpips_net is not None:
        from densezoo.metrics.lpips import LPIPS
        model = LPIPS(lpips_net, backbone_weights=lpips_backbone, lin_weights=lpips_weights).to(device)
        metrics['lpips'] = lambda sr, hr, crop: float(model(sr.to(device).clamp(0, 1), hr.to(device)))
    return metrics


@torch.no_grad()
def evaluate_benchmark(model: nn.Module, folder, scale: int, y_channel: bool = True,
                       crop_border: Optional[int] = None, forward: Optional[Callable] = None,
                       save_dir: Optional[Path] = None, device='cpu', progress: bool = False,
                       metrics: Optional[Dict[str, Callable]] = None, **data_options) -> BenchmarkScore:
    """Scores of ``model`` on every image of a benchmark folder; ``metrics`` maps names to ``metric(sr, hr,
    crop_border) -> float`` scored besides PSNR and SSIM; ``save_dir`` also writes the outputs as PNG."""
    dataset, source = benchmark_dataset(folder, scale, channels=getattr(model, 'in_chans', 3), **data_options)
    crop = scale if crop_border is None else crop_border
    run = forward or sr_forward()
    result = BenchmarkScore(name=Path(folder).name, folder=str(folder), lr_source=source)
    if save_dir is not None:
        save_dir = Path(save_dir) / result.name
        save_dir.mkdir(parents=True, exist_ok=True)
    indices = range(len(dataset))
    if progress:
        from tqdm import tqdm
        indices = tqdm(indices, desc=result.name, leave=False, dynamic_ncols=True)
    for index in indices:
        sample = dataset[index]
        (lr, hr), bits = sample, sample.bits  # scored at the HR image's bit depth (8 or 16)
        start = time.perf_counter()
        sr = run(model, lr[None].to(device))[0].float().cpu()
        seconds = time.perf_counter() - start
        if sr.shape != hr.shape:
            raise EvalError(f'the model maps the {lr.shape[-2]}x{lr.shape[-1]} image {dataset.name(index)!r} to '
                            f'{sr.shape[-2]}x{sr.shape[-1]}, expected {hr.shape[-2]}x{hr.shape[-1]} (x{scale})')
        result.images.append(ImageScore(name=dataset.name(index), lr_size=tuple(lr.shape[-2:]),
                                        psnr=psnr(sr, hr, crop, y_channel, bits),
                                        ssim=ssim(sr, hr, crop, y_channel, bits),
                                        seconds=seconds,
                                        extra={name: float(metric(sr, hr, crop))
                                               for name, metric in (metrics or {}).items()}))
        if save_dir is not None:
            tensor_to_image(sr).save(save_dir / f'{dataset.name(index)}.png')
    return result


# ----------------------------------------------------------------------------------------------------------------
def format_scores(benchmarks: Sequence[BenchmarkScore]) -> str:
    """One row per image and one mean row per benchmark."""
    from densezoo.profile.common import format_columns
    extra = list(benchmarks[0].images[0].extra) if benchmarks and benchmarks[0].images else []
    head = ('benchmark / image', 'LR size', 'PSNR', 'SSIM', *(name.upper() for name in extra), 'seconds')
    rows = []
    for bench in benchmarks:
        for image in bench.images:
            rows.append((f'{bench.name}/{image.name}', f'{image.lr_size[1]}x{image.lr_size[0]}', f'{image.psnr:.2f}',
                         f'{image.ssim:.4f}', *(f'{image.extra[name]:.4f}' for name in extra),
                         f'{image.seconds:.2f}'))
        rows.append((f'{bench.name} mean ({len(bench.images)} images)', '', f'{bench.psnr:.2f}', f'{bench.ssim:.4f}',
                     *(f'{bench.mean(name):.4f}' for name in extra), f'{sum(i.seconds for i in bench.images):.2f}'))
    return format_columns(head, rows)


def scores_to_dict(benchmarks: Sequence[BenchmarkScore], **settings) -> Dict[str, Any]:
    """JSON-ready results: the settings and, per benchmark, the means and the per-image scores."""
    return dict(**settings, benchmarks=[
        dict(name=b.name, folder=b.folder, lr_source=b.lr_source, psnr=b.psnr, ssim=b.ssim,
             **{name: b.mean(name) for name in (b.images[0].extra if b.images else {})},
             images=[dict(asdict(i), lr_size=list(i.lr_size)) for i in b.images]) for b in benchmarks])
