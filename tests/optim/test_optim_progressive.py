"""The progressive schedule (DHSPG / H2SPG default): its invariants, checked step by step.

* every selected group is exactly zero at the end of its period and nothing is forced;
* each period selects the cell's cumulative share of its quota, among groups not yet zero;
* within a period a group decays as (r − 1)/r per step (lr = 0 isolates the shrink);
* quotas stay within families (no family emptied); FLOPs budgets are met within 1 %;
* a checkpoint taken mid-period resumes bit for bit; H2SPG keeps its erasure valid.
"""

from __future__ import annotations

import copy
import io
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from h2spg_helpers import Supernet, batch, train_steps
from optim_helpers import params_of, random_grads, tiny_batch, tiny_space

import otonas
from otonas._errors import OtonasError
from otonas.optim import DHSPG, H2SPG, ForcedProjectionWarning
from otonas.optim._schedule import period_bounds, split_quota


def loss_step(model: torch.nn.Module, opt: torch.optim.Optimizer, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    opt.zero_grad()
    F.cross_entropy(model(data[0]), data[1]).backward()
    opt.step()


def set_grads(model: torch.nn.Module, grads: dict[str, torch.Tensor]) -> None:
    for n, p in model.named_parameters():
        p.grad = grads[n].clone()


def group_norms(space, groups):  # type: ignore[no-untyped-def]
    """‖x_g‖ of each group in ``groups`` (tiny_space's layout)."""
    params = dict(space.model.named_parameters())
    sq = torch.zeros(space.num_prunable_groups + 1, dtype=torch.float64)
    for name, entries in space.group_layout().items():
        p = params[name].detach()
        for dim, ids in entries:
            idx = torch.where(ids < 0, torch.full_like(ids, space.num_prunable_groups), ids)
            per = (p.double() ** 2).transpose(0, dim).reshape(p.shape[dim], -1).sum(1)
            sq.index_add_(0, idx, per)
    return sq[list(groups)].sqrt()


def test_period_bounds_and_quota_split() -> None:
    assert period_bounds(10, 20, 5) == [10, 12, 14, 16, 18, 20]
    assert period_bounds(0, 3, 5) == [0, 1, 2, 3]  # fewer steps than periods: one step each
    assert split_quota(5, [6, 3], [5, 2]) == [3, 2]
    assert sum(split_quota(7, [4, 4, 4], [3, 3, 3])) == 7
    assert split_quota(9, [4, 4], [3, 3]) == [3, 3]  # capped: at most the caps


@pytest.mark.parametrize("target", [0.3, 0.5, 7 / 9])
def test_selected_groups_reach_zero_by_construction(target: float) -> None:
    space = tiny_space()
    opt = DHSPG(space, lr=0.05, momentum=0.9, weight_decay=1e-3, target_group_sparsity=target, warmup_steps=3,
                end_step=13, periods=5)
    bounds = period_bounds(3, 13, 5)
    data = tiny_batch()
    seen_zero = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", ForcedProjectionWarning)
        for t in range(20):
            loss_step(space.model, opt, data)
            zero = int(opt.zero_groups().sum())
            assert zero >= seen_zero  # a zero group stays zero
            seen_zero = zero
            if t + 1 in bounds[1:]:  # the end of a period: its cumulative share is zero
                p = bounds.index(t + 1) - 1
                assert zero == sum(q * (p + 1) // 5 for q in opt.selector.quotas)
    m = opt.metrics()
    assert m["num_zero_groups"] == opt.target_zero_groups == math.floor(9 * target + 0.5)
    assert m["num_forced_groups"] == 0 and not m["forced_projection"]
    assert m["schedule"] == "progressive"
    # one group per family kept; the quotas follow the family sizes
    family = np.array(space.group_family)
    z = opt.zero_groups().numpy()
    for f in (0, 1):
        assert z[family == f].sum() < (family == f).sum()


def test_shrink_is_linear_within_a_period() -> None:
    """With lr = 0 the base step does nothing: a group selected in a period of L steps keeps
    (L − j)/L of its norm after j steps of it, and is exactly zero after L."""
    space = tiny_space()
    opt = DHSPG(space, lr=0.0, momentum=0.0, target_group_sparsity=4 / 9, warmup_steps=0, end_step=8, periods=2)
    g = random_grads(space.model, torch.Generator().manual_seed(0))
    set_grads(space.model, g)
    before = None
    for j in range(4):
        opt.step()
        if j == 0:
            chosen = torch.nonzero(opt._shrinking[:-1]).flatten().tolist()  # period 1's groups
            assert len(chosen) == sum(q // 2 for q in opt.selector.quotas)
            # norms before the first shrink: undo the factor 3/4 of this step
            before = group_norms(space, chosen) / (3 / 4)
        now = group_norms(space, chosen)
        torch.testing.assert_close(now, before * (3 - j) / 4, rtol=1e-12, atol=1e-15)
    assert (group_norms(space, chosen) == 0).all()


def test_zero_groups_keep_no_momentum() -> None:
    space = tiny_space()
    opt = DHSPG(space, lr=0.1, momentum=0.9, weight_decay=0.1, target_group_sparsity=0.5, warmup_steps=1, end_step=5,
                periods=2)
    data = tiny_batch()
    for _ in range(12):
        loss_step(space.model, opt, data)
    zero = opt.zero_groups()
    assert int(zero.sum()) == opt.target_zero_groups
    params = dict(space.model.named_parameters())
    for name, entries in space.group_layout().items():
        buf = opt.state[params[name]]["momentum_buffer"]
        for dim, ids in entries:
            hit = [i for i, gid in enumerate(ids.tolist()) if gid >= 0 and bool(zero[gid])]
            assert (buf.index_select(dim, torch.tensor(hit, dtype=torch.int64)) == 0).all(), name


def test_resume_mid_period_is_bit_exact() -> None:
    kw = dict(lr=0.05, momentum=0.9, weight_decay=1e-3, target_group_sparsity=0.5, warmup_steps=2, end_step=12,
              periods=3)
    data = tiny_batch()
    a = tiny_space()
    opt_a = DHSPG(a, **kw)  # type: ignore[arg-type]
    for _ in range(6):  # mid-period 2
        loss_step(a.model, opt_a, data)
    buf = io.BytesIO()
    torch.save({"model": a.model.state_dict(), "opt": opt_a.state_dict()}, buf)
    for _ in range(10):
        loss_step(a.model, opt_a, data)
    b = tiny_space(seed=5)
    opt_b = DHSPG(b, **kw)  # type: ignore[arg-type]
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    b.model.load_state_dict(ckpt["model"])
    opt_b.load_state_dict(ckpt["opt"])
    for _ in range(10):
        loss_step(b.model, opt_b, data)
    for (name, x), y in zip(params_of(a.model).items(), params_of(b.model).values()):
        assert torch.equal(x, y), name


def test_budget_arguments_are_checked() -> None:
    with pytest.raises(OtonasError, match="exactly one budget"):
        DHSPG(tiny_space(), lr=0.1, warmup_steps=0)
    with pytest.raises(OtonasError, match="exactly one budget"):
        DHSPG(tiny_space(), lr=0.1, target_group_sparsity=0.5, target_flops=0.5, warmup_steps=0)
    with pytest.raises(OtonasError, match="schedule"):
        DHSPG(tiny_space(), lr=0.1, target_group_sparsity=0.5, warmup_steps=0, schedule="fast")
    with pytest.raises(OtonasError, match="cost model"):
        DHSPG(tiny_space(), lr=0.1, target_flops=0.5, warmup_steps=0)


@pytest.fixture(scope="module")
def resnet_space() -> otonas.SearchSpace:
    import search_spaces

    torch.manual_seed(0)
    model = search_spaces.create("resnet20", size="tiny", in_chans=1, num_classes=10)
    return otonas.analyze(model, (torch.randn(2, 1, 16, 16),))


@pytest.mark.parametrize("metric,target", [("flops", 0.5), ("flops", 0.25), ("params", 0.4)])
def test_cost_budget_is_met_within_one_percent(resnet_space: otonas.SearchSpace, metric: str, target: float) -> None:
    space = resnet_space
    dense = getattr(space.costs(), metric)
    opt = DHSPG(space, lr=0.05, warmup_steps=2, end_step=7, periods=5, **{f"target_{metric}": target})
    gen = torch.Generator().manual_seed(0)
    state = copy.deepcopy(space.model.state_dict())
    try:
        for _ in range(9):
            x = torch.randn(4, 1, 16, 16, generator=gen)
            y = torch.randint(0, 10, (4,), generator=gen)
            loss_step(space.model, opt, (x, y))
        removed = space.removable(space.zero_groups())
        kept = getattr(space.costs(removed), metric) / dense
        assert kept <= target + 1e-9 and kept >= target - 0.01, kept
        assert opt.kept_fraction == pytest.approx(kept)
        assert opt.metrics()["num_forced_groups"] == 0
        # no family loses every channel
        family = np.array(space.group_family)
        z = opt.zero_groups().numpy()
        for f in np.unique(family):
            assert z[family == f].sum() < (family == f).sum()
        subnet = otonas.build(space)
        x = torch.randn(3, 1, 16, 16, generator=gen)
        space.model.eval()
        torch.testing.assert_close(subnet(x), space.model(x), rtol=1e-4, atol=1e-5)
    finally:
        space.model.load_state_dict(state)


def test_unreachable_cost_budget_names_the_floor(resnet_space: otonas.SearchSpace) -> None:
    with pytest.raises(OtonasError, match="at least"):
        DHSPG(resnet_space, lr=0.05, warmup_steps=2, end_step=7, target_flops=1e-4)


def test_h2spg_progressive_erases_validly_without_forcing() -> None:
    torch.manual_seed(0)
    model = Supernet([("sum", 3), ("nested", 2), ("deep", 2), ("cat", 2)])
    space = otonas.analyze(model, (batch(0)[0],))
    opt = H2SPG(space, lr=0.05, momentum=0.9, weight_decay=1e-3, erase_budget=0.3, target_group_sparsity=0.3,
                warmup_steps=3, end_step=13, periods=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ForcedProjectionWarning)
        train_steps(model, opt, list(range(18)))
    m = opt.metrics()
    assert m["num_forced_groups"] == 0
    assert m["num_accepted_erasing_groups"] == opt.target_erased_groups
    erased = space.erasable(space.zero_erasing_groups())
    assert space.check_erasure(np.asarray(opt.erased_mask())) is None
    assert erased.sum() >= 1
    assert bool(opt.zero_erasing_groups()[opt.accepted].all())
    assert m["num_zero_groups"] == opt.target_pruned_groups
    subnet = otonas.build(space)
    x = batch(7)[0]
    model.eval()
    torch.testing.assert_close(subnet(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("schedule", ["progressive", "half_space"])
def test_round_to_keeps_multiples_and_meets_the_flops_target(schedule: str) -> None:
    """round_to=8: every layer of the built subnet keeps a multiple of 8 channels (or all of them),
    the FLOPs target is met within 1 %, and the subnet computes what the trained network does."""
    import search_spaces

    torch.manual_seed(0)
    model = search_spaces.create("resnet20", in_chans=1, num_classes=10)  # widths 16/32/64
    space = otonas.analyze(model, (torch.randn(2, 1, 16, 16),))
    dense = space.costs().flops
    opt = DHSPG(space, lr=0.05, warmup_steps=2, end_step=7, periods=5, target_flops=0.5, round_to=8,
                schedule=schedule, lmbda=10.0)
    assert opt.kept_fraction is not None and 0.49 <= opt.kept_fraction <= 0.5
    gen = torch.Generator().manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ForcedProjectionWarning)  # the half-space mode may force a few
        for _ in range(9):
            x = torch.randn(4, 1, 16, 16, generator=gen)
            y = torch.randint(0, 10, (4,), generator=gen)
            loss_step(space.model, opt, (x, y))
    kept = space.costs(space.removable(space.zero_groups())).flops / dense
    assert 0.49 <= kept <= 0.5 + 1e-9, kept
    subnet = otonas.build(space)
    before = dict(model.state_dict())
    changed = 0
    for name, t in subnet.state_dict().items():  # every weight dim pruned: to a multiple of 8
        orig = before[name].shape
        assert len(t.shape) == len(orig), name
        for d, (now, was) in enumerate(zip(t.shape, orig)):
            assert now % 8 == 0 or now == was, (name, d, now, was)
            changed += int(now != was)
    assert changed > 0
    x = torch.randn(3, 1, 16, 16, generator=gen)
    space.model.eval()
    torch.testing.assert_close(subnet(x), space.model(x), rtol=1e-4, atol=1e-5)


def test_round_to_is_checked_and_skips_narrow_families() -> None:
    with pytest.raises(OtonasError, match="round_to"):
        DHSPG(tiny_space(), lr=0.1, target_group_sparsity=0.5, warmup_steps=1, round_to=0)
    from otonas.optim._schedule import Alignment, align_quota

    al = Alignment(8, sizes=[30, 4, 12], pinned=[2, 0, 0], blocks=[False, False, True])
    assert align_quota(al, 0, 10, 29) == 8  # 32 channels: 22 kept -> 24 kept, 8 removed
    assert (32 - align_quota(al, 0, 20, 29)) % 8 == 0
    assert align_quota(al, 1, 3, 3) == 0  # 4 channels: fewer than 8 kept is not a multiple: keep all
    assert align_quota(al, 2, 5, 11) == 5  # attention heads: removed whole, not rounded


def test_h2spg_round_to_keeps_multiples_outside_the_erased_operators() -> None:
    """H2SPG with round_to=3: every family outside the erased operators keeps a multiple of 3
    channels (or all of them; without round_to these 4-channel families keep 2); the erasure stays
    valid and the subnet equals the network."""
    torch.manual_seed(0)
    model = Supernet([("sum", 3), ("nested", 2), ("deep", 2), ("cat", 2)])
    space = otonas.analyze(model, (batch(0)[0],))
    opt = H2SPG(space, lr=0.05, momentum=0.9, weight_decay=1e-3, erase_budget=0.3, target_group_sparsity=0.4,
                warmup_steps=3, end_step=13, periods=5, round_to=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ForcedProjectionWarning)
        train_steps(model, opt, list(range(18)))
    zero = space.zero_groups()
    moot = opt.moot_groups
    removed = 0
    for fam in space.families:
        g = np.asarray(fam.groups, dtype=np.int64)
        if not len(g) or moot[g].any():
            continue
        k = int(zero[g].sum())
        removed += k
        assert k == 0 or (fam.num_channels - k) % 3 == 0, (fam.layers, fam.num_channels, k)
    assert removed > 0
    assert space.check_erasure(np.asarray(opt.erased_mask())) is None
    with pytest.raises(OtonasError, match="progressive"):
        H2SPG(space, lr=0.05, warmup_steps=3, end_step=13, schedule="half_space", round_to=2)
    subnet = otonas.build(space)
    x = batch(7)[0]
    model.eval()
    torch.testing.assert_close(subnet(x), model(x), rtol=1e-4, atol=1e-5)


def _select_cell_by_cell(score: np.ndarray, eligible: np.ndarray, cells: list[np.ndarray], want: list[int],
                         have: list[int]) -> list[int]:
    """The reference: each cell's eligible members sorted by score (higher first, NaN last, ties in the
    cell's own order), the first want − have of them."""
    out: list[int] = []
    for members, w, h in zip(cells, want, have):
        order = [int(g) for g in members]
        ranked = sorted((g for g in order if eligible[g]),
                        key=lambda g: (math.inf if math.isnan(score[g]) else -score[g], order.index(g)))
        out.extend(ranked[:max(0, w - h)])
    return sorted(out)


def test_select_in_cells_and_cell_counts_match_the_cell_by_cell_choice() -> None:
    """The one-sort selection of every cell's most redundant groups and the one-count tally of the
    groups a cell already holds: what a loop over the cells gives, ties and NaN scores included."""
    from otonas.optim._schedule import select_in_cells
    from otonas.optim._schedule import count_in_cells

    rng = np.random.default_rng(0)
    for _ in range(400):
        n = int(rng.integers(1, 40))
        perm = rng.permutation(n)
        cuts = np.sort(rng.choice(np.arange(1, n), size=min(int(rng.integers(0, 5)), n - 1), replace=False))
        cells = [c if rng.random() < 0.5 else np.sort(c) for c in np.split(perm, cuts)]
        score = rng.integers(0, 4, n).astype(float)  # ties
        score[rng.random(n) < 0.2] = np.nan
        eligible = rng.random(n) < 0.7
        want = [int(rng.integers(0, len(c) + 2)) for c in cells]
        have = [int(rng.integers(0, 3)) for c in cells]
        assert select_in_cells(score, eligible, cells, want, have) == \
            _select_cell_by_cell(score, eligible, cells, want, have)
        zero = rng.random(n) < 0.4
        assert count_in_cells(cells, zero).tolist() == [int(zero[c].sum()) for c in cells]
