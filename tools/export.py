#!/usr/bin/env python
"""``densezoo-export`` run from a clone (also ``python -m densezoo.cli.export``)."""
import sys

from densezoo.cli.export import main

if __name__ == '__main__':
    sys.exit(main())
