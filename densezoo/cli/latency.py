"""Latency, throughput and peak memory of models side by side, with ratios against the first model.

Examples:
    python tools/latency.py swin_tiny_patch4_window7_224 swin_tiny_patch4_window7_224_dwa --batch-size 1 8
    python tools/latency.py vit_small_patch16_224 --batch-size 64 --amp bf16 --channels-last --compile --json
"""
import argparse
import os
import platform
import sys

import torch

from densezoo.cli.argtypes import device_name, int_at_least
from densezoo.profile.common import (check_model_names, create_model_for_input, format_columns,
                                     import_modules,
                                     parse_model_kwargs, write_json)
from densezoo.profile.latency import measure_latency


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('models', nargs='+', metavar='MODEL', help='timm / densezoo model names; ratios are '
                                                                   'against the first')
    parser.add_argument('--batch-size', type=int_at_least(1), nargs='+', default=[1], help='batch sizes to measure')
    parser.add_argument('--img-size', type=int_at_least(1), default=None,
                        help='square input size (default: the cfg size)')
    parser.add_argument('--amp', choices=['bf16', 'fp16'], default=None, help='autocast dtype')
    parser.add_argument('--channels-last', action='store_true', help='channels_last memory format')
    parser.add_argument('--compile', action='store_true', help='torch.compile every model (inductor)')
    parser.add_argument('--train', action='store_true', help='time a training step (forward + backward)')
    parser.add_argument('--warmup', type=int_at_least(0), default=5, help='untimed iterations per model')
    parser.add_argument('--iters', type=int_at_least(1), default=20, help='timed iterations per model (interleaved)')
    parser.add_argument('--device', type=device_name('cpu', 'cuda'), default=None,
                        help='cpu, cuda or cuda:N (default: cuda when available)')
    parser.add_argument('--threads', type=int_at_least(1), default=None, help='CPU threads (default: torch default)')
    parser.add_argument('--no-memory', action='store_true', help='skip the peak-memory pass')
    parser.add_argument('--tune-malloc', action='store_true',
                        help="keep freed memory in glibc's heap instead of returning it to the OS; removes the "
                             'page-fault churn that dominates CPU timing noise (Linux/glibc)')
    parser.add_argument('--model-kwargs', nargs='*', default=[], metavar='K=V', help='extra create_model args')
    parser.add_argument('--import', dest='imports', action='append', default=[], metavar='MODULE',
                        help='import MODULE first (a plugin registering more timm models, e.g. a reference '
                             'implementation to compare against); repeatable')
    parser.add_argument('--json', nargs='?', const='-', default=None, metavar='PATH',
                        help='write results as JSON to PATH (or stdout)')
    return parser.parse_args(argv)


def _table(results, device_note):
    head = ('model', 'params (M)', 'p50 ms', 'p90 ms', 'p99 ms', 'img/s', 'speed x', 'peak MB', 'memory x',
            'page faults')
    rows = [(r.name, f'{r.params / 1e6:.2f}', f'{r.p50_ms:.1f}', f'{r.p90_ms:.1f}', f'{r.p99_ms:.1f}',
             f'{r.throughput:.1f}', f'{r.speed_ratio:.3f}',
             '-' if r.peak_memory is None else f'{r.peak_memory / 2 ** 20:.1f}',
             '-' if r.memory_ratio is None else f'{r.memory_ratio:.3f}',
             '-' if r.page_faults is None else f'{r.page_faults:.0f}') for r in results]
    return f'batch {results[0].batch_size}, {results[0].mode}, {device_note}\n' + format_columns(head, rows)


# glibc returns freed blocks above these sizes to the OS and faults them in again on the next allocation
_MALLOC_ENV = {'MALLOC_MMAP_THRESHOLD_': str(2 ** 32), 'MALLOC_TRIM_THRESHOLD_': str(2 ** 32),
               'MALLOC_TOP_PAD_': str(2 ** 29)}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.tune_malloc and any(os.environ.get(k) != v for k, v in _MALLOC_ENV.items()):
        # the allocator reads these at start-up: run again with them set
        os.execve(sys.executable, [sys.executable, '-m', __spec__.name, *(argv or sys.argv[1:])],
                  {**os.environ, **_MALLOC_ENV})
    try:
        import_modules(args.imports)
        check_model_names(args.models)
        model_kwargs = parse_model_kwargs(args.model_kwargs)
        if args.device and args.device.startswith('cuda'):
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if count == 0:
                raise ValueError(f'--device {args.device} was asked for but no CUDA device is available')
            if torch.device(args.device).index is not None and torch.device(args.device).index >= count:
                raise ValueError(f'--device {args.device} was asked for but torch sees {count} CUDA device(s); '
                                 f'use an index below {count}')
    except ValueError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == 'cuda':
        note = f'{torch.cuda.get_device_name(device)}, torch {torch.__version__}'
    else:
        reason = '' if args.device == 'cpu' else ' (no CUDA device found)'
        note = f'CPU{reason}: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, ' \
               f'torch {torch.__version__}'
    print(note, file=sys.stderr)

    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    models, input_sizes = {}, {}
    for index, name in enumerate(args.models):
        try:
            model, input_size = create_model_for_input(name, args.img_size, **model_kwargs)
        except (TypeError, ValueError) as err:  # a kwarg the model does not take, or cannot use
            print(f'error: {name}: {" ".join(str(err).split())}', file=sys.stderr)
            return 2
        model = model.to(device=device, memory_format=memory_format)
        label = name if name not in models else f'{name} #{index + 1}'  # the same model twice shows the noise
        models[label] = torch.compile(model) if args.compile else model
        input_sizes[label] = input_size

    all_results = []
    for batch_size in args.batch_size:
        inputs = {name: torch.randn(batch_size, *size, device=device).to(memory_format=memory_format)
                  for name, size in input_sizes.items()}
        progress = None
        if sys.stderr.isatty() and not os.environ.get('CI'):
            from tqdm import tqdm
            progress = tqdm(total=args.iters, desc=f'batch {batch_size}', leave=False)
        results = measure_latency(models, inputs, warmup=args.warmup, iters=args.iters, train=args.train,
                                  amp=args.amp, memory=not args.no_memory, progress=progress)
        if progress is not None:
            progress.close()
        print(_table(results, f'amp {args.amp or "off"}, channels_last {args.channels_last}, '
                              f'compile {args.compile}, tuned malloc {args.tune_malloc}, '
                              f'{args.iters} interleaved iterations'))
        print()
        all_results += results

    if args.json:
        payload = dict(device=note, amp=args.amp, channels_last=args.channels_last, compile=args.compile,
                       train=args.train, tune_malloc=args.tune_malloc, iters=args.iters,
                       results=[r.as_dict() for r in all_results])
        write_json(payload, args.json)
    return 0


if __name__ == '__main__':
    sys.exit(main())
