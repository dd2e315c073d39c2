"""DHSPG with one target per stage: exactly round(n_s * t_s) zero groups in every stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import otonas
import search_spaces
from otonas import OtonasError
from otonas.analysis import group_stages
from otonas.optim import DHSPG


def _space():
    torch.manual_seed(0)
    m = search_spaces.create("resnet20", size="tiny", in_chans=1, num_classes=10)
    return otonas.analyze(m, (torch.randn(2, 1, 8, 8),))


def test_per_stage_targets_are_exact():
    space = _space()
    stages = group_stages(space)
    targets = {"stem": 0.25, "stages.0": 0.0, "stages.1": 0.5, "*": 0.75}
    opt = DHSPG(space, schedule="half_space", lr=0.05, target_group_sparsity=targets, warmup_steps=3, end_step=8, lmbda=1.0)
    model = space.model
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    for _ in range(10):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    zero = space.zero_groups()
    want = {"stem": 1, "stages.0": 0, "stages.1": 16, "stages.2": 48}
    assert {name: int(zero[members].sum()) for name, members in stages.items()} == want
    assert int(zero.sum()) == opt.target_zero_groups == sum(want.values())
    # the subnet built from it matches the trained model
    model.eval()
    sub = otonas.build(space)
    xs = torch.randn(5, 1, 8, 8)
    assert torch.allclose(sub(xs), model(xs), atol=1e-5)


def test_bad_stage_targets_name_the_culprit():
    space = _space()
    with pytest.raises(OtonasError, match="layer9.*stem"):
        DHSPG(space, schedule="half_space", lr=0.1, target_group_sparsity={"layer9": 0.5}, warmup_steps=1)
    with pytest.raises(OtonasError, match="stem.*at most 0.750"):
        DHSPG(space, schedule="half_space", lr=0.1, target_group_sparsity={"stem": 1.0}, warmup_steps=1)
    with pytest.raises(OtonasError, match=r"\[0, 1\]"):
        DHSPG(space, schedule="half_space", lr=0.1, target_group_sparsity={"stem": -0.1}, warmup_steps=1)
    assert np.isclose(DHSPG(space, schedule="half_space", lr=0.1, target_group_sparsity={"*": 0.5}, warmup_steps=1).target_zero_groups, 56)
