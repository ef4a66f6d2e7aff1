"""Building blocks shared by densezoo's model families."""
from densezoo.layers.connections import *  # noqa: F401,F403
