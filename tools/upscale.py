#!/usr/bin/env python
"""``densezoo-upscale`` run from a clone (also ``python -m densezoo.cli.upscale``)."""
import sys

from densezoo.cli.upscale import main

if __name__ == '__main__':
    sys.exit(main())
