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

from hypothesis import settings  # noqa: E402

# CI runs a quick sample; HYPOTHESIS_PROFILE=thorough runs hundreds of random networks.
settings.register_profile("ci", max_examples=25)
settings.register_profile("thorough", max_examples=300)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
