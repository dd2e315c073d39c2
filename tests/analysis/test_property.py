"""Property test: random networks from the building blocks never crash the analysis,
and build + compare always matches, whatever random channels are zeroed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import otonas
from otonas.testing import zero_groups_
from tiny_models import RelPosAttention

BLOCKS = ["conv", "grouped", "depthwise", "residual", "concat", "split_cat", "se", "attention", "bn_act",
          "reshape_mlp", "sub_mul", "prelu", "inplace_act", "minmax", "ws_conv", "pixel", "autocast", "relpos"]


# blocks that pin the channels they read: an autocast region (no rule looks inside), a
# standardised weight (statistics over its input channels)
PIN_INPUTS = {"autocast", "ws_conv"}


class WSConv(nn.Conv2d):
    """A weight standardised with batch_norm over (1, out, -1), as timm's ScaledStdConv2d."""

    def forward(self, x):
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True, momentum=0.0,
                         eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class Block(nn.Module):
    def __init__(self, kind: str, c: int, draw_c: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "conv":
            self.a = nn.Conv2d(c, draw_c, 3, padding=1)
            self.out = draw_c
        elif kind == "grouped":
            g = 2 if c % 2 == 0 and draw_c % 2 == 0 else 1
            self.a = nn.Conv2d(c, draw_c, 3, padding=1, groups=g)
            self.out = draw_c
        elif kind == "depthwise":
            self.a = nn.Conv2d(c, 2 * c, 3, padding=1, groups=c)
            self.out = 2 * c
        elif kind == "residual":
            self.a, self.b = nn.Conv2d(c, draw_c, 1), nn.Conv2d(draw_c, c, 3, padding=1)
            self.bn = nn.BatchNorm2d(c)
            self.out = c
        elif kind == "concat":
            self.a, self.b = nn.Conv2d(c, draw_c, 1), nn.Conv2d(c, 3, 3, padding=1)
            self.out = draw_c + 3 + c
        elif kind == "split_cat":
            self.k = max(1, c // 3)
            self.a = nn.Conv2d(c - self.k, c - self.k, 1)
            self.out = c
        elif kind == "se":
            self.a, self.b = nn.Conv2d(c, draw_c, 1), nn.Conv2d(draw_c, c, 1)
            self.out = c
        elif kind == "attention":
            heads = 2 if c % 2 == 0 else 1
            self.mha = nn.MultiheadAttention(c, heads, batch_first=True)
            self.out = c
        elif kind == "bn_act":
            self.bn = nn.BatchNorm2d(c)
            self.out = c
        elif kind == "reshape_mlp":
            self.a, self.b = nn.Linear(c, draw_c), nn.Linear(draw_c, c)
            self.out = c
        elif kind == "sub_mul":
            self.a, self.b = nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1)
            self.out = c
        elif kind == "prelu":
            self.a, self.act = nn.Conv2d(c, draw_c, 3, padding=1), nn.PReLU(draw_c)
            with torch.no_grad():
                self.act.weight.copy_(torch.linspace(-0.5, 0.5, draw_c))
            self.out = draw_c
        elif kind == "inplace_act":
            self.a, self.act = nn.Conv2d(c, draw_c, 1), nn.Hardswish(inplace=True)
            self.out = draw_c
        elif kind == "minmax":
            self.a, self.b = nn.Conv2d(c, draw_c, 1), nn.Conv2d(c, draw_c, 3, padding=1)
            self.out = draw_c
        elif kind == "ws_conv":
            self.a = WSConv(c, draw_c, 3, padding=1)
            self.out = draw_c
        elif kind == "pixel":
            self.a = nn.Conv2d(c, 4 * draw_c, 1)
            self.b = nn.Conv2d(draw_c, draw_c, 3, padding=1)
            self.out = 4 * draw_c
        elif kind == "autocast":
            self.a = nn.Conv2d(c, draw_c, 1)
            self.out = draw_c
        elif kind == "relpos":  # heads folded into the batch, relative-position logits (the input is 4x4)
            heads = 4 if c % 4 == 0 else 2 if c % 2 == 0 else 1
            self.att = RelPosAttention(c, heads, 4, 4)
            self.out = c

    def forward(self, x):
        k = self.kind
        if k in ("conv", "grouped", "depthwise"):
            return F.relu(self.a(x))
        if k == "residual":
            return self.bn(x + self.b(F.relu(self.a(x))))
        if k == "concat":
            return torch.cat([F.relu(self.a(x)), self.b(x), x], dim=1)
        if k == "split_cat":
            head, tail = x.split([self.k, x.shape[1] - self.k], dim=1)
            return torch.cat([self.a(tail), head], dim=1)
        if k == "se":
            return x * torch.sigmoid(self.b(F.relu(self.a(x.mean((2, 3), keepdim=True)))))
        if k == "attention":
            b, c, h, w = x.shape
            t = x.flatten(2).transpose(1, 2)
            t = t + self.mha(t, t, t, need_weights=False)[0]
            return t.transpose(1, 2).reshape(b, c, h, w)
        if k == "bn_act":
            return F.gelu(self.bn(x))
        if k == "reshape_mlp":
            y = x.permute(0, 2, 3, 1)
            y = y + self.b(F.silu(self.a(y)))
            return y.permute(0, 3, 1, 2)
        if k == "prelu":
            return self.act(self.a(x))
        if k == "inplace_act":
            return self.act(self.a(x))
        if k == "minmax":
            return torch.max(self.a(x), self.b(x)) - torch.min(self.a(x), self.b(x)) * 0.5
        if k == "ws_conv":
            return F.relu(self.a(x))
        if k == "pixel":
            return F.pixel_unshuffle(F.relu(self.b(F.pixel_shuffle(self.a(x), 2))), 2)
        if k == "relpos":
            return x + self.att(x)
        if k == "autocast":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = self.a(x)
            return F.relu(y.float())
        return (self.a(x) - x) * self.b(x)


class RandomNet(nn.Module):
    def __init__(self, kinds: list[str], widths: list[int]) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, widths[0], 3, padding=1)
        blocks, c = [], widths[0]
        for kind, w in zip(kinds, widths[1:]):
            blk = Block(kind, c, w)
            blocks.append(blk)
            c = blk.out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c, 3)

    def forward(self, x):
        return self.head(self.blocks(F.relu(self.stem(x))).mean((2, 3)))


@st.composite
def nets(draw):
    n = draw(st.integers(1, 5))
    kinds = draw(st.lists(st.sampled_from(BLOCKS), min_size=n, max_size=n))
    widths = draw(st.lists(st.integers(2, 9).map(lambda v: 2 * v), min_size=n + 1, max_size=n + 1))
    return kinds, widths


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=nets(), fraction=st.floats(0.1, 0.9), seed=st.integers(0, 2**16))
def test_random_networks_build_exactly(spec, fraction, seed):
    torch.manual_seed(seed)
    model = RandomNet(*spec).eval()
    x = torch.randn(2, 3, 4, 4)
    space = otonas.analyze(model, (x,))
    if not PIN_INPUTS & set(spec[0]):
        assert space.num_prunable_groups > 0  # the stem's channels are removable unless a block pins them
    rng = np.random.default_rng(seed)
    mask = rng.random(space.num_prunable_groups) < fraction
    mask = space.removable(mask)
    zero_groups_(space, mask)
    subnet = otonas.build(space)
    xt = torch.randn(3, 3, 4, 4)
    with torch.no_grad():
        ref, out = model(xt), subnet(xt)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5 * max(1.0, ref.abs().max().item()))
    assert space.costs(mask).params == sum(p.numel() for p in subnet.parameters())


@pytest.mark.slow
@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(spec=nets(), fraction=st.floats(0.1, 0.9), seed=st.integers(0, 2**16))
def test_random_networks_build_exactly_300(spec, fraction, seed):
    """The same property over 300 networks (pytest -m slow)."""
    test_random_networks_build_exactly.hypothesis.inner_test(spec, fraction, seed)
