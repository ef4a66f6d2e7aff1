#!/usr/bin/env python
"""``densezoo-train`` run from a clone (also ``python -m densezoo.cli.train``)."""
import sys

from densezoo.cli.train import main

if __name__ == '__main__':
    sys.exit(main())
