#!/usr/bin/env python
"""``densezoo-inspect-connections`` run from a clone (also ``python -m densezoo.cli.inspect_connections``)."""
import sys

from densezoo.cli.inspect_connections import main

if __name__ == '__main__':
    sys.exit(main())
