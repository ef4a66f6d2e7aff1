"""Evaluate a super-resolution model on benchmark folders: PSNR / SSIM per image and their means (8-bit values, Y
channel, ``scale`` border pixels cut, as the SR literature reports them), optionally NIQE and LPIPS (weights from
files). Folders hold HR/*.png and optionally LR_bicubic/X{scale}/*.png (else inputs are made from HR: bicubic, or
seeded real-world degradations with ``--degradation realesrgan | bsrgan``).

    python tools/eval_sr.py swinir_classical_x2 --checkpoint 001_classicalSR_DF2K_s64w8_SwinIR-M_x2.pth \
        --data data/benchmarks/Set5 data/benchmarks/Set14 --self-ensemble --json results.json
    python tools/eval_sr.py swinir_real_x4 --checkpoint runs/swinir_real_x4_gan-20260101-120000 \
        --data data/sr_demo/val --degradation bsrgan --niqe \
        --lpips alex --lpips-backbone alexnet-owt-7be5be79.pth --lpips-weights alex.pth
"""
import argparse
import logging
import os
import sys
import warnings

import torch

import densezoo  # noqa: F401  (registers densezoo's models)
from densezoo.cli.argtypes import device_name, float_at_least, int_at_least, int_between
from densezoo.datasets import DataError
from densezoo.datasets.sr import DEGRADATIONS
from densezoo.metrics.lpips import NETS as LPIPS_NETS
from densezoo.profile.common import parse_model_kwargs, write_json
from densezoo.tasks.sr_eval import (EvalError, evaluate_benchmark, format_scores, load_sr_model,
                                    quality_metrics, scores_to_dict, sr_forward)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('model', metavar='MODEL', help='timm / densezoo model name, e.g. swinir_classical_x4')
    parser.add_argument('--checkpoint', required=True, metavar='FILE',
                        help='weights file (official or timm), or a densezoo run / checkpoint folder')
    parser.add_argument('--data', nargs='+', required=True, metavar='DIR', help='benchmark folders (DIR/HR/*.png)')
    parser.add_argument('--scale', type=int_at_least(1), default=None, help="upscaling factor (default: the model's)")
    parser.add_argument('--self-ensemble', action='store_true', help='x8 flip / transpose test-time ensemble')
    parser.add_argument('--tile', type=int_at_least(1), default=None, metavar='N',
                        help='tiled inference with N x N LR tiles')
    parser.add_argument('--tile-overlap', type=int_at_least(0), default=32, metavar='N',
                        help='overlap of the tiles (LR pixels)')
    parser.add_argument('--save', default=None, metavar='DIR', help='write the outputs as DIR/<benchmark>/<image>.png')
    parser.add_argument('--json', nargs='?', const='-', default=None, metavar='FILE',
                        help='write the results as JSON to FILE (or stdout)')
    channel = parser.add_mutually_exclusive_group()
    channel.add_argument('--y-channel', dest='y_channel', action='store_true', default=None,
                         help='score the Y channel (default for upscaling models)')
    channel.add_argument('--rgb', dest='y_channel', action='store_false', help='score RGB (default for upscale 1)')
    parser.add_argument('--crop-border', type=int_at_least(0), default=None,
                        help='pixels cut from each border (default: scale)')
    parser.add_argument('--model-kwargs', nargs='*', default=[], metavar='K=V', help='extra create_model arguments')
    parser.add_argument('--no-ema', action='store_true', help="use a densezoo checkpoint's model weights, not its EMA")
    parser.add_argument('--grey', choices=('L', 'Y'), default='L', help='grey conversion for 1-channel models')
    parser.add_argument('--degradation', choices=DEGRADATIONS, default='bicubic',
                        help='how inputs are made from HR without an LR folder (noise / jpeg: upscale-1 models; '
                             'realesrgan / bsrgan: real-world, seeded by --seed)')
    parser.add_argument('--seed', type=int_at_least(0), default=0, help='seed of the real-world degradations')
    parser.add_argument('--niqe', action='store_true', help='also score NIQE (no reference; lower is better)')
    parser.add_argument('--lpips', choices=LPIPS_NETS, default=None, metavar='NET',
                        help=f'also score LPIPS with backbone NET ({", ".join(LPIPS_NETS)}); needs --lpips-backbone '
                             f'and --lpips-weights')
    parser.add_argument('--lpips-backbone', default=None, metavar='FILE',
                        help="torchvision's ImageNet weights of the LPIPS backbone (e.g. alexnet-owt-7be5be79.pth)")
    parser.add_argument('--lpips-weights', default=None, metavar='FILE',
                        help="LPIPS's linear layers (the lpips package's weights/v0.1/<net>.pth)")
    parser.add_argument('--noise-sigma', type=float_at_least(0), default=25.0,
                        help='Gaussian noise level (0..255 scale)')
    parser.add_argument('--jpeg-quality', type=int_between(1, 100), default=40, help='JPEG quality of the inputs')
    parser.add_argument('--device', type=device_name('cpu', 'cuda', 'mps'), default=None,
                        help='cpu, cuda, cuda:N or mps (default: cuda when available)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    warnings.filterwarnings('ignore', category=FutureWarning)
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    try:
        available = dict(cpu=True, cuda=torch.cuda.is_available(), mps=torch.backends.mps.is_available())
        if not available[device.type] or device.type == 'cuda' and (device.index or 0) >= torch.cuda.device_count():
            raise EvalError(f'--device {args.device} was asked for but torch does not see it; use --device cpu')
        forward = sr_forward(args.tile, args.tile_overlap, args.self_ensemble)
        if args.lpips and not (args.lpips_backbone and args.lpips_weights):
            raise EvalError(f'--lpips {args.lpips} needs --lpips-backbone (torchvision\'s ImageNet weights of the '
                            f'backbone) and --lpips-weights (the lpips package\'s weights/v0.1/{args.lpips}.pth)')
        metrics = quality_metrics(args.niqe, args.lpips, args.lpips_backbone, args.lpips_weights, device)
        model, weights = load_sr_model(args.model, args.checkpoint, parse_model_kwargs(args.model_kwargs),
                                       ema=not args.no_ema)
        upscale = getattr(model, 'upscale', None)
        if args.scale is not None and upscale is not None and args.scale != upscale:
            raise EvalError(f'--scale {args.scale} does not match {args.model}, which upscales x{upscale}')
        scale = args.scale or upscale
        if scale is None:
            raise EvalError(f'{args.model} has no upscale attribute; give --scale')
        y_channel = args.y_channel if args.y_channel is not None else scale > 1
        crop = args.crop_border if args.crop_border is not None else (scale if scale > 1 else 0)
        model.to(device)
        progress = sys.stderr.isatty() and not os.environ.get('CI')
        results = [evaluate_benchmark(model, folder, scale, y_channel=y_channel, crop_border=crop, forward=forward,
                                      save_dir=args.save, device=device, progress=progress, grey=args.grey,
                                      degradation=args.degradation, noise_sigma=args.noise_sigma,
                                      jpeg_quality=args.jpeg_quality, seed=args.seed, metrics=metrics)
                   for folder in args.data]
    except (EvalError, DataError, ValueError) as err:
        print(f'error: {" ".join(str(err).split())}', file=sys.stderr)
        return 2
    # JSON on stdout keeps stdout parseable: the table then goes to stderr
    out = sys.stderr if args.json == '-' else sys.stdout
    print(f'{args.model} with {weights}: x{scale}, {"Y channel" if y_channel else "RGB"}, crop {crop}'
          f'{", self-ensemble x8" if args.self_ensemble else ""}'
          f'{f", tiles {args.tile} (overlap {args.tile_overlap})" if args.tile else ""}', file=out)
    print(format_scores(results), file=out)
    if args.save:
        print(f'outputs: {args.save}', file=out)
    if args.json:
        write_json(scores_to_dict(results, model=args.model, checkpoint=str(weights), scale=scale,
                                  y_channel=y_channel, crop_border=crop, self_ensemble=args.self_ensemble,
                                  tile=args.tile, tile_overlap=args.tile_overlap if args.tile else None),
                   args.json)
    return 0


if __name__ == '__main__':
    sys.exit(main())
