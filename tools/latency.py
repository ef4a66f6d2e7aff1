#!/usr/bin/env python
"""``densezoo-latency`` run from a clone (also ``python -m densezoo.cli.latency``)."""
import sys

from densezoo.cli.latency import main

if __name__ == '__main__':
    sys.exit(main())
