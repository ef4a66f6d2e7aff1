#!/usr/bin/env python
"""``densezoo-model-table`` run from a clone (also ``python -m densezoo.cli.model_table``)."""
import sys

from densezoo.cli.model_table import main

if __name__ == '__main__':
    sys.exit(main())
