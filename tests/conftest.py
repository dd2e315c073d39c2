import os
import sys

import pytest
import torch

# tiny test models run fastest on one thread; two threads on two shared cores thrash
torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
