#!/usr/bin/env python
"""``densezoo-compare`` run from a clone (also ``python -m densezoo.cli.compare``)."""
import sys

from densezoo.cli.compare import main

if __name__ == '__main__':
    sys.exit(main())
