"""In-place overloads take their functional op's rule by construction (issue: an in-place
activation without a rule of its own pinned every channel it touched)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import otonas
from otonas import ops
from otonas.testing import zero_groups_

_FLAGS = ("zero_preserving", "structural", "keeps_zero_tensor", "join", "zero_if", "identity_if_same_shape")


def _in_place_overloads():
    for name in dir(torch.ops.aten):
        if not name.endswith("_") or name.endswith("__"):
            continue
        packet = getattr(torch.ops.aten, name, None)
        for overload in getattr(packet, "overloads", lambda: [])():
            target = getattr(packet, overload)
            base = ops.functional_of(target)
            if base is not None:
                yield target, base


def test_every_in_place_overload_takes_its_functional_rule():
    checked = 0
    for target, base in _in_place_overloads():
        own = ops.op_key(target)
        if own.full in dict(ops.registered()) or own.packet in dict(ops.registered()):
            continue  # a rule of its own (fill_, copy_, bernoulli_) wins
        functional = ops.lookup(base)
        rule = ops.lookup(target)
        if functional is None:
            assert rule is None, target
            continue
        checked += 1
        assert isinstance(rule, type(functional)), target
        for flag in _FLAGS:
            assert getattr(rule, flag) == getattr(functional, flag), (target, flag)
        for facet in ("flow", "rewrite", "flops", "zero_by_params"):
            assert rule.implements(facet) == functional.implements(facet), (target, facet)
        # model.py must keep the in-place call: the functional form would not write to x
        assert not rule.implements("code") and not rule.implements("layer"), target
    assert checked > 20  # relu_, hardswish_, add_, mul_, clamp_, squeeze_, ...
    assert type(ops.lookup(torch.ops.aten.hardswish_.default)).__name__ == "ZeroActivationInPlace"


class HardswishNet(nn.Module):
    """conv -> bn -> hardswish_ -> conv: the in-place activation must not pin c1's channels."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.Hardswish(inplace=True)
        self.c2 = nn.Conv2d(8, 4, 3, padding=1)
        with torch.no_grad():
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(self.act(self.bn(self.c1(x))))


def test_in_place_activation_keeps_channels_prunable(tmp_path):
    model = HardswishNet().eval()
    space = otonas.analyze(model, (torch.randn(2, 3, 8, 8),))
    assert any(str(n.target) == "aten.hardswish_.default" for n in space.capture.graph.nodes)
    fam = next(f for f in space.families if "c1" in f.layers)
    assert len(fam.groups) == 8, space.summary()  # all 8 channels prunable, none pinned by hardswish_
    rng = np.random.default_rng(1)
    mask = np.zeros(space.num_prunable_groups, dtype=bool)
    mask[rng.choice(space.num_prunable_groups, size=3, replace=False)] = True
    mask = space.removable(mask)
    zero_groups_(space, mask)
    subnet = otonas.build(space)
    assert dict(subnet.named_parameters())["c1.weight"].shape[0] == 8 - int(mask[list(fam.groups)].sum())
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        ref = model(x.clone())
        torch.testing.assert_close(subnet(x.clone()), ref, rtol=1e-4, atol=1e-5)
    otonas.export(subnet, tmp_path, example_inputs=(x.clone(),))
    with torch.no_grad():
        torch.testing.assert_close(otonas.load(tmp_path)(x.clone()), ref, rtol=1e-4, atol=1e-5)
