"""Attention with relative-position logits (BoTNet-style): the heads are folded into the batch
(``[B*heads, H*W, d]``), the logits go through the pad-and-reshape that turns relative into
absolute positions and are reshaped to ``[B*heads, H, 1, W, W]``. Removing heads (or head
channels) is exact; before, the slice that ends that shift (``x[:, :W, W-1:]``, full along the
folded batch) was rewritten to a static end and the reshape after it failed at any other batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import otonas
from otonas.testing import zero_groups_
from tiny_models import RelPosAttention


class Net(nn.Module):
    def __init__(self, heads: int, h: int = 4, w: int = 4, c: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.att = RelPosAttention(c, heads, h, w)
        self.head = nn.Linear(c, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.stem(x))
        return self.head((y + self.att(y)).mean((2, 3)))


@pytest.mark.parametrize("heads,h,w", [(4, 4, 4), (2, 2, 4), (8, 4, 4)])
def test_removing_heads_is_exact(heads, h, w):
    torch.manual_seed(0)
    model = Net(heads, h, w).eval()
    space = otonas.analyze(model, (torch.randn(2, 3, h, w),))
    assert space.capture.dynamic_batch
    qkv = next(f for f in space.families if f.layers == ("att.qkv",))
    assert qkv.prunable  # heads (or, with 2 heads, the channels of each head)
    for keep in (len(qkv.groups) - 1, 1):
        model2 = Net(heads, h, w).eval()
        model2.load_state_dict(model.state_dict())
        s = otonas.analyze(model2, (torch.randn(2, 3, h, w),))
        mask = np.zeros(s.num_prunable_groups, dtype=bool)
        mask[list(next(f for f in s.families if f.layers == ("att.qkv",)).groups[keep:])] = True
        zero_groups_(s, s.removable(mask))
        subnet = otonas.build(s)
        assert sum(p.numel() for p in subnet.parameters()) < sum(p.numel() for p in model2.parameters())
        for batch in (1, 3):
            x = torch.randn(batch, 3, h, w)
            with torch.no_grad():
                torch.testing.assert_close(subnet(x), model2(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fraction", [0.3, 0.8])
def test_verify_relpos_attention(fraction):
    torch.manual_seed(0)
    report = otonas.verify(Net(4), input_shapes=[(2, 3, 4, 4)], fraction=fraction)
    assert report.passed, report.message
