"""Print the markdown table of densezoo's registered models (name, family, connection, exact parameter count).

    python tools/model_table.py            # every model
    python tools/model_table.py '*_dwa'    # a wildcard subset
"""
import argparse
import sys

from densezoo.registry import model_table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('pattern', nargs='?', default='', help='wildcard filter on model names')
    args = parser.parse_args(argv)
    print(model_table(args.pattern))
    return 0


if __name__ == '__main__':
    sys.exit(main())
