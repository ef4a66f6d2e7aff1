#!/usr/bin/env python
"""The real-world SR demo run from a clone (also ``python -m densezoo.cli.real_sr_demo``)."""
import sys

from densezoo.cli.real_sr_demo import main

if __name__ == '__main__':
    sys.exit(main())
