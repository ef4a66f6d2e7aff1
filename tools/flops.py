#!/usr/bin/env python
"""``densezoo-flops`` run from a clone (also ``python -m densezoo.cli.flops``)."""
import sys

from densezoo.cli.flops import main

if __name__ == '__main__':
    sys.exit(main())
