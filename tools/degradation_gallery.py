#!/usr/bin/env python
"""The degradation gallery run from a clone (also ``python -m densezoo.cli.degradation_gallery``)."""
import sys

from densezoo.cli.degradation_gallery import main

if __name__ == '__main__':
    sys.exit(main())
