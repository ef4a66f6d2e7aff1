"""Parameters, multiply-adds (fvcore and torch's FlopCounterMode, side by side) and activations of models.

MACs are multiply-adds of one forward pass (GFLOPs = 2 x GMACs); attention, densezoo's in-place fusions and its
weighted sums over block outputs are counted by both counters (see densezoo/profile/flops.py).

Examples:
    python tools/flops.py swin_tiny_patch4_window7_224 swin_tiny_patch4_window7_224_dwa pvt_v2_b0
    python tools/flops.py swinv2_tiny_window8_256_mudd --img-size 512 --table
"""
import argparse
import sys

import fvcore
import torch

from densezoo.cli.argtypes import int_at_least
from densezoo.profile.common import (check_model_names, create_model_for_input, format_columns,
                                     import_modules,
                                     parse_model_kwargs, write_json)
from densezoo.profile.flops import count, format_table


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('models', nargs='+', metavar='MODEL', help='timm / densezoo model names')
    parser.add_argument('--img-size', type=int_at_least(1), default=None,
                        help='square input size (default: the cfg size)')
    parser.add_argument('--batch-size', type=int_at_least(1), default=1, help='batch size of the counted forward pass')
    parser.add_argument('--model-kwargs', nargs='*', default=[], metavar='K=V', help='extra create_model args')
    parser.add_argument('--import', dest='imports', action='append', default=[], metavar='MODULE',
                        help='import MODULE first (a plugin registering more timm models, e.g. a reference '
                             'implementation to compare against); repeatable')
    parser.add_argument('--table', action='store_true',
                        help='print a markdown table (model | params | GMACs | activations (M)) for README / docs')
    parser.add_argument('--json', nargs='?', const='-', default=None, metavar='PATH',
                        help='write results as JSON to PATH (or stdout)')
    return parser.parse_args(argv)


def _table(reports) -> str:
    head = ('model', 'input', 'params', 'GMACs fvcore', 'GMACs torch', 'diff %', 'GFLOPs', 'activations (M)')
    rows = [(r.name, 'x'.join(map(str, r.input_size)), f'{r.params:,}', f'{r.macs_fvcore / 1e9:.3f}',
             f'{r.macs_torch / 1e9:.3f}', f'{r.agreement * 100:.2f}', f'{r.flops / 1e9:.3f}',
             f'{r.activations / 1e6:.2f}') for r in reports]
    return f'batch {reports[0].batch_size}, one forward pass; GFLOPs = 2 x GMACs fvcore\n' + format_columns(head, rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import_modules(args.imports)
        check_model_names(args.models)
        model_kwargs = parse_model_kwargs(args.model_kwargs)
    except ValueError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2

    reports = []
    for name in args.models:
        try:
            model, input_size = create_model_for_input(name, args.img_size, **model_kwargs)
        except (TypeError, ValueError) as err:  # a kwarg the model does not take, or cannot use
            print(f'error: {name}: {err}', file=sys.stderr)
            return 2
        reports.append(count(model, input_size, args.batch_size, name=name))

    # JSON on stdout keeps stdout parseable: the table then goes to stderr
    out = sys.stderr if args.json == '-' else sys.stdout
    print(format_table(reports) if args.table else _table(reports), file=out)
    if args.json:
        payload = dict(torch=torch.__version__, fvcore=fvcore.__version__, img_size=args.img_size,
                       batch_size=args.batch_size, results=[r.as_dict() for r in reports])
        write_json(payload, args.json)
    return 0


if __name__ == '__main__':
    sys.exit(main())
