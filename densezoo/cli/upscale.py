"""Upscale or restore your own images with an SR model; its architecture is read from the checkpoint.

    python tools/upscale.py photo.jpg scans/ "shots/*.png" --out up/ --checkpoint SwinIR-M_x4.pth
    python tools/upscale.py photo.jpg --out upscaled/ --checkpoint runs/swinir_light_x2_sr-20260101-120000
    python tools/upscale.py big.png --out upscaled/ --checkpoint HAT_SRx4.pth --tile 256 --tile-overlap 32

Grey, grey + alpha, RGB and RGBA images keep their channels (alpha goes through the model on its own) and 16-bit
files stay 16-bit. Without --tile, images are split into tiles only when the model would need more memory than
--memory GiB (default: half the free GPU memory, or a quarter of the available RAM).
"""
import argparse
import logging
import sys
import warnings

import torch

import densezoo  # noqa: F401  (registers densezoo's models)
from densezoo.cli.argtypes import device_name, float_at_least, int_at_least
from densezoo.datasets import DataError
from densezoo.tasks.upscale import DTYPES, UpscaleError, upscale


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('inputs', nargs='+', metavar='INPUT', help='image files, folders or glob patterns')
    parser.add_argument('--out', required=True, metavar='DIR', help='folder for the results (same relative names)')
    parser.add_argument('--checkpoint', metavar='FILE|RUN_DIR',
                        help='SR weights (official release or densezoo) or a densezoo run folder')
    parser.add_argument('--model', metavar='NAME',
                        help='registered model name (needed only for weights densezoo does not recognise; without '
                             '--checkpoint: its registered weights)')
    parser.add_argument('--tile', type=int_at_least(1), default=None, metavar='N', help='LR tile side in pixels')
    parser.add_argument('--tile-overlap', type=int_at_least(0), default=32, metavar='M',
                        help='LR pixels shared by neighbouring tiles (default 32)')
    parser.add_argument('--memory', type=float_at_least(0.01), default=None, metavar='GIB',
                        help='memory budget that picks the tile size when --tile is not given')
    parser.add_argument('--self-ensemble', action='store_true', help='x8 flip / transpose test-time ensemble')
    parser.add_argument('--dtype', choices=tuple(DTYPES), default='float32', help='precision of the model')
    parser.add_argument('--ext', default='png', choices=('png', 'tiff', 'webp', 'jpg'),
                        help='output format (default png)')
    parser.add_argument('--suffix', default='', help='added to each output name before the extension')
    parser.add_argument('--device', type=device_name('cpu', 'cuda', 'mps'), default=None,
                        help='cpu, cuda, cuda:N or mps (default: cuda when available)')
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument('--progress', dest='progress', action='store_true', default=None,
                          help='show a progress bar (default: when stderr is a terminal)')
    progress.add_argument('--no-progress', dest='progress', action='store_false')
    args = parser.parse_args(argv)
    if args.checkpoint is None and args.model is None:
        parser.error('give --checkpoint FILE (or a run folder), or --model NAME for its registered weights')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    warnings.filterwarnings('ignore', category=FutureWarning)
    try:
        if args.device:
            device = torch.device(args.device)
            if device.type == 'cuda' and not torch.cuda.is_available() or \
                    device.type == 'mps' and not torch.backends.mps.is_available():
                raise UpscaleError(f'--device {args.device} was asked for but torch does not see it; use --device cpu')
        done = upscale(args.inputs, args.out, checkpoint=args.checkpoint, model=args.model, tile=args.tile,
                       tile_overlap=args.tile_overlap, self_ensemble=args.self_ensemble, dtype=args.dtype,
                       device=args.device, memory=args.memory, suffix=args.suffix, ext=args.ext,
                       progress=args.progress, log=lambda line: print(line, file=sys.stderr))
    except (UpscaleError, DataError, ValueError) as err:
        print(f'error: {" ".join(str(err).split())}', file=sys.stderr)
        return 2
    tiles = sorted({item.tile for item in done if item.tile})
    print(f'{len(done)} image{"s" * (len(done) != 1)} written to {args.out}'
          + (f' (tiles of {", ".join(map(str, tiles))} pixels)' if tiles else ''))
    return 0


if __name__ == '__main__':
    sys.exit(main())
