"""Per-channel PReLU (the worked example of docs/api.md "Extending"): its (C,) weight belongs
to dim 1 of its input, not to the last dim that right-aligned broadcasting would pick."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import otonas
from otonas import ops
from otonas.testing import zero_groups_


class ConvPReLU(nn.Module):
    """Conv2d(3, 8) -> PReLU(8) -> Conv2d(8, 4): at 8x8 the last dim has the channels' size."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.PReLU(8)
        self.c2 = nn.Conv2d(8, 4, 3, padding=1)
        with torch.no_grad():
            self.act.weight.copy_(torch.linspace(-0.5, 0.5, 8))  # distinct slopes: a wrong slice shows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(self.act(self.c1(x)))


class LinearPReLU(nn.Module):
    """Linear(5, 8) -> PReLU(8) -> Linear(8, 3): the channel dim is also the last dim."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(5, 8)
        self.act = nn.PReLU(8)
        self.l2 = nn.Linear(8, 3)
        with torch.no_grad():
            self.act.weight.copy_(torch.linspace(-0.5, 0.5, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(self.act(self.l1(x)))


class SharedPReLU(nn.Module):
    """PReLU() with one slope for every channel: nothing of it to slice."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.PReLU()
        self.c2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(self.act(self.c1(x)))


CASES = [("conv", ConvPReLU, (2, 3, 8, 8), "c1"), ("linear", LinearPReLU, (2, 5), "l1"),
         ("shared", SharedPReLU, (2, 3, 8, 8), "c1")]


def _zeroed(factory, shape, seed=1):
    torch.manual_seed(0)
    model = factory().eval()
    space = otonas.analyze(model, (torch.randn(shape),))
    rng = np.random.default_rng(seed)
    n = space.num_prunable_groups
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, size=int(round(0.3 * n)), replace=False)] = True
    mask = space.removable(mask)
    zero_groups_(space, mask)
    return model, space, mask


def test_prelu_has_its_own_rule():
    rule = ops.lookup(torch.ops.aten.prelu.default)
    assert type(rule).__name__ == "PRelu"
    assert rule.implements("flow") and rule.zero_preserving


@pytest.mark.parametrize("name,factory,shape,first", CASES, ids=[c[0] for c in CASES])
def test_prelu_weight_follows_the_channels(name, factory, shape, first):
    model, space, mask = _zeroed(factory, shape)
    layout = space.group_layout()
    (dim, conv_ids), = [(d, ids) for d, ids in layout[f"{first}.weight"] if d == 0]
    if factory is SharedPReLU:
        assert "act.weight" not in layout  # one slope, shared: not part of any group
    else:
        (wdim, prelu_ids), = layout["act.weight"]
        assert wdim == 0 and torch.equal(prelu_ids, conv_ids)  # slope c goes with channel c
    subnet = otonas.build(space)
    kept = int(dict(subnet.named_parameters())[f"{first}.weight"].shape[0])
    assert kept == 8 - int(mask.sum())
    assert dict(subnet.named_parameters())["act.weight"].numel() == (1 if factory is SharedPReLU else kept)
    for batch in (1, 3):
        x = torch.randn((batch, *shape[1:]), generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            ref, out = model(x), subnet(x)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5 * max(1.0, ref.abs().max().item()))


def test_prelu_exports_as_a_smaller_layer(tmp_path):
    model, space, mask = _zeroed(ConvPReLU, (2, 3, 8, 8))
    subnet = otonas.build(space)
    x = torch.randn(3, 3, 8, 8)
    otonas.export(subnet, tmp_path, example_inputs=(x,))
    kept = 8 - int(mask.sum())
    assert f"nn.PReLU({kept})" in (tmp_path / "model.py").read_text()
    loaded = otonas.load(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-4, atol=1e-5)
