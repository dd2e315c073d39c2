"""Convolutions whose weight is computed from parameters (weight standardisation): statistics
over the weight's input dims must pin the input channels (removing one changes them), and the
output channels stay prunable and build exactly. Before: the ScaledStdConv-style form (batch_norm
over the weight reshaped to (1, out, -1)) was called prunable and the built subnet crashed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import otonas
from otonas.testing import zero_groups_


class ScaledStdConv(nn.Conv2d):
    """timm's ScaledStdConv2d form: batch_norm over the weight flattened per output channel."""

    def __init__(self, *a, **k) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*a, **k)
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, self.out_channels).view(-1, 1, 1, 1))
        self.scale = self.weight[0].numel() ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                         weight=(self.gain * self.scale).view(-1), training=True, momentum=0.0,
                         eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class MeanVarConv(nn.Conv2d):
    """Weight standardisation written with mean and var over dims (1, 2, 3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        m = w.mean(dim=(1, 2, 3), keepdim=True)
        v = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        return F.conv2d(x, (w - m) / torch.sqrt(v + 1e-5), self.bias, self.stride, self.padding)


class Net(nn.Module):
    def __init__(self, conv: type[nn.Conv2d]) -> None:
        super().__init__()
        self.a = conv(3, 8, 3, padding=1)
        self.b = conv(8, 6, 3, padding=1)
        self.c = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


@pytest.mark.parametrize("conv", [ScaledStdConv, MeanVarConv], ids=["batch_norm", "mean_var"])
def test_standardized_weights_pin_inputs_and_build_exactly(conv):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    ref_state = Net(conv).state_dict()
    space = otonas.analyze(Net(conv).eval(), (x,))
    fam = {f.layers: f for f in space.families}
    assert not fam[("a",)].groups and fam[("a",)].pins  # a's channels are read by b's statistics
    assert len(fam[("b",)].groups) == 6  # b's outputs are normalised each on its own: prunable
    for seed in range(3):
        model = Net(conv).eval()
        model.load_state_dict(ref_state)
        space = otonas.analyze(model, (x,))
        rng = np.random.default_rng(seed)
        mask = space.removable(rng.random(space.num_prunable_groups) < 0.5)
        zero_groups_(space, mask)
        subnet = otonas.build(space)
        y = torch.randn(3, 3, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(subnet(y), model(y), rtol=1e-4, atol=1e-5)
