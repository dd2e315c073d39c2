"""pixel_shuffle / pixel_unshuffle: channels removed by blocks of r² (before: pinned)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import otonas
from otonas.testing import zero_groups_


class Up(nn.Module):
    """Conv(3, 4·r²) -> pixel_shuffle(r) -> Conv(4, 3): the super-resolution tail."""

    def __init__(self, r: int = 2) -> None:
        super().__init__()
        self.r = r
        self.a = nn.Conv2d(3, 4 * r * r, 3, padding=1)
        self.b = nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(F.relu(F.pixel_shuffle(self.a(x), self.r)))


class Down(nn.Module):
    """Conv(3, 5) -> pixel_unshuffle(2) -> Conv(20, 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 5, 3, padding=1)
        self.b = nn.Conv2d(20, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(F.pixel_unshuffle(F.relu(self.a(x)), 2))


@pytest.mark.parametrize("factory,groups,per", [(Up, 4, 4), (Down, 5, 4)], ids=["shuffle", "unshuffle"])
def test_pixel_shuffle_prunes_by_blocks(factory, groups, per, tmp_path):
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(2, 3, 8, 8)
    space = otonas.analyze(model, (x,))
    assert space.num_prunable_groups == groups  # one group per block of r² sub-pixel channels
    mask = np.zeros(groups, dtype=bool)
    mask[[0, 2]] = True
    mask = space.removable(mask)
    zero_groups_(space, mask)
    subnet = otonas.build(space)
    params = dict(subnet.named_parameters())
    kept = groups - int(mask.sum())
    if factory is Up:
        assert params["a.weight"].shape[0] == kept * per and params["b.weight"].shape[1] == kept
    else:
        assert params["a.weight"].shape[0] == kept and params["b.weight"].shape[1] == kept * per
    y = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(subnet(y), model(y), rtol=1e-4, atol=1e-5)
    otonas.export(subnet, tmp_path, example_inputs=(y,))
    with torch.no_grad():
        torch.testing.assert_close(otonas.load(tmp_path)(y), model(y), rtol=1e-4, atol=1e-5)
