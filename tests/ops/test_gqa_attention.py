"""``scaled_dot_product_attention(..., enable_gqa=True)``: q ``[B, H, S, D]`` with k and v
``[B, KV, S, D]``, query head h reading key/value head h // (H / KV). With ``gqa="kv"`` a key/value
head goes with its query heads, with ``gqa="query"`` query head j of every group is one unit and
the key/value heads stay; either way the built network equals the zeroed model. Before, every
head of such an attention was pinned."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import otonas
from otonas.testing import zero_groups_


class GroupedAttention(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 8, kv_heads: int = 2, head_dim: int = 4) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.inp = nn.Linear(dim, dim)
        self.q = nn.Linear(dim, heads * head_dim)
        self.k = nn.Linear(dim, kv_heads * head_dim)
        self.v = nn.Linear(dim, kv_heads * head_dim)
        self.o = nn.Linear(heads * head_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        x = self.inp(x)
        q, k, v = (p(x).view(b, s, -1, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return x + self.o(y.transpose(1, 2).reshape(b, s, -1))


def _family(space, layer):
    return next(f for f in space.families if layer in f.layers)


@pytest.mark.parametrize("gqa,kv_heads,groups,q_rows", [("kv", 2, 2, 16), ("query", 2, 4, 24),
                                                        ("kv", 1, 8, 28), ("query", 1, 8, 28)])
def test_enable_gqa_heads_are_removed_exactly(gqa, kv_heads, groups, q_rows):
    torch.manual_seed(0)
    model = GroupedAttention(kv_heads=kv_heads).eval()
    space = otonas.analyze(model, (torch.randn(2, 6, 32),), gqa=gqa)
    assert space.gqa == gqa
    heads = _family(space, "q")
    assert len(heads.groups) == groups, space.summary()
    if gqa == "query" and kv_heads > 1:
        kv = _family(space, "k")
        assert not kv.prunable and any("gqa='query'" in p.reason for p in kv.pins), space.summary()
    else:
        assert ("k" in heads.layers) == (kv_heads > 1)
    mask = np.zeros(space.num_prunable_groups, dtype=bool)
    mask[heads.groups[1]] = True  # KV head 1 and its query heads; or query head 1 of every group
    zero_groups_(space, mask)
    subnet = otonas.build(space)
    params = dict(subnet.named_parameters())
    k_rows = 4 if gqa == "kv" and kv_heads > 1 else 4 * kv_heads
    assert params["q.weight"].shape[0] == q_rows and params["k.weight"].shape[0] == k_rows
    for batch in (2, 3):
        x = torch.randn(batch, 6, 32)
        with torch.no_grad():
            torch.testing.assert_close(subnet(x), model(x), rtol=1e-4, atol=1e-5)


def test_an_unknown_gqa_setting_is_refused():
    with pytest.raises(otonas.UsageError, match="gqa='heads'"):
        otonas.analyze(GroupedAttention(), (torch.randn(2, 6, 32),), gqa="heads")  # type: ignore[arg-type]
