"""Export a model: the official SR layout, ONNX, a torch.export program, or a timm model folder.

    python tools/export.py swinir_classical_x4 --checkpoint runs/my-run --format official --out swinir_x4.pth
    python tools/export.py runs/swin-digits-20260101-120000 --format timm-dir --out exported/swin-digits
    python tools/export.py HAT_SRx4.pth --format onnx --out hat_x4.onnx      # an SR release file: recognised
    python tools/export.py swin_tiny_patch4_window7_224_dwa --pretrained --format export --out swin.pt2

MODEL is a registered name (with --checkpoint FILE|RUN_DIR or --pretrained), a densezoo run folder, or an SR
weights file densezoo recognises. ONNX and torch.export programs take any input height and width the model accepts
(docs/export.md).
"""
import argparse
import logging
import sys
import warnings

import timm
import torch

import densezoo  # noqa: F401  (registers densezoo's models)
from densezoo.hub.export import OFFICIAL_LAYOUTS, export_official, export_timm_dir, open_model
from densezoo.hub.runs import LoadError
from densezoo.profile.common import parse_model_kwargs

FORMATS = ('official', 'onnx', 'export', 'timm-dir')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('model', metavar='MODEL', help='registered model name, run folder or SR weights file')
    parser.add_argument('--checkpoint', metavar='FILE|RUN_DIR', help='weights for a registered model name')
    parser.add_argument('--pretrained', action='store_true', help="the model's registered weights")
    parser.add_argument('--format', required=True, choices=FORMATS, help='what to write')
    parser.add_argument('--out', required=True, metavar='PATH', help='file (official, onnx, export) or folder')
    parser.add_argument('--layout', default=None,
                        help=f'official layout where a family has two (RCAN: {" or ".join(OFFICIAL_LAYOUTS["RCAN"])})')
    parser.add_argument('--no-ema', action='store_true', help="a densezoo run's model weights, not its EMA")
    parser.add_argument('--model-kwargs', nargs='*', default=[], metavar='K=V', help='extra create_model arguments')
    parser.add_argument('--opset', type=int, default=None, help='ONNX opset (default: the exporter\'s)')
    parser.add_argument('--static', action='store_true',
                        help='onnx / export: a program for one input size (the model\'s own) instead of any size')
    return parser.parse_args(argv)


def _dynamic_size(model: str, kwargs: dict) -> dict:
    """``kwargs`` with ``dynamic_img_size=True`` for a registered backbone that takes it (Swin, ViT, LookupViT build
    their position tables for one size otherwise); run folders and weights files keep their own arguments."""
    if 'dynamic_img_size' in kwargs or not timm.models.is_model(model.split('.')[0]):
        return kwargs
    try:
        with torch.device('meta'):
            timm.create_model(model, dynamic_img_size=True, **kwargs)
    except (TypeError, ValueError):
        return kwargs
    return {**kwargs, 'dynamic_img_size': True}


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    warnings.filterwarnings('ignore', category=FutureWarning)
    try:
        kwargs = parse_model_kwargs(args.model_kwargs)
        if args.format in ('onnx', 'export') and not args.static:
            kwargs = _dynamic_size(args.model, kwargs)
        opened = open_model(args.model, args.checkpoint, args.pretrained, kwargs, ema=not args.no_ema)
        if args.format == 'official':
            path = export_official(opened.model, args.out, args.layout)
        elif args.format == 'timm-dir':
            path = export_timm_dir(opened.model, args.out, opened.model_args)
        elif args.format == 'onnx':
            from densezoo.hub.program import export_onnx
            path = export_onnx(opened.model, args.out, opset=args.opset, dynamic=not args.static)
        else:
            from densezoo.hub.program import export_program
            path = export_program(opened.model, args.out, dynamic=not args.static)
    except (LoadError, ValueError, RuntimeError, OSError) as err:
        print(f'error: {" ".join(str(err).split())}', file=sys.stderr)
        return 2
    detected = getattr(opened.model, 'detected', None)
    print(f'{opened.name} ({opened.weights}{f"; {detected}" if detected else ""}) -> {args.format}: {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
