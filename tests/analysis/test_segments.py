"""Operator erasure: erasing groups found in plain supernets, their hierarchy, validity
against a brute-force build, and exact builds over many random valid erasures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import otonas
import search_spaces
from otonas.testing import random_valid_erasure, zero_groups_

SUPERNETS = [n for n in search_spaces.list() if search_spaces.info(n).kind == "supernet"]


def _tiny(name):
    model = search_spaces.create(name, size="tiny").eval()
    info = search_spaces.info(name)
    return model, lambda b, seed=0: torch.randn((b, *info.tiny_input_shape), generator=torch.Generator().manual_seed(seed))


def test_darts_candidates_nest_under_their_mixed_op():
    model, x = _tiny("darts")
    space = otonas.analyze(model, (x(2),))
    by_module = {g.module: g for g in space.erasing_groups}
    tree = space.hierarchy
    edges = [m for m in by_module if m.count(".") == 3 and ".edges." in m]  # cells.C.edges.E
    assert edges
    for edge in edges:
        kids = [by_module[m] for m in by_module if m.startswith(edge + ".ops.") and m.count(".") == 5]
        assert len(kids) == len(model.cells[0].edges[0].ops)  # every candidate op is erasable
        for k in kids:
            assert tree.has_edge(f"E{by_module[edge].index}", f"E{k.index}")
            assert k.parent == by_module[edge].index


class PoolOrConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = F.max_pool2d(x, 3, 1, 1) + self.bn(self.conv(x))  # the pooling branch has no parameters
        return self.head(y)


def test_parameter_free_branch_is_reported_not_erasable():
    space = otonas.analyze(PoolOrConv().eval(), (torch.randn(2, 4, 6, 6),))
    assert [g.module for g in space.erasing_groups] == [""] or len(space.erasing_groups) == 1
    assert any("parameter-free" in s.reason for s in space.segments.skipped)
    assert "parameter-free" in space.summary()
    # erasing the conv branch leaves the pooling: valid; the head reads the sum, still live
    assert space.is_valid(np.ones(1, dtype=bool))


class Twice(nn.Module):
    """A join that takes one branch twice: ``a(x) + (y + y)``, or ``cat([a(x), y, y])``."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
        self.c = nn.Conv2d(8 if kind == "add" else 24, 4, 1)

    def forward(self, x):
        y = self.b(x)
        return self.c(self.a(x) + (y + y) if self.kind == "add" else torch.cat([self.a(x), y, y], 1))


@pytest.mark.parametrize("kind", ["add", "cat"])
def test_a_branch_taken_twice_by_a_join_is_not_erasable(kind):
    """Such a branch once made the nesting of erasing groups loop forever."""
    space = otonas.analyze(Twice(kind).eval(), (torch.randn(2, 3, 6, 6),))
    assert [g.module for g in space.erasing_groups] == ["a"]
    assert any("more than once" in s.reason and s.module == "b" for s in space.segments.skipped)
    assert space.is_valid(np.ones(1, dtype=bool))


def _check_seeds(name: str, seeds: range) -> None:
    model, x = _tiny(name)
    space = otonas.analyze(model, (x(2),))
    assert space.num_erasing_groups > 0
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for seed in seeds:
        model.load_state_dict(state)
        rng = np.random.default_rng(seed)
        erased = random_valid_erasure(space, 0.5, rng)
        assert space.is_valid(erased)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for i in np.nonzero(erased)[0]:
                for f in space.erasing_groups[i].params:
                    params[f].zero_()
        mask = space.removable(rng.random(space.num_prunable_groups) < 0.3)
        zero_groups_(space, mask)
        sub = otonas.build(space)
        xt = x(3, seed)
        with torch.no_grad():
            ref, out = model(xt), sub(xt)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5 * max(1.0, ref.abs().max().item()))
        assert sum(p.numel() for p in sub.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", SUPERNETS)
def test_random_valid_erasures_build_exactly(name):
    _check_seeds(name, range(10))


@pytest.mark.slow
@pytest.mark.parametrize("name", SUPERNETS)
def test_random_valid_erasures_build_exactly_50_seeds(name):
    _check_seeds(name, range(50))


# --- property: is_valid agrees with a brute-force build on random supernets ----------------


class Cand(nn.Module):
    def __init__(self, c: int, kind: int) -> None:
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(c, c, 3 if kind else 1, padding=1 if kind else 0)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return self.bn(self.conv(F.relu(x)))


class Mixed(nn.Module):
    def __init__(self, c: int, n: int) -> None:
        super().__init__()
        self.ops = nn.ModuleList(Cand(c, i % 2) for i in range(n))

    def forward(self, x):
        out = self.ops[0](x)
        for op in self.ops[1:]:
            out = out + op(x)
        return out


class RandomSupernet(nn.Module):
    """Stages of nested sums (mixed ops of mixed ops), concats of branches, and shared inputs."""

    def __init__(self, plan: list[tuple[str, int]], c: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.plan = plan
        self.stages = nn.ModuleList()
        width = c
        for kind, n in plan:
            if kind == "sum":
                self.stages.append(nn.ModuleList([Mixed(width, n)]))
            elif kind == "nested":
                self.stages.append(nn.ModuleList([Mixed(width, n), Mixed(width, 2)]))
            else:  # concat of n branches, then a 1x1 conv back to `width`
                self.stages.append(nn.ModuleList([Cand(width, i % 2) for i in range(n)]
                                                 + [nn.Conv2d(width * n, width, 1)]))
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        x = self.stem(x)
        for (kind, n), stage in zip(self.plan, self.stages):
            if kind == "sum":
                x = x + stage[0](x)
            elif kind == "nested":
                x = stage[0](x) + stage[1](x)
            else:
                x = stage[-1](torch.cat([b(x) for b in stage[:-1]], dim=1))
        return self.head(x.mean((2, 3)))


@st.composite
def supernet_and_sets(draw):
    plan = draw(st.lists(st.tuples(st.sampled_from(["sum", "nested", "cat"]), st.integers(2, 3)),
                         min_size=1, max_size=3))
    seed = draw(st.integers(0, 2**16))
    return plan, seed


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=supernet_and_sets())
def test_is_valid_agrees_with_building_and_running(case):
    plan, seed = case
    torch.manual_seed(seed)
    model = RandomSupernet(plan).eval()
    x = torch.randn(2, 3, 5, 5)
    space = otonas.analyze(model, (x,))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(seed)
    e = space.num_erasing_groups
    for _ in range(6):
        erased = rng.random(e) < rng.uniform(0.2, 0.9)
        # no group together with one nested in it: the outer one already holds it
        for i in np.nonzero(erased)[0]:
            p = space.erasing_groups[i].parent
            while p is not None:
                if erased[p]:
                    erased[i] = False
                p = space.erasing_groups[p].parent
        model.load_state_dict(state)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for i in np.nonzero(erased)[0]:
                for f in space.erasing_groups[i].params:
                    params[f].zero_()
        xt = torch.randn(3, 3, 5, 5)
        with torch.no_grad():
            ref = model(xt)
        try:
            sub = otonas.build(space, erased=erased, _unchecked=True)
            with torch.no_grad():
                out = sub(xt)
            works = out.shape == ref.shape and torch.allclose(out, ref, rtol=1e-4, atol=1e-5)
        except Exception:
            works = False
        assert space.is_valid(erased) == works, (plan, np.nonzero(erased)[0], space.check_erasure(erased))


def _walk_against_full_check(space, rng, orders):
    """Grow erasures group by group in random orders: every ``walk.check`` says what the full
    ``check_erasure`` of the grown set says (verdict and reason)."""
    e = space.num_erasing_groups
    checked = invalid = 0
    for _ in range(orders):
        walk = space.erasure_walk()
        accepted: list[int] = []
        for g in rng.permutation(e).tolist():
            got = walk.check(g)
            assert got == space.check_erasure(sorted(accepted + [g])), (accepted, g)
            checked += 1
            if got is None:
                walk.accept(g)
                accepted.append(g)
            else:
                invalid += 1
        assert walk.accepted == accepted
    return checked, invalid


@pytest.mark.parametrize("name", SUPERNETS)
def test_erasure_walk_judges_as_the_full_check(name):
    model, x = _tiny(name)
    space = otonas.analyze(model, (x(2),))
    checked, invalid = _walk_against_full_check(space, np.random.default_rng(0), 6)
    assert checked and invalid, (checked, invalid)


@pytest.mark.slow
def test_erasure_walk_judges_as_the_full_check_on_the_default_darts():
    model = search_spaces.create("darts").eval()
    space = otonas.analyze(model, (torch.randn(1, *search_spaces.info("darts").input_shape),))
    checked, invalid = _walk_against_full_check(space, np.random.default_rng(1), 1)
    assert checked == space.num_erasing_groups and invalid
