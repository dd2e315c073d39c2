"""The index structures the optimizers restrict their plans with, against the simple computation
(a plan rebuilt entry by entry, ``slice_index`` of the result, the per-entry loops they replace)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from h2spg_helpers import Supernet
from optim_helpers import StubSpace, tiny_space

import otonas
from otonas.optim import DHSPG, H2SPG
from otonas.optim._dhspg import _INDEXED_MIN
from otonas.optim._layout import GroupLayout, ParamPlan, SliceTable, slice_index


def ref_touching(plans: tuple[ParamPlan, ...], groups: torch.Tensor) -> list[ParamPlan]:
    """Each plan restricted to the entries with a slice in ``groups``, entry by entry."""
    out = []
    for q in plans:
        r = q.restricted([bool(groups[e.index].any()) for e in q.entries])
        if r is not None:
            out.append(r)
    return out


def same_plans(a: tuple[ParamPlan, ...] | list[ParamPlan], b: tuple[ParamPlan, ...] | list[ParamPlan]) -> bool:
    return len(a) == len(b) and all(
        p.position == q.position and p.name == q.name and len(p.entries) == len(q.entries)
        and all(e is f for e, f in zip(p.entries, q.entries)) for p, q in zip(a, b))


def layouts() -> list[GroupLayout]:
    stub = tiny_space()
    net = Supernet([("sum", 3), ("nested", 2), ("deep", 2), ("cat", 2)])
    space = otonas.analyze(net, (torch.randn(1, 3, 6, 6),))
    two_level = H2SPG(space, lr=0.1, erase_budget=0.5, warmup_steps=1)._layout  # entries on one dim repeated
    out = [GroupLayout(stub, [p for p in stub.model.parameters()]), two_level]
    # no group at all in some entries (-1 everywhere), and a plan with more than 64 entries
    model = torch.nn.Linear(3, 70)
    wide = StubSpace(model, {"weight": [(0, torch.arange(70) % 5)] * 70 + [(1, torch.tensor([5, -1, 6]))],
                             "bias": [(0, torch.full((70,), -1))]}, 7)
    out.append(GroupLayout(wide, list(model.parameters())))
    return out


@pytest.mark.parametrize("which", range(3))
def test_restrict_matches_the_entry_by_entry_restriction(which: int) -> None:
    layout = layouts()[which]
    table = SliceTable(layout.plans, layout.slice_index)
    assert table.num_entries == sum(len(q.entries) for q in layout.plans)
    assert torch.equal(table.index, slice_index(layout.plans))
    gen = torch.Generator().manual_seed(which)
    n = layout.num_groups
    for trial in range(30):
        groups = torch.rand(n + 1, generator=gen) < [0.0, 0.05, 0.3, 1.0][trial % 4]
        groups[n] = trial % 5 == 0  # the bin of no group: touched only when asked
        keep = table.touched(groups)
        ref = ref_touching(layout.plans, groups)
        got = table.restrict(keep)
        assert same_plans(got, ref)
        index = table.index[table.slice_mask(keep)]
        want = slice_index(ref) if ref else torch.zeros(0, dtype=torch.int64)
        assert torch.equal(index, want)
        assert torch.equal(table.kept_index(keep), want)  # the numpy path on the CPU
        again = table.restrict(keep)  # the cached plans: the same objects
        assert all(p is q for p, q in zip(got, again))
        for q in got:  # a plan that keeps every entry is itself
            full = next(p for p in layout.plans if p.position == q.position)
            assert (q is full) == (len(q.entries) == len(full.entries))


def test_period_start_lists_match_the_per_entry_loop() -> None:
    """The shrink lists a period start builds (ranks, targets, memberships) and its rows scaled by
    index: those of the loop over the touched entries they replace."""
    net = Supernet([("sum", 3), ("nested", 2), ("cat", 2)])
    space = otonas.analyze(net, (torch.randn(1, 3, 6, 6),))
    opt = H2SPG(space, lr=0.1, erase_budget=0.5, warmup_steps=1, end_step=7, periods=3)
    params = opt.param_groups[0]["params"]
    gen = torch.Generator().manual_seed(3)
    for trial in range(6):
        new = torch.nonzero(torch.rand(opt.num_groups, generator=gen) < 0.3).flatten().tolist()
        opt._begin_period(new)
        assert opt._shrinking is not None
        shrinking = opt._shrinking
        ref = ref_touching(opt._active, shrinking)
        assert same_plans(opt._shrink_plans, ref)
        lists: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
        for q in ref:
            x, rank = params[q.position], 0
            for e in q.entries:
                if x.numel() >= _INDEXED_MIN and e.pre == 1:
                    continue
                if rank == len(lists):
                    lists.append(([], []))
                lists[rank][0].append(x)
                lists[rank][1].append(shrinking[e.index].to(x.dtype).view(e.view))
                rank += 1
        assert len(lists) == len(opt._shrink_lists)
        for (xs, ms), (gx, gm) in zip(lists, opt._shrink_lists):
            assert len(xs) == len(gx) and all(a is b for a, b in zip(xs, gx))
            assert all(a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b) for a, b in zip(ms, gm))
        assert opt._shrink_indexed == []


def test_period_start_scales_large_rows_by_index() -> None:
    """A parameter of at least _INDEXED_MIN elements has its leading-dim entries scaled by index (with
    Adam: with SGD the fused loop would take it)."""
    model = torch.nn.Sequential(torch.nn.Linear(200, 100), torch.nn.Linear(100, 4))
    layout = {"0.weight": [(0, torch.arange(100) % 10)], "0.bias": [(0, torch.arange(100) % 10)],
              "1.weight": [(1, torch.arange(100) % 10)]}
    opt = DHSPG(StubSpace(model, layout, 10), lr=0.1, target_group_sparsity=0.5, warmup_steps=1, end_step=4,
                periods=2, variant="adam")
    opt._begin_period([2, 7])
    (x, dim, where), = opt._shrink_indexed
    assert x is model[0].weight and dim == 0
    assert where.tolist() == [i for i in range(100) if i % 10 in (2, 7)]
    assert [len(xs) for xs, _ in opt._shrink_lists] == [2]
    np.testing.assert_array_equal(opt._shrink_lists[0][1][1].flatten().numpy(),
                                  np.isin(np.arange(100) % 10, [2, 7]).astype(np.float32))
