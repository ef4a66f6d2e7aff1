"""Inspect the connections of a trained model: how far each moved from its start (the plain network), its mixing
coefficients as heat maps (DWA weights, MUDD's static and generated weights, RiR scales, LAuReL / ReZero / value
residual): OUT/connections.png and .json; with --history (a run folder) the moves at every kept checkpoint too.

    python tools/inspect_connections.py runs/swin_digits-20260101-120000 --history --out inspected/
    python tools/inspect_connections.py swinir_light_x2_mudd --checkpoint runs/sr-mudd --sample photo.png --out o/

MODEL is a registered name (with --checkpoint FILE|RUN_DIR or --pretrained) or a densezoo run folder. --sample
gives an image on which MUDD's generated weights are measured (resized to the model's input size for classifiers).
"""
import argparse
import dataclasses
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import List, Tuple

import numpy as np
import torch
from PIL import Image

import densezoo
from densezoo.engine.checkpoint import checkpoint_folders
from densezoo.hub.export import open_model
from densezoo.hub.runs import LoadError
from densezoo.profile.common import parse_model_kwargs

__all__ = ['main', 'move_history', 'sample_input']


def _input_size(model: torch.nn.Module):
    """(H, W) the model was built for: its patch embedding's image size, else its pretrained config's."""
    size = getattr(getattr(model, 'patch_embed', None), 'img_size', None)
    if size is None:
        size = model.pretrained_cfg.get('input_size', (3, 224, 224))[-2:]
    return (size, size) if isinstance(size, int) else tuple(size)


def sample_input(model: torch.nn.Module, path: Path) -> torch.Tensor:
    """An image as a batch of one for ``model``: [0, 1] values for an SR model (it has ``upscale``), else resized to
    the model's input size and normalised with its mean and std."""
    try:
        with Image.open(path) as image:
            grey = getattr(model, 'in_chans', 3) == 1
            image = image.convert('L' if grey else 'RGB')
            if not hasattr(model, 'upscale'):
                size = _input_size(model)
                image = image.resize((size[1], size[0]), Image.BICUBIC)
            pixels = np.asarray(image, dtype=np.float32) / 255
    except (OSError, ValueError) as err:
        raise LoadError(f'--sample {path}: cannot read the image ({err})') from None
    x = torch.from_numpy(pixels[..., None] if pixels.ndim == 2 else pixels).permute(2, 0, 1)[None]
    if not hasattr(model, 'upscale'):
        cfg = model.pretrained_cfg
        mean = torch.tensor(cfg.get('mean', (0.485, 0.456, 0.406))).view(1, -1, 1, 1)
        std = torch.tensor(cfg.get('std', (0.229, 0.224, 0.225))).view(1, -1, 1, 1)
        x = (x - mean) / std
    return x


def move_history(run_dir: Path, ema: bool = True) -> List[Tuple[int, List]]:
    """``(step, reports)`` for every checkpoint kept in run folder ``run_dir``, by step, after ``(0, reports)``: the
    start, where every move is 0 by construction (the coefficients listed are the first checkpoint's)."""
    folders = checkpoint_folders(Path(run_dir) / 'checkpoints')
    if not folders:
        raise LoadError(f'--history needs a run folder with checkpoints; {str(run_dir)!r} has none')
    history, steps = [], set()
    for folder in folders:  # newest first: of two checkpoints of one step, the later one
        step = json.loads((folder / 'manifest.json').read_text())['step']
        if step not in steps:
            steps.add(step)
            history.append((step, densezoo.inspect_connections(open_model(folder, ema=ema).model)))
    history.sort(key=lambda item: item[0])
    start = [dataclasses.replace(report, moved={key: 0.0 for key in report.moved}) for report in history[0][1]]
    return [(0, start)] + [item for item in history if item[0] > 0]


def _plain(value):
    if isinstance(value, torch.Tensor):
        return [None if v != v else v for v in value.tolist()] if value.dim() == 1 else \
            [[None if v != v else v for v in row] for row in value.tolist()]
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('model', metavar='MODEL', help='registered model name or densezoo run folder')
    parser.add_argument('--checkpoint', metavar='FILE|RUN_DIR', help='weights for a registered model name')
    parser.add_argument('--pretrained', action='store_true', help="the model's registered weights")
    parser.add_argument('--no-ema', action='store_true', help="a densezoo run's model weights, not its EMA")
    parser.add_argument('--model-kwargs', nargs='*', default=[], metavar='K=V', help='extra create_model arguments')
    parser.add_argument('--sample', type=Path, default=None, metavar='IMAGE',
                        help="an image on which MUDD's generated weights are measured")
    parser.add_argument('--history', action='store_true',
                        help="a run folder's moves at every kept checkpoint: OUT/history.png and history.json")
    parser.add_argument('--out', type=Path, required=True, metavar='DIR', help='folder for the PNG and the JSON')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    warnings.filterwarnings('ignore', category=FutureWarning)
    try:
        opened = open_model(args.model, args.checkpoint, args.pretrained, parse_model_kwargs(args.model_kwargs),
                            ema=not args.no_ema)
        model = opened.model.eval()
        sample = sample_input(model, args.sample) if args.sample is not None else None
        reports = densezoo.inspect_connections(model, sample)
        if not reports:
            raise LoadError(f'{opened.name} has no connections to inspect; give a connected model (e.g. '
                            f'{opened.name}_dwa)')
        history = None
        if args.history:
            if not (Path(args.model) / 'checkpoints').is_dir():
                raise LoadError(f'--history needs a run folder; {args.model!r} is not one')
            history = move_history(Path(args.model), ema=not args.no_ema)
    except (LoadError, ValueError) as err:
        print(f'error: {" ".join(str(err).split())}', file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for report in reports:
        print(report.summary())
    try:
        picture = densezoo.plot_connections(reports, args.out / 'connections.png')
        print(f'heat maps: {picture}')
    except ValueError as err:  # only connections without coefficients (residual, dense)
        print(str(err))
    records = [dict(name=r.name, kind=r.kind, num_blocks=r.num_blocks, moved=r.moved,
                    coefficients={k: _plain(v) for k, v in r.coefficients.items()},
                    dynamic={k: _plain(v) for k, v in r.dynamic.items()}) for r in reports]
    (args.out / 'connections.json').write_text(json.dumps(dict(model=opened.name, weights=opened.weights,
                                                               connections=records), indent=1) + '\n')
    print(f'report: {args.out / "connections.json"}')
    if history is not None:
        (args.out / 'history.json').write_text(json.dumps(
            [dict(step=step, moved={r.name: r.moved for r in reports}) for step, reports in history], indent=1) + '\n')
        try:
            print(f'moves by step: {densezoo.plot_moves(history, args.out / "history.png")}')
        except ValueError as err:
            print(str(err))
    return 0


if __name__ == '__main__':
    sys.exit(main())
