"""Test-session settings."""
import os

import torch

if os.environ.get('PYTEST_XDIST_WORKER'):
    # one intra-op thread per worker process: the workers already use every core
    torch.set_num_threads(1)
