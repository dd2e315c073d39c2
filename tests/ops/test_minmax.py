"""Elementwise ``torch.max(a, b)`` / ``torch.min(a, b)``: the ``.other`` overloads of the
``aten.max`` / ``aten.min`` packets, whose reduction rule used to catch them (AnalysisError)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import otonas
from otonas import ops
from otonas.testing import zero_groups_


class MinMax(nn.Module):
    """Two convs joined elementwise by ``fn``, then a conv that reads the joined channels."""

    def __init__(self, fn) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.fn = fn
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.fn(self.a(x), self.b(x)))


FNS = {"max": torch.max, "min": torch.min, "maximum": torch.maximum, "minimum": torch.minimum}


@pytest.mark.parametrize("name", list(FNS))
def test_elementwise_min_max_build_and_export(name, tmp_path):
    torch.manual_seed(0)
    model = MinMax(FNS[name]).eval()
    x = torch.randn(2, 3, 8, 8)
    space = otonas.analyze(model, (x,))
    assert space.num_prunable_groups == 8  # a's and b's outputs are tied channel by channel
    layout = space.group_layout()
    assert torch.equal(layout["a.weight"][0][1], layout["b.weight"][0][1])
    rng = np.random.default_rng(0)
    mask = np.zeros(8, dtype=bool)
    mask[rng.choice(8, size=3, replace=False)] = True
    mask = space.removable(mask)
    zero_groups_(space, mask)
    subnet = otonas.build(space)
    assert dict(subnet.named_parameters())["c.weight"].shape[1] == 8 - int(mask.sum())
    y = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(subnet(y), model(y), rtol=1e-4, atol=1e-5)
    otonas.export(subnet, tmp_path, example_inputs=(y,))
    loaded = otonas.load(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(y), model(y), rtol=1e-4, atol=1e-5)


def test_the_reductions_keep_their_rule():
    assert type(ops.lookup(torch.ops.aten.max.other)).__name__ == "ElementwiseMinMax"
    assert type(ops.lookup(torch.ops.aten.max.dim)).__name__ == "Var"
    assert type(ops.lookup(torch.ops.aten.min.default)).__name__ == "Var"
