"""H2SPG with a FLOPs / parameter target: operators erased period by period until the supernet
keeps at most the target share of its cost, the fewest the walk needs, nothing forced."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from h2spg_helpers import Supernet, batch, train_steps

import otonas
from otonas.errors import OtonasError
from otonas.optim import H2SPG, BudgetWarning, ForcedProjectionWarning, select_erasure

PLAN = [("sum", 3), ("nested", 2), ("deep", 2), ("cat", 2)]


@pytest.fixture(scope="module")
def analysed():  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = Supernet(PLAN)
    space = otonas.analyze(model, (batch(0)[0],))
    return space, copy.deepcopy(model.state_dict())


@pytest.fixture
def space(analysed):  # type: ignore[no-untyped-def]
    s, state = analysed
    s.model.load_state_dict(state)
    s.model.zero_grad(set_to_none=True)
    return s


def _kept(space: otonas.SearchSpace, erased: np.ndarray, metric: str) -> float:
    return getattr(space.costs(erased=erased), metric) / getattr(space.costs(), metric)


@pytest.mark.parametrize("metric,target", [("flops", 0.7), ("flops", 0.5), ("params", 0.6)])
def test_cost_target_is_met_by_the_fewest_operators_and_nothing_is_forced(space, metric, target) -> None:  # type: ignore[no-untyped-def]
    opt = H2SPG(space, lr=0.05, momentum=0.9, weight_decay=1e-3, warmup_steps=3, end_step=13, periods=5,
                **{f"target_{metric}": target})
    e = space.num_erasing_groups
    prev = torch.zeros(e, dtype=torch.bool)
    goals = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", ForcedProjectionWarning)
        warnings.simplefilter("error", BudgetWarning)
        for s in range(16):
            before = list(opt.accepted)
            train_steps(space.model, opt, [s])
            ze = opt.zero_erasing_groups()
            assert bool((ze | ~prev).all()), f"an erased operator revived at step {s}"
            prev = ze
            if opt.accepted != before:  # a period start: the accepted set meets that period's share
                goals.append(_kept(space, opt.erased_mask(), metric))
    erased = space.erasable(space.zero_erasing_groups())
    assert np.array_equal(erased, opt.erased_mask())
    kept = _kept(space, erased, metric)
    assert kept <= target + 1e-12 and opt.erased_kept_fraction == pytest.approx(kept)
    # the fewest: without the last group accepted the walk's prefix keeps more than the target
    acc = opt.accepted
    fewer = np.zeros(space.num_erasing_groups, dtype=bool)
    fewer[acc[:-1]] = True
    assert _kept(space, fewer, metric) > target
    # the walk's own order: the accepted set is a prefix of the walk on the final scores, earlier first
    order, _ = select_erasure(space, opt.erasing_scores.tolist(), e, first=acc)  # type: ignore[union-attr]
    assert order[:len(acc)] == acc
    assert goals == sorted(goals, reverse=True)  # each period keeps no more than the one before
    m = opt.metrics()
    assert m[f"target_{metric}"] == target and m["target_erased_groups"] == len(acc) == m["erased_groups"]
    assert m["num_forced_groups"] == 0 and m["erase_budget"] is None
    model = space.model.eval()
    sub = otonas.build(space)
    x = batch(99, n=5)[0]
    with torch.no_grad():
        torch.testing.assert_close(sub(x), model(x), rtol=1e-4, atol=1e-5)


def test_an_unreachable_target_warns_and_erases_what_the_walk_can(space) -> None:  # type: ignore[no-untyped-def]
    opt = H2SPG(space, lr=0.05, warmup_steps=2, end_step=6, periods=2, target_flops=0.001)
    with pytest.warns(BudgetWarning, match="target_flops=0.001 cannot be reached by erasing operators"):
        train_steps(space.model, opt, range(8))
    assert opt.accepted and opt.erased_kept_fraction is not None and opt.erased_kept_fraction > 0.001


@pytest.mark.parametrize("kw,match", [
    (dict(target_flops=0.5, erase_budget=0.5), "give erase_budget .* or target_flops"),
    (dict(target_flops=0.5, target_params=0.5), "not both"),
    (dict(target_flops=0.5, target_group_sparsity=0.2), "with channel pruning too"),
    (dict(target_flops=0.5, schedule="half_space"), "needs schedule='progressive'"),
    (dict(target_flops=0.0), "target_flops=0.0 is invalid"),
    (dict(target_params=1.5), "target_params=1.5 is invalid"),
])
def test_bad_cost_targets_are_named(space, kw, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(OtonasError, match=match):
        H2SPG(space, lr=0.1, warmup_steps=2, **kw)


def test_resume_keeps_the_count_and_the_result(space, analysed) -> None:  # type: ignore[no-untyped-def]
    opt = H2SPG(space, lr=0.05, warmup_steps=3, end_step=13, periods=5, target_flops=0.6)
    train_steps(space.model, opt, range(9))
    state, weights = copy.deepcopy(opt.state_dict()), copy.deepcopy(space.model.state_dict())
    train_steps(space.model, opt, range(9, 16))
    straight = (opt.accepted, copy.deepcopy(space.model.state_dict()))
    space.model.load_state_dict(weights)
    again = H2SPG(space, lr=0.05, warmup_steps=3, end_step=13, periods=5, target_flops=0.6)
    again.load_state_dict(state)
    assert again.target_erased_groups == len(again.accepted) > 0
    train_steps(space.model, again, range(9, 16))
    assert again.accepted == straight[0]
    for k, v in space.model.state_dict().items():
        assert torch.equal(v, straight[1][k]), k
