"""The rewrite check (analysis/_rewrites.py): a family whose removal some op cannot take is
pinned at analysis, with the op named, instead of breaking the built network at run time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import otonas
from otonas.analysis import SearchSpace
from otonas.analysis._flow import run_flow
from otonas.capture import capture
from otonas.testing import zero_groups_


class ArangeScale(nn.Module):
    """Channels scaled by ``torch.arange(C)``: a tensor made at full size, whose values depend on
    the position, that no rewrite can shrink (its slice is not ``arange(C')``)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        y = y * torch.arange(y.shape[1], dtype=y.dtype, device=y.device).view(1, -1, 1, 1)
        return self.c(F.relu(self.b(F.relu(y))))


class LinspaceShift(ArangeScale):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x) + torch.linspace(0, 1, 8).view(1, 8, 1, 1)
        return self.c(F.relu(self.b(F.relu(y))))


class EyeMix(nn.Module):
    """Features multiplied by a constant ``torch.eye(8)`` made in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x) @ (2.0 * torch.eye(8))
        return self.c(F.relu(self.b(F.relu(y))))


CASES = [(ArangeScale, (2, 3, 4, 4), "arange", "a"), (LinspaceShift, (2, 3, 4, 4), "linspace", "a"),
         (EyeMix, (2, 6), "eye", "a")]


def _space(model: nn.Module, shape: tuple[int, ...], *, check: bool) -> SearchSpace:
    cap = capture(model, (torch.randn(shape),))
    return SearchSpace(model, cap, run_flow(cap.program), check_rewrites=check)


@pytest.mark.parametrize("cls,shape,op,layer", CASES, ids=[c[2] for c in CASES])
def test_unchecked_family_breaks_the_built_network(cls, shape, op, layer):
    """Without the check the factory's family is called prunable and the subnet fails when run:
    the failure the check exists to move to analysis time."""
    torch.manual_seed(0)
    model = cls().eval()
    space = _space(model, shape, check=False)
    fam = next(f for f in space.families if layer in f.layers)
    assert fam.prunable
    mask = np.zeros(space.num_prunable_groups, dtype=bool)
    mask[fam.groups[0]] = True
    zero_groups_(space, space.removable(mask))
    with pytest.raises(RuntimeError):
        otonas.build(space)(torch.randn(3, *shape[1:]))


@pytest.mark.parametrize("cls,shape,op,layer", CASES, ids=[c[2] for c in CASES])
def test_check_pins_the_family_with_the_op_named(cls, shape, op, layer):
    torch.manual_seed(0)
    model = cls().eval()
    space = otonas.analyze(model, (torch.randn(shape),))
    fam = next(f for f in space.families if layer in f.layers)
    assert not fam.prunable
    pin = next(p for p in fam.pins if "cannot rewrite" in p.reason)
    assert op in pin.op and op in pin.node and "expected" in pin.reason
    assert any(p is pin for p in space.pins)  # reported like every other pin
    assert "cannot rewrite" in space.summary()
    # the other families stay prunable, and the subnet is exact
    report = otonas.verify(model, input_shapes=[shape], fraction=0.5)
    assert report.passed, report.message
    assert any("cannot rewrite" in p["reason"] and op in p["node"] for p in report.pinned)
    # the largest pin beside the model's inputs and outputs: this one, holding the family's channels
    assert "cannot rewrite" in report.largest_pin["reason"] and report.largest_pin["groups"] == fam.num_channels


def test_check_pins_nothing_where_every_rewrite_holds():
    from tiny_models import Concat, ConvChain, Residual

    for cls in (ConvChain, Residual, Concat):
        model = cls().eval()
        x = torch.randn(2, 3, 8, 8)
        unchecked = _space(model, x.shape, check=False)
        checked = otonas.analyze(model, (x,))
        assert checked.num_prunable_groups == unchecked.num_prunable_groups
        assert not any("cannot rewrite" in p.reason for p in checked.pins)
