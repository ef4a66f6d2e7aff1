#!/usr/bin/env python
"""``densezoo-eval-sr`` run from a clone (also ``python -m densezoo.cli.eval_sr``)."""
import sys

from densezoo.cli.eval_sr import main

if __name__ == '__main__':
    sys.exit(main())
