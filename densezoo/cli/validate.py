"""Evaluate a classification model (top-1 / top-5 and loss, as timm's validate.py) or a segmentation model (mIoU /
mAcc / aAcc and per-class IoU, as training and mmseg's test tool): a registered model with --checkpoint (a timm or
official weights file) or --pretrained, or a densezoo run folder (its best checkpoint, EMA weights unless --no-ema;
its config gives the model, classes, transform and sliding windows; its validation data unless --data is given).

    python tools/validate.py swin_tiny_patch4_window7_224 --checkpoint swin_tiny_patch4_window7_224.pth \\
        --data data/imagenet --batch-size 128 --amp --json results.json
    python tools/validate.py runs/swin_digits-20260101-120000              # its own validation split
    python tools/validate.py runs/seg_shapes-20260101-120000 --mode slide --crop-size 48 48 --stride 32 32
"""
import argparse
import logging
import os
import sys
import warnings

import torch

import densezoo  # noqa: F401  (registers densezoo's models)
from densezoo.cli.argtypes import device_name, int_at_least
from densezoo.profile.common import format_columns, parse_model_kwargs, write_json
from densezoo.tasks.classification import INTERPOLATIONS
from densezoo.tasks.validate import (ValidateError, model_source, prepare_classification, prepare_segmentation,
                                     run_classification, run_segmentation)

#: options of one task only (dest -> flag), refused with the other
CLASSIFICATION_ONLY = dict(img_size='--img-size', crop_pct='--crop-pct', interpolation='--interpolation',
                           class_map='--class-map')
SEGMENTATION_ONLY = dict(split='--split', mode='--mode', crop_size='--crop-size', stride='--stride',
                         num_classes='--num-classes', head='--head', head_kwargs='--head-kwargs',
                         out_indices='--out-indices', resize_short='--resize-short',
                         reduce_zero_label='--reduce-zero-label')


def _crop_pct(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'must be a number, got {text!r}') from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f'must lie in (0, 1] (e.g. 0.875), got {text}')
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('model', metavar='MODEL_OR_RUN',
                        help='a registered timm / densezoo model name, or a densezoo run or checkpoint folder')
    parser.add_argument('--data', metavar='DIR', default=None,
                        help='classification: a folder of class sub-folders (<class>/<image>), or one holding it as '
                             'val/ or validation/; segmentation: a folder with images/<split> and '
                             'annotations/<split> (ADE20K layout). Default for a run: its validation data')
    parser.add_argument('--task', choices=('classification', 'seg'), default=None,
                        help="default: the run's task, else classification")
    weights = parser.add_argument_group('weights')
    weights.add_argument('--checkpoint', metavar='FILE|RUN_DIR', default=None,
                         help='weights file (timm or official layout; .safetensors, .pth, timm training checkpoints),'
                              ' or a densezoo run / checkpoint folder')
    weights.add_argument('--pretrained', action='store_true', help="timm's pretrained weights of MODEL")
    weights.add_argument('--no-ema', action='store_true',
                         help="a checkpoint's model weights, not its EMA weights (used when present)")
    weights.add_argument('--model-kwargs', nargs='*', default=[], metavar='K=V', help='extra create_model arguments')
    run = parser.add_argument_group('evaluation')
    run.add_argument('-b', '--batch-size', type=int_at_least(1), default=None,
                     help="classification batch size (default: a run's validation batch size, else 256)")
    run.add_argument('-j', '--workers', '--num-workers', dest='workers', type=int_at_least(0), default=None,
                     help="data loading processes (default: a run's data.workers, else 4)")
    run.add_argument('--device', type=device_name('cpu', 'cuda', 'mps'), default=None,
                     help='cpu, cuda, cuda:N or mps (default: cuda when available)')
    run.add_argument('--amp', action=argparse.BooleanOptionalAction, default=None,
                     help="autocast to --amp-dtype (default: a run's amp setting, else off)")
    run.add_argument('--amp-dtype', '--dtype', dest='amp_dtype', choices=('float16', 'bfloat16'), default=None,
                     help="the autocast dtype (default: a run's, else float16)")
    run.add_argument('--json', nargs='?', const='-', default=None, metavar='FILE',
                     help='write the results as JSON to FILE (or stdout)')
    cls = parser.add_argument_group(
        'classification', 'Class indices: a run\'s training class folders, sorted (as it trained); other models: '
                          '--class-map, else the data\'s class folder names, sorted (timm\'s and torchvision\'s '
                          'order for ImageNet); the model must have as many classes.')
    cls.add_argument('--img-size', type=int_at_least(1), default=None,
                     help="input size (default: a run's data.img_size, else the model's test size)")
    cls.add_argument('--crop-pct', type=_crop_pct, default=None, help='centre crop fraction (default: the model\'s)')
    cls.add_argument('--interpolation', choices=INTERPOLATIONS, default=None,
                     help="resize interpolation (default: the model's)")
    cls.add_argument('--class-map', metavar='FILE', default=None,
                     help='class folder names in class index order, one per line')
    seg = parser.add_argument_group('segmentation (--task seg)')
    seg.add_argument('--split', default=None, help="split folder (default: a run's, else validation or val)")
    seg.add_argument('--mode', choices=('whole', 'slide'), default=None,
                     help="whole images or sliding windows (default: a run's setting, else whole)")
    seg.add_argument('--crop-size', nargs='+', type=int_at_least(1), default=None, metavar='N',
                     help='window of --mode slide: H W (one number: square)')
    seg.add_argument('--stride', nargs='+', type=int_at_least(1), default=None, metavar='N',
                     help='window stride: H W (default: two thirds of the window)')
    seg.add_argument('--num-classes', type=int_at_least(1), default=None,
                     help='classes of a weights file without decode_head.conv_seg (default: read from the weights)')
    seg.add_argument('--head', default=None, help='decode head of a weights file: upernet (default), fpn, segformer, '
                                                  'dpt')
    seg.add_argument('--head-kwargs', nargs='*', default=None, metavar='K=V', help='head arguments, e.g. channels=512')
    seg.add_argument('--out-indices', nargs='+', type=int, default=None, metavar='I',
                     help="the backbone's feature maps the head takes (default: the head's)")
    seg.add_argument('--resize-short', type=int_at_least(1), default=None,
                     help="resize images to this short side (default: a run's data.resize_short, else none)")
    seg.add_argument('--reduce-zero-label', action=argparse.BooleanOptionalAction, default=None,
                     help="label 0 ignored, the others moved down by one (ADE20K's 150 classes)")
    args = parser.parse_args(argv)
    for name in ('crop_size', 'stride'):
        if getattr(args, name) is not None and len(getattr(args, name)) > 2:
            parser.error(f'argument --{name.replace("_", "-")}: expected H W or one size, got '
                         f'{len(getattr(args, name))} numbers')
    return args


def _check_task_options(args, task: str) -> None:
    other = SEGMENTATION_ONLY if task == 'classification' else CLASSIFICATION_ONLY
    given = [flag for dest, flag in other.items() if getattr(args, dest) is not None]
    if given:
        applies = 'segmentation (--task seg)' if task == 'classification' else 'classification'
        raise ValidateError(f'{given[0]} applies to {applies} only; this is a {task} evaluation')


def _amp(args):
    if args.amp is False:
        return 'off'
    if args.amp:
        return args.amp_dtype or 'float16'
    return args.amp_dtype  # None: the run's setting (a dtype alone does not switch autocast on)


def _describe_classification(setup, result) -> str:
    cfg = result.data_config
    weights = result.checkpoint or "timm's pretrained weights"
    return (f'{result.model} with {weights}: {result.images} images of {result.data}, {result.num_classes} classes '
            f'({setup.class_order})\n'
            f'input {"x".join(map(str, cfg["input_size"]))}, crop_pct {cfg["crop_pct"]} '
            f'({cfg.get("crop_mode") or "center"}), {cfg["interpolation"]}, batch {result.batch_size}, '
            f'{result.device}{f", amp {result.amp}" if result.amp else ""}')


def _describe_segmentation(result) -> str:
    window = (f' {result.crop_size[0]}x{result.crop_size[1]} stride {result.stride[0]}x{result.stride[1]}'
              if result.mode == 'slide' else '')
    return (f'{result.model} with {result.checkpoint}: {result.images} images of {result.data} ({result.split}), '
            f'{result.num_classes} classes, {result.mode}{window}, {result.device}'
            f'{f", amp {result.amp}" if result.amp else ""}')


def _class_table(result) -> str:
    def cell(value):
        return 'nan' if value is None else f'{value:.2f}'
    return format_columns(('class', 'IoU', 'Acc'),
                          [(str(i), cell(iou), cell(acc)) for i, (iou, acc) in enumerate(zip(result.iou, result.acc))])


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    warnings.filterwarnings('ignore', category=FutureWarning)
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    progress = sys.stderr.isatty() and not os.environ.get('CI')
    try:
        available = dict(cpu=True, cuda=torch.cuda.is_available(), mps=torch.backends.mps.is_available())
        if not available[device.type] or device.type == 'cuda' and (device.index or 0) >= torch.cuda.device_count():
            raise ValidateError(f'--device {args.device} was asked for but torch does not see it; use --device cpu')
        source = model_source(args.model, args.checkpoint, args.pretrained, args.task, ema=not args.no_ema,
                              model_kwargs=parse_model_kwargs(args.model_kwargs))
        _check_task_options(args, source.task)
        workers = args.workers
        if workers is None:
            workers = source.config.data.workers if source.config is not None else 4
        if source.task == 'seg':
            setup = prepare_segmentation(
                source, args.data, split=args.split, mode=args.mode, crop_size=args.crop_size, stride=args.stride,
                num_classes=args.num_classes, head=args.head, head_kwargs=parse_model_kwargs(args.head_kwargs),
                out_indices=args.out_indices, resize_short=args.resize_short,
                reduce_zero_label=args.reduce_zero_label, amp=_amp(args))
            result = run_segmentation(setup, device, workers, progress)
        else:
            setup = prepare_classification(
                source, args.data, batch_size=args.batch_size, img_size=args.img_size, crop_pct=args.crop_pct,
                interpolation=args.interpolation, class_map=args.class_map, amp=_amp(args))
            result = run_classification(setup, device, workers, progress)
    except ValueError as err:  # ValidateError, DataError, LoadError, WeightsFileError, ...
        print(f'error: {" ".join(str(err).split())}', file=sys.stderr)
        return 2
    # JSON on stdout keeps stdout parseable: the report then goes to stderr
    out = sys.stderr if args.json == '-' else sys.stdout
    if source.task == 'seg':
        print(_describe_segmentation(result), file=out)
        print(_class_table(result), file=out)
    else:
        print(_describe_classification(setup, result), file=out)
    print(result.summary(), file=out)
    print(f'loss {result.loss:.4f}, {result.images_per_s:.1f} images/s ({result.seconds:.2f} s)', file=out)
    if args.json:
        write_json(result.to_dict(), args.json)
    return 0


if __name__ == '__main__':
    sys.exit(main())
