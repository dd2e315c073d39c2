"""H2SPG's invariants on small supernets analysed by otonas, against slow references (h2spg_helpers)."""

from __future__ import annotations

import copy
import dataclasses
import io
import logging
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from h2spg_helpers import Supernet, batch, ref_erasure, ref_moot, ref_pruning, round_half_up, train_steps
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from optim_helpers import RefDHSPG, StubSpace, params_of, random_grads, torchrun

import otonas
from otonas._errors import OtonasError
from otonas.optim import DHSPG, H2SPG, BudgetWarning, ForcedProjectionWarning, SkippedCandidate, select_erasure
from otonas.optim._h2spg import _TwoLevelSpace

pytestmark = pytest.mark.filterwarnings("ignore::otonas.optim.ForcedProjectionWarning",
                                        "ignore::otonas.optim.BudgetWarning")

PLAN = [("sum", 3), ("nested", 2), ("deep", 2), ("cat", 2)]


@pytest.fixture(scope="module")
def analysed() -> tuple[otonas.SearchSpace, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = Supernet(PLAN)
    space = otonas.analyze(model, (batch(0)[0],))
    return space, copy.deepcopy(model.state_dict())


@pytest.fixture
def space(analysed: tuple[otonas.SearchSpace, dict[str, torch.Tensor]]) -> otonas.SearchSpace:
    """The analysed supernet, back at its initial weights."""
    s, state = analysed
    s.model.load_state_dict(state)
    s.model.zero_grad(set_to_none=True)
    return s


def make(space: otonas.SearchSpace, **kw) -> H2SPG:  # type: ignore[no-untyped-def]
    args = dict(lr=0.05, momentum=0.9, weight_decay=1e-3, erase_budget=0.5, target_group_sparsity=0.3,
                warmup_steps=3, end_step=9, lmbda=2.0)
    args.update(kw)
    return H2SPG(space, schedule="half_space", **args)  # type: ignore[arg-type]


def erased_now(space: otonas.SearchSpace) -> np.ndarray:
    """The erasing groups the builder would erase now: the outermost valid all-zero ones."""
    return space.erasable(space.zero_erasing_groups())


# ---------------------------------------------------------------------------- layout and warm-up
def test_space_has_nesting_and_skips(space: otonas.SearchSpace) -> None:
    """The fixture exercises what H2SPG must handle: nested groups and invalid sets."""
    assert any(g.parent is not None for g in space.erasing_groups)
    assert any(g.parent is not None and space.erasing_groups[g.parent].parent is not None
               for g in space.erasing_groups)  # two levels of nesting
    assert not space.is_valid(list(range(space.num_erasing_groups)))


def test_two_level_layout_covers_whole_operators(space: otonas.SearchSpace) -> None:
    opt = make(space)
    n, e = space.num_prunable_groups, space.num_erasing_groups
    assert opt.num_groups == n + e and opt.num_pruning_groups == n and opt.num_erasing_groups == e
    named = dict(space.model.named_parameters())
    sizes = opt._layout.group_size.tolist()
    for g in space.erasing_groups:
        assert sizes[n + g.index] == sum(named[f].numel() for f in g.params)
    layout = _TwoLevelSpace(space).group_layout()
    deep = max(space.erasing_groups, key=lambda g: g.depth)
    # a parameter of a doubly nested operator carries one whole-tensor entry per enclosing group
    entries = [idx for dim, idx in layout[deep.params[0]] if dim == 0 and bool((idx >= n).all())]
    assert len(entries) == deep.depth + 1


def test_warmup_is_torch_sgd_and_projects_nothing(space: otonas.SearchSpace) -> None:
    ref_model = copy.deepcopy(space.model)
    opt = make(space, warmup_steps=5, end_step=None)
    ref = torch.optim.SGD(ref_model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3, foreach=True)
    for s in range(5):
        for m, o in ((space.model, opt), (ref_model, ref)):
            x, y = batch(s)
            F.cross_entropy(m(x), y).backward()
            o.step()
            o.zero_grad()
        assert opt.redundant_groups is None and not opt.erased_mask().any()
    for p, q in zip(space.model.parameters(), ref_model.parameters()):
        assert torch.equal(p, q)
    assert opt.metrics()["phase"] == "warmup" and opt.accepted == [] and opt.erasing_scores is not None


def test_ema_recurrence(space: otonas.SearchSpace) -> None:
    state = copy.deepcopy(space.model.state_dict())
    raw = [None, None, None]
    opt_raw = make(space, ema=0.0, warmup_steps=10, end_step=None)
    for s in range(3):
        train_steps(space.model, opt_raw, [s])
        raw[s] = torch.cat([opt_raw.pruning_scores, opt_raw.erasing_scores])  # type: ignore[call-overload]
        # with ema=0 the average is the step's score: cos in [−1, 1] plus magnitude in [0, 1], or +inf
        assert bool(((raw[s] >= -1 - 1e-9) & (raw[s] <= 2 + 1e-9)).all())  # type: ignore[operator]
    space.model.load_state_dict(state)
    avg = make(space, ema=0.7, warmup_steps=10, end_step=None)
    train_steps(space.model, avg, [0, 1, 2])
    expect = raw[0]
    for s in (1, 2):
        expect = expect * 0.7 + raw[s] * 0.3
    got = torch.cat([avg.pruning_scores, avg.erasing_scores])  # type: ignore[list-item]
    torch.testing.assert_close(got, expect, rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------- selection
def check_selection(space: otonas.SearchSpace, opt: H2SPG, budget: float, target: float) -> None:
    e, n = space.num_erasing_groups, space.num_prunable_groups
    scores = opt.erasing_scores.tolist()  # type: ignore[union-attr]
    accepted, skipped = ref_erasure(space, scores, round_half_up(e, budget))
    assert opt.accepted == accepted
    assert [s.index for s in opt.skipped] == skipped
    assert all(isinstance(s, SkippedCandidate) and s.reason for s in opt.skipped)
    mask = opt.erased_mask()
    assert mask.sum() == len(accepted) and space.is_valid(mask)
    # the score-ordered walk minus the skipped candidates
    order = sorted(range(e), key=lambda i: (-scores[i], i))
    walked = order[:len(accepted) + len(skipped)]
    assert [i for i in walked if i not in set(skipped)] == accepted
    # no accepted group nested in another
    for a in accepted:
        p = space.erasing_groups[a].parent
        while p is not None:
            assert p not in accepted
            p = space.erasing_groups[p].parent
    moot = ref_moot(space, accepted)
    assert np.array_equal(opt.moot_groups, moot)
    pruned = ref_pruning(space, opt.pruning_scores.tolist(), round_half_up(n, target), moot)  # type: ignore[union-attr]
    red = opt.redundant_groups
    assert red is not None and sorted(torch.nonzero(red).flatten().tolist()) == pruned


@pytest.mark.parametrize("budget,target", [(0.5, 0.3), (1.0, 0.0), (0.0, 0.5), (0.3, 0.2)])
def test_selection_is_the_valid_greedy_walk(space: otonas.SearchSpace, budget: float, target: float) -> None:
    opt = make(space, erase_budget=budget, target_group_sparsity=target, warmup_steps=2)
    train_steps(space.model, opt, [0, 1, 2])
    check_selection(space, opt, budget, target)


def test_skipped_candidates_are_logged_with_reasons(space: otonas.SearchSpace,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    opt = make(space, erase_budget=1.0, warmup_steps=1)
    with caplog.at_level(logging.DEBUG, logger="otonas.optim"):
        with pytest.warns(BudgetWarning, match="found only"):
            train_steps(space.model, opt, [0, 1])
    assert opt.skipped, "budget 1.0 on a supernet with nesting must skip candidates"
    logged = [r.getMessage() for r in caplog.records if r.name == "otonas.optim"]
    for s in opt.skipped:
        assert any(f"group {s.index}" in m and s.reason in m for m in logged), s
    reasons = " ".join(s.reason for s in opt.skipped)
    assert "inside the accepted" in reasons or "encloses the accepted" in reasons
    assert any(r.levelno == logging.INFO and "found only" in r.getMessage() for r in caplog.records)


def test_select_erasure_on_a_stub() -> None:
    """Nesting and validity on a hand-made hierarchy: 0 ⊃ {1, 2, 5}; 3 and 4 cannot go together."""

    class G:
        def __init__(self, index: int, parent: int | None, params: tuple[str, ...]) -> None:
            self.index, self.parent, self.params, self.module = index, parent, params, f"op{index}"

    class S:
        erasing_groups = [G(0, None, ("p1", "p2", "p5")), G(1, 0, ("p1",)), G(2, 0, ("p2",)), G(3, None, ("p3",)),
                          G(4, None, ("p4",)), G(5, 0, ("p5",))]

        def check_erasure(self, erased: list[int]) -> str | None:
            return "the output dies" if {3, 4} <= set(erased) else None

    scores = [0.5, 0.9, 0.6, 0.8, 0.7, 0.1]  # walk: 1, 3, 4, 2, 0, 5
    accepted, skipped = select_erasure(S(), scores, 4)  # type: ignore[arg-type]
    assert accepted == [1, 3, 2]
    assert [s.index for s in skipped] == [4, 0, 5]
    assert "output dies" in skipped[0].reason
    assert "encloses the accepted erasing group 1 (op1)" in skipped[1].reason
    assert "every parameter of the enclosing group 0 (op0)" in skipped[2].reason
    accepted, skipped = select_erasure(S(), scores, 3)  # type: ignore[arg-type]
    assert accepted == [1, 3, 2] and [s.index for s in skipped] == [4]  # the walk stops at the budget
    accepted, skipped = select_erasure(S(), [0.9, 0.8, 0.1, math.nan, 0.7, 0.2], 2)  # type: ignore[arg-type]
    assert accepted == [0, 4] and [s.index for s in skipped] == [1]
    assert "inside the accepted erasing group 0" in skipped[0].reason
    # an earlier period's accepted set, walked first, is accepted again whatever the scores: here an
    # outer group scoring +inf (all its parameters zero) would otherwise come first and shut out 1
    inf = math.inf
    accepted, skipped = select_erasure(S(), [inf, 0.1, 0.2, 0.3, 0.4, 0.5], 2)  # type: ignore[arg-type]
    assert accepted[0] == 0  # without `first`, the +inf outer group wins
    accepted, skipped = select_erasure(S(), [inf, 0.1, 0.2, 0.3, 0.4, 0.5], 3, first=[1, 3])  # type: ignore[arg-type]
    assert accepted[:2] == [1, 3] and 0 in [s.index for s in skipped]
    assert "encloses the accepted erasing group 1" in next(s.reason for s in skipped if s.index == 0)


class _FullCheck:
    """A search space seen without its incremental ``erasure_walk``: the walk calls the full
    ``check_erasure`` (``Segments.dead_nodes``) for every candidate, as it did before the walk."""

    def __init__(self, space: otonas.SearchSpace) -> None:
        self.erasing_groups = space.erasing_groups
        self.check_erasure = space.check_erasure


def _same_walks(space: otonas.SearchSpace, orders: int, seed: int) -> None:
    """select_erasure with the incremental walk and with the full check: the same groups accepted
    in the same order and the same candidates skipped for the same reasons, over random score
    orders (ties and NaNs among them), every budget from half to all, and an earlier period's
    random valid set walked first."""
    from otonas.testing import random_valid_erasure

    rng = np.random.default_rng(seed)
    e = space.num_erasing_groups
    invalid = 0
    for k in range(orders):
        scores = rng.random(e)
        if k % 3 == 1:
            scores = np.round(scores * 4) / 4  # ties: the lower index first
        if k % 3 == 2:
            scores[rng.random(e) < 0.1] = math.nan
        first = np.nonzero(random_valid_erasure(space, 0.2, rng))[0].tolist() if k % 2 else []
        first = [first[j] for j in rng.permutation(len(first))]
        budget = int(rng.integers(e // 2, e + 1))
        got = select_erasure(space, scores.tolist(), budget, first=first)
        want = select_erasure(_FullCheck(space), scores.tolist(), budget, first=first)  # type: ignore[arg-type]
        assert got == want, k
        invalid += sum("erasing it with" in s.reason for s in want[1])
    assert invalid, "no candidate was found invalid: the walks were not compared on a failing check"


def test_select_erasure_walk_is_the_full_check_walk(space: otonas.SearchSpace) -> None:
    _same_walks(space, 30, 0)


def test_select_erasure_walk_is_the_full_check_walk_on_darts() -> None:
    import search_spaces

    model = search_spaces.create("darts", num_classes=10, in_chans=1, size="tiny")
    darts = otonas.analyze(model, (torch.randn(1, 1, 8, 8),))
    _same_walks(darts, 30, 1)


@pytest.mark.slow
def test_select_erasure_walk_is_the_full_check_walk_on_the_default_darts() -> None:
    import search_spaces

    model = search_spaces.create("darts")
    darts = otonas.analyze(model, (torch.randn(1, *search_spaces.info("darts").input_shape),))
    _same_walks(darts, 4, 2)


# ---------------------------------------------------------------------------- budgets and zeros
@pytest.mark.parametrize("variant", ["sgd", "adamw"])
def test_budgets_are_exact_and_zero_groups_never_revive(space: otonas.SearchSpace, variant: str) -> None:
    # adamw with OTOv2's fixed λ rule forces groups at end_step (that path is checked too); the
    # default, scheduled λ forces none.
    kw = dict(lr=0.01, weight_decay=1e-2, lambda_rule="fixed") if variant == "adamw" else {}
    opt = make(space, variant=variant, erase_budget=0.4, **kw)
    n, e = space.num_prunable_groups, space.num_erasing_groups
    prev_p = torch.zeros(n, dtype=torch.bool)
    prev_e = torch.zeros(e, dtype=torch.bool)
    with pytest.warns(ForcedProjectionWarning) if variant == "adamw" else warnings.catch_warnings():
        if variant != "adamw":
            warnings.simplefilter("error", ForcedProjectionWarning)
        for s in range(14):
            train_steps(space.model, opt, [s])
            zp, ze = opt.zero_groups(), opt.zero_erasing_groups()
            assert bool((zp | ~prev_p).all()) and bool((ze | ~prev_e).all()), f"a zero group revived at step {s}"
            prev_p, prev_e = zp, ze
            if s < 3:
                assert not zp.any() and not ze.any()
    m = opt.metrics()
    assert m["phase"] == "done"
    assert m["erased_groups"] == m["num_accepted_erasing_groups"] == m["target_erased_groups"] == round_half_up(e, 0.4)
    assert m["num_zero_groups"] == m["target_zero_groups"] == round_half_up(n, 0.3)
    assert opt.group_sparsity() == m["num_zero_groups"] / n
    # the builder sees exactly the accepted set, and exactly the selected channels outside it
    assert np.array_equal(erased_now(space), opt.erased_mask())
    zero = space.zero_groups()
    assert np.array_equal(zero & ~opt.moot_groups, opt.redundant_groups.numpy())  # type: ignore[union-attr]


def test_built_network_computes_what_the_supernet_computes(space: otonas.SearchSpace) -> None:
    opt = make(space)
    train_steps(space.model, opt, range(12))
    model = space.model.eval()
    sub = otonas.build(space)
    x = batch(99, n=5)[0]
    with torch.no_grad():
        torch.testing.assert_close(sub(x), model(x), rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in sub.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("host_reads", [True, False])
@pytest.mark.parametrize("rule", ["fixed", "schedule"])
def test_projection_step_matches_group_by_group_reference(space: otonas.SearchSpace, host_reads: bool,
                                                          rule: str) -> None:
    """Over both levels at once (nested whole-tensor entries on the same dim as channel
    slices), the vectorized step equals DHSPG's slow reference run on the same two-level layout
    (also with zero slices cleared by 0/1 masks, as off CPU)."""
    model = space.model.double()
    two = _TwoLevelSpace(space)
    opt = make(space, momentum=0.0, weight_decay=0.0, lmbda=0.5, warmup_steps=2, end_step=7, lambda_rule=rule)
    opt._host_reads = host_reads
    n, e = space.num_prunable_groups, space.num_erasing_groups
    ref = RefDHSPG(StubSpace(model, two.group_layout(), n + e), lr=0.05, k=0, warmup_steps=2, end_step=7, lmbda=0.5,
                   rule=rule)
    gen = torch.Generator().manual_seed(3)
    x = params_of(model)
    try:
        for t in range(9):
            grads = random_grads(model, gen, scale=0.1)
            for name, p in model.named_parameters():
                p.grad = grads[name].clone()
            opt.step()
            if t == 2:
                red = opt._redundant
                assert red is not None
                ref.redundant = set(torch.nonzero(red[:-1]).flatten().tolist())
                assert len(ref.redundant) == len(opt.accepted) + len(torch.nonzero(opt.redundant_groups))
            x = ref.apply(x, grads)
            for name, p in model.named_parameters():
                torch.testing.assert_close(p.detach(), x[name], rtol=1e-9, atol=1e-12, msg=f"{name} at step {t}")
        assert ref.zero == set(torch.nonzero(opt._zero[:-1]).flatten().tolist())
    finally:
        model.float()


# ---------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("stop", [2, 3, 5, 10])
def test_resume_is_bit_exact(space: otonas.SearchSpace, stop: int) -> None:
    state0 = copy.deepcopy(space.model.state_dict())
    total = 13
    opt = make(space)
    train_steps(space.model, opt, range(total))
    straight = {k: v.clone() for k, v in space.model.state_dict().items()}
    straight_opt = (opt.accepted, opt.skipped, opt.erasing_scores, opt.metrics())

    space.model.load_state_dict(state0)
    first = make(space)
    train_steps(space.model, first, range(stop))
    buf = io.BytesIO()
    torch.save({"model": space.model.state_dict(), "opt": first.state_dict()}, buf)
    del first
    space.model.load_state_dict(state0)  # scramble, then restore from the checkpoint
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    space.model.load_state_dict(ckpt["model"])
    second = make(space)
    second.load_state_dict(ckpt["opt"])
    assert second.step_count == stop
    train_steps(space.model, second, range(stop, total))
    for k, v in space.model.state_dict().items():
        assert torch.equal(v, straight[k]), k
    assert (second.accepted, second.skipped) == straight_opt[:2]
    assert torch.equal(second.erasing_scores, straight_opt[2])  # type: ignore[arg-type]
    assert second.metrics() == straight_opt[3]


def test_state_survives_the_pickle_free_checkpoint(space: otonas.SearchSpace, tmp_path) -> None:  # type: ignore[no-untyped-def]
    state_mod = pytest.importorskip("otonas.search._state")
    opt = make(space)
    train_steps(space.model, opt, range(5))
    state_mod.save_state(opt.state_dict(), str(tmp_path / "opt"))
    other = make(space)
    other.load_state_dict(state_mod.load_state(str(tmp_path / "opt")))
    assert other.accepted == opt.accepted and other.skipped == opt.skipped
    assert torch.equal(other.erasing_scores, opt.erasing_scores)  # type: ignore[arg-type]
    assert np.array_equal(other.moot_groups, opt.moot_groups)


def test_load_rejects_other_spaces(space: otonas.SearchSpace) -> None:
    opt = make(space)
    sd = opt.state_dict()
    sd["h2spg"] = dict(sd["h2spg"], num_erasing_groups=sd["h2spg"]["num_erasing_groups"] + 1)
    with pytest.raises(OtonasError, match="erasing groups"):
        make(space).load_state_dict(sd)
    dhspg = DHSPG(space, schedule="half_space", lr=0.1, target_group_sparsity=0.2, warmup_steps=2)
    with pytest.raises(OtonasError, match="h2spg"):
        make(space).load_state_dict(dhspg.state_dict())


# ---------------------------------------------------------------------------- options
def test_the_search_command_call_works(space: otonas.SearchSpace) -> None:
    """The call ``otonas search`` makes (otonas/search/_run.py)."""
    opt = H2SPG(space, schedule="half_space", target_group_sparsity=0.0, erase_budget=0.4, warmup_steps=2, end_step=6, lr=0.05,
                variant="sgd", momentum=0.9, weight_decay=5e-4, lmbda=1.0)
    train_steps(space.model, opt, range(8))
    m = opt.metrics()
    assert m["erased_groups"] == round_half_up(space.num_erasing_groups, 0.4) and m["num_zero_groups"] == 0


@pytest.mark.parametrize("kw,match", [(dict(erase_budget=1.5), "erase_budget"), (dict(ema=1.0), "ema"),
                                      (dict(target_group_sparsity=-0.1), "target_group_sparsity"),
                                      (dict(warmup_steps=4, end_step=4), "end_step")])
def test_invalid_options_are_named(space: otonas.SearchSpace, kw: dict, match: str) -> None:
    with pytest.raises(OtonasError, match=match):
        make(space, **kw)


def test_needs_erasing_groups() -> None:
    model = torch.nn.Linear(3, 2)
    with pytest.raises(OtonasError, match="erasing groups"):
        H2SPG(StubSpace(model, {}, 0), lr=0.1, warmup_steps=1)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- property: random supernets
@st.composite
def supernets(draw):  # type: ignore[no-untyped-def]
    plan = draw(st.lists(st.tuples(st.sampled_from(["sum", "nested", "deep", "cat"]), st.integers(2, 3)),
                         min_size=1, max_size=3))
    return plan, draw(st.integers(0, 2**16)), draw(st.floats(0.0, 1.0)), draw(st.sampled_from([0.0, 0.2, 0.5]))


def _property(case) -> None:  # type: ignore[no-untyped-def]
    plan, seed, budget, target = case
    torch.manual_seed(seed)
    model = Supernet(plan)
    space = otonas.analyze(model, (batch(seed)[0],))
    opt = make(space, erase_budget=budget, target_group_sparsity=target, warmup_steps=2, end_step=4, ema=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_steps(model, opt, [seed, seed + 1, seed + 2])
    check_selection(space, opt, budget, target)
    budget_k = round_half_up(space.num_erasing_groups, budget)
    assert len(opt.accepted) <= budget_k
    if len(opt.accepted) < budget_k:  # every group was walked: none was left to try
        assert len(opt.accepted) + len(opt.skipped) == space.num_erasing_groups


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=supernets())
def test_selection_is_valid_and_greedy_on_random_supernets(case) -> None:  # type: ignore[no-untyped-def]
    _property(case)


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=supernets())
def test_selection_is_valid_and_greedy_on_random_supernets_many(case) -> None:  # type: ignore[no-untyped-def]
    _property(case)


# ---------------------------------------------------------------------------- DistributedDataParallel
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo")
def test_ddp_ranks_take_rank0s_selection(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(here.parents[1]), str(here),
                                                       os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
           str(here / "ddp_worker_h2spg.py"), str(tmp_path)]
    torchrun(cmd, env, [str(tmp_path / f"rank{r}.pt") for r in (0, 1)], timeout=300)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    for name, p in r0["params"].items():
        assert torch.equal(p, r1["params"][name]), name
    for key in ("zero", "zero_erasing", "redundant", "erasing_scores"):
        assert torch.equal(r0[key], r1[key]), key
    assert r0["accepted"] == r1["accepted"] and r0["skipped"] == r1["skipped"] and r0["accepted"]
    # rank 0's score (it prefers the first groups) decided for both ranks
    e = r0["erasing_scores"].numel()
    assert torch.equal(r0["erasing_scores"], -torch.arange(e, dtype=torch.float64))
    walked = sorted(r0["accepted"] + [i for i, _ in r0["skipped"]])
    assert walked == list(range(len(walked)))
    assert r0["metrics"]["erased_groups"] == r1["metrics"]["erased_groups"] == len(r0["accepted"])


# ---------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_h2spg_erases_half_of_a_darts_supernet_on_digits() -> None:
    """The tiny DARTS-style supernet on sklearn's digits, 12 epochs: once with SGD, once with
    H2SPG erasing half of the erasing groups (default λ). The budget is met exactly, the built
    network predicts what the trained supernet predicts, and accuracy stays within 2 points."""
    import time

    search_spaces = pytest.importorskip("search_spaces")
    from test_optim_e2e import BATCH, accuracy, load_digits, train

    epochs = 12
    data = load_digits()
    spe = len(data.y_train) // BATCH

    def net() -> torch.nn.Module:
        return search_spaces.create("darts", size="tiny", in_chans=1, num_classes=10)

    torch.manual_seed(0)
    base = net()
    t0 = time.perf_counter()
    train(base, data, lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4),
          epochs=epochs)
    t_sgd = time.perf_counter() - t0
    acc_sgd = accuracy(base, data.x_test, data.y_test)

    torch.manual_seed(0)
    model = net()
    space = otonas.analyze(model, (data.x_train[:2],))
    e = space.num_erasing_groups
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ForcedProjectionWarning)
        opt = train(model, data, lambda m: H2SPG(space, schedule="half_space", lr=0.1, momentum=0.9, weight_decay=5e-4, erase_budget=0.5,
                                                 warmup_steps=3 * spe, end_step=8 * spe), epochs=epochs)
    t_h2 = time.perf_counter() - t0
    acc_h2 = accuracy(model, data.x_test, data.y_test)
    m = opt.metrics()  # type: ignore[attr-defined]
    assert m["erased_groups"] == m["target_erased_groups"] == round_half_up(e, 0.5)
    erased = opt.erased_mask()  # type: ignore[attr-defined]
    assert space.is_valid(erased) and np.array_equal(erased_now(space), erased)

    sub = otonas.build(space)
    model.eval()
    with torch.no_grad():
        out, ref = sub(data.x_test), model(data.x_test)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert torch.equal(out.argmax(1), ref.argmax(1))
    full = sum(p.numel() for p in model.parameters())
    small = sum(p.numel() for p in sub.parameters())
    forced = m["num_forced_groups"]
    print(f"\ndarts-tiny on digits, {epochs} epochs: E={e} erasing groups, erased {m['erased_groups']} "
          f"({forced} forced at end_step, {m['num_skipped_erasing_groups']} skipped), params {full} -> {small}, "
          f"accuracy SGD {acc_sgd:.2f}% H2SPG {acc_h2:.2f}% (diff {acc_h2 - acc_sgd:+.2f}), "
          f"train time SGD {t_sgd:.0f}s H2SPG {t_h2:.0f}s ({len(caught)} warning)")
    assert small < full
    assert acc_h2 >= acc_sgd - 2.0, (acc_sgd, acc_h2)


def _packed_against_per_weight(space: otonas.SearchSpace) -> None:
    opt = H2SPG(space, lr=0.1, warmup_steps=5)
    params = opt.param_groups[0]["params"]
    gen = torch.Generator().manual_seed(3)
    d = [torch.randn(p.shape, generator=gen) for p in params]
    plans, index = opt._layout.plans, opt._layout.slice_index
    with torch.no_grad():
        packed, _, _ = opt._stats(plans, index, params, d, with_abs=True, keep_xx=False)
        pack = opt._packing(plans, index, params)
        assert pack.positions and pack.matrix is not None  # some weights were packed, summed by the sparse product
        assert any(plans[i].is_vector for i, q in enumerate(plans) if q.position in pack.positions)  # biases too
        plain, _, _ = opt._stats(plans, index, params, d, with_abs=True)
        opt._packings[id(plans)] = (plans, dataclasses.replace(pack, matrix=None))  # the gather and index_add_
        gathered, _, _ = opt._stats(plans, index, params, d, with_abs=True, keep_xx=False)
    torch.testing.assert_close(packed, plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gathered, plain, rtol=1e-5, atol=1e-6)


def test_packed_statistics_match_the_per_weight_sums(space: otonas.SearchSpace) -> None:
    """The warm-up's and period starts' statistics sum the small weights packed together (both
    levels: a weight in a channel group and in one or two erasing groups; biases and norm weights
    with them), by one sparse product (or, where the device has none, a gather and one
    ``index_add_``): the same per-group sums as the per-weight reductions the half-space step uses."""
    _packed_against_per_weight(space)


def test_packed_statistics_match_the_per_weight_sums_on_darts() -> None:
    import search_spaces

    # in float64, so that the dots (sums of terms of both signs) compare at the same tolerance
    model = search_spaces.create("darts", num_classes=10, in_chans=1, size="tiny").double()
    _packed_against_per_weight(otonas.analyze(model, (torch.randn(1, 1, 8, 8, dtype=torch.float64),)))


@pytest.mark.parametrize("wd", [0.0, 1e-3])
def test_warmup_scores_off_the_flat_buffer_are_those_of_the_one_by_one_step(
        analysed: tuple[otonas.SearchSpace, dict[str, torch.Tensor]], wd: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """The warm-up's statistics read the small weights and their momentum off the flat buffer of
    the base step (``_flat``): the same moving average of the scores, bit for bit, and the same
    selection, as with every weight stepped one by one."""
    space, state = analysed
    runs = []
    for flat in (True, False):
        space.model.load_state_dict(state)
        opt = make(space, warmup_steps=4, end_step=8, weight_decay=wd)
        if not flat:
            monkeypatch.setattr(opt, "_flat_momentum", lambda params, hp: None)
        for s in range(5):
            x, y = batch(s)
            F.cross_entropy(space.model(x), y).backward()
            opt.step()
            opt.zero_grad()
        if flat:
            assert opt._flat and opt._flat._buf is not None
        runs.append((torch.cat([opt.pruning_scores, opt.erasing_scores]), list(opt.accepted), {n: p.detach().clone() for n, p in space.model.named_parameters()}))
    (ema_a, acc_a, xa), (ema_b, acc_b, xb) = runs
    assert torch.equal(ema_a, ema_b) and acc_a == acc_b
    assert all(torch.equal(xa[n], xb[n]) for n in xa)
