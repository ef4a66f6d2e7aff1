"""Building blocks shared by densezoo's model families."""
from densezoo.layers.connections import *  # noqa: F401,F403
from densezoo.layers.fast_path import set_fast_path, use_fast_path  # noqa: F401  (the module keeps its name)
