"""A ``torch.autocast`` region in forward is a higher-order op (wrap_with_autocast) whose graph
is a submodule of the captured program: the analysis pins the channels it touches (no channel
rule looks inside yet), and the builder carries the region over (before: KeyError submod_N
even with nothing removed)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import otonas
from otonas.testing import zero_groups_


class WithAutocast(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 6, 3, padding=1)
        self.c = nn.Conv2d(6, 6, 3, padding=1)
        self.d = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.b(torch.relu(self.a(x)))  # a's outputs: prunable, outside the region
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = torch.relu(self.c(h))
        return self.d(h.float())


def test_autocast_region_is_pinned_and_built():
    torch.manual_seed(0)
    model = WithAutocast().eval()
    x = torch.randn(2, 3, 8, 8)
    space = otonas.analyze(model, (x,))
    fam = {f.layers: f for f in space.families}
    assert len(fam[("a",)].groups) == 8
    pinned = [f for f in space.families if not f.groups and any("wrap_with_autocast" in p.reason for p in f.pins)]
    assert pinned, [(f.layers, [p.reason for p in f.pins]) for f in space.families]
    mask = np.zeros(space.num_prunable_groups, dtype=bool)
    mask[:3] = True
    mask = space.removable(mask)
    zero_groups_(space, mask)
    subnet = otonas.build(space)
    assert dict(subnet.named_parameters())["a.weight"].shape[0] == 8 - int(mask.sum())
    y = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        # the same ops in the same order (bfloat16 inside the region): bit for bit
        torch.testing.assert_close(subnet(y), model(y), rtol=0, atol=0)


def test_autocast_region_export_refuses_clearly(tmp_path):
    from otonas.export import ExportError

    model = WithAutocast().eval()
    x = torch.randn(2, 3, 8, 8)
    subnet = otonas.build(otonas.analyze(model, (x,)))
    try:
        otonas.export(subnet, tmp_path, example_inputs=(x,))
    except ExportError as e:
        assert "autocast" in str(e) and "wrap_with_autocast" in str(e)
    else:
        raise AssertionError("model.py cannot hold an autocast region yet; export must say so")
