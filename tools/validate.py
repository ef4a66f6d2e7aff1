#!/usr/bin/env python
"""``densezoo-validate`` run from a clone (also ``python -m densezoo.cli.validate``)."""
import sys

from densezoo.cli.validate import main

if __name__ == '__main__':
    sys.exit(main())
