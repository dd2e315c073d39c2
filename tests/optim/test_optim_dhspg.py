"""DHSPG's invariants, each checked against a slow group-by-group reference (optim_helpers)."""

from __future__ import annotations

import copy
import io
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from optim_helpers import (RefDHSPG, StubSpace, TinyNet, group_slices, params_of, random_grads, ref_lambda,
                           ref_partition, ref_scores, sums, tiny_batch, tiny_space)

from otonas._errors import OtonasError
from otonas.optim import DHSPG, CosineMagnitudeScore, ForcedProjectionWarning, GroupStats, RedundancyScore
from otonas.optim import _base, _dhspg, _kernels, _layout
from otonas.optim._dhspg import _fill_zero, group_lambdas, schedule_lambdas

_fusable = DHSPG._fusable
from otonas.optim._layout import Entry

# Short projection phases force the last groups to zero on purpose; tests that check the warning catch it.
pytestmark = pytest.mark.filterwarnings("ignore::otonas.optim.ForcedProjectionWarning")


def set_grads(model: torch.nn.Module, grads: dict[str, torch.Tensor]) -> None:
    for n, p in model.named_parameters():
        p.grad = grads[n].clone()


def loss_step(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    F.cross_entropy(model(x), y).backward()
    opt.step()
    opt.zero_grad()


def zero_set(opt: DHSPG) -> set[int]:
    return set(torch.nonzero(opt.zero_groups()).flatten().tolist())


def quiet_step(opt: DHSPG) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ForcedProjectionWarning)
        opt.step()


# ---------------------------------------------------------------------------- warm-up = base optimizer
@pytest.mark.parametrize("kw", [dict(momentum=0.0), dict(momentum=0.9, weight_decay=1e-2),
                                dict(momentum=0.9, nesterov=True, weight_decay=1e-3),
                                dict(momentum=0.5, dampening=0.3)])
@pytest.mark.parametrize("scratch_min", [None, 1])
def test_warmup_is_torch_sgd_bit_for_bit(kw: dict, scratch_min: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small tensors take multi-tensor calls, large ones a reused scratch (every tensor here with
    ``scratch_min=1``): both are torch.optim.SGD's arithmetic."""
    if scratch_min is not None:
        monkeypatch.setattr(_base, "_SCRATCH_MIN", scratch_min)
    a, b = tiny_space(), tiny_space()
    opt = DHSPG(a, schedule="half_space", lr=0.05, target_group_sparsity=0.5, warmup_steps=6, **kw)
    ref = torch.optim.SGD(b.model.parameters(), lr=0.05, foreach=True, **kw)
    gen = torch.Generator().manual_seed(0)
    for _ in range(6):
        g = random_grads(a.model, gen)
        set_grads(a.model, g)
        set_grads(b.model, g)
        opt.step()
        ref.step()
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)
    assert opt.redundant_groups is None and opt.metrics()["phase"] == "warmup"


@pytest.mark.parametrize("variant,cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_warmup_is_torch_adam(variant: str, cls: type) -> None:
    a, b = tiny_space(), tiny_space()
    opt = DHSPG(a, schedule="half_space", lr=1e-2, variant=variant, weight_decay=0.1, betas=(0.8, 0.99), eps=1e-6,
                target_group_sparsity=0.5, warmup_steps=5)
    ref = cls(b.model.parameters(), lr=1e-2, weight_decay=0.1, betas=(0.8, 0.99), eps=1e-6)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        g = random_grads(a.model, gen)
        set_grads(a.model, g)
        set_grads(b.model, g)
        opt.step()
        ref.step()
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------- the partition
@pytest.mark.parametrize("target,family", [(0.5, True), (0.3, True), (0.0, True), (1.0, False), (0.45, False)])
def test_partition_is_the_k_most_redundant(target: float, family: bool) -> None:
    space = tiny_space(family=family)
    opt = DHSPG(space, schedule="half_space", lr=0.1, momentum=0.0, target_group_sparsity=target, warmup_steps=0, end_step=50)
    g = random_grads(space.model, torch.Generator().manual_seed(2))
    set_grads(space.model, g)
    x = params_of(space.model)
    opt.step()
    k = math.floor(9 * target + 0.5)
    chosen = set(torch.nonzero(opt.redundant_groups).flatten().tolist())
    assert len(chosen) == k == opt.target_zero_groups
    expected = ref_partition(ref_scores(group_slices(space), x, g), k, space.__dict__.get("group_family"))
    assert chosen == expected


def test_family_keeps_one_group_and_rejects_targets_that_empty_a_family() -> None:
    space = tiny_space()
    opt = DHSPG(space, schedule="half_space", lr=0.1, target_group_sparsity=7 / 9, warmup_steps=0)
    set_grads(space.model, random_grads(space.model, torch.Generator().manual_seed(0)))
    opt.step()
    chosen = opt.redundant_groups
    assert chosen is not None and not chosen[:6].all() and not chosen[6:].all()
    with pytest.raises(OtonasError, match="keep_one_per_family"):
        DHSPG(tiny_space(), schedule="half_space", lr=0.1, target_group_sparsity=0.9, warmup_steps=0)


def test_custom_score_decides_the_partition() -> None:
    class LastGroups(RedundancyScore):
        def __call__(self, stats: GroupStats) -> torch.Tensor:
            return torch.arange(stats.dot.numel(), dtype=torch.float64)

    space = tiny_space(family=False)
    opt = DHSPG(space, schedule="half_space", lr=0.1, target_group_sparsity=3 / 9, warmup_steps=0, score=LastGroups())
    set_grads(space.model, random_grads(space.model, torch.Generator().manual_seed(0)))
    opt.step()
    assert torch.nonzero(opt.redundant_groups).flatten().tolist() == [6, 7, 8]


def test_cosine_magnitude_score_orders_groups() -> None:
    one = torch.ones(3)
    stats = GroupStats(dot=torch.tensor([1.0, -1.0, 1.0]), x_sq=one, d_sq=one, x_abs=torch.tensor([1.0, 1.0, 0.0]),
                       size=one, family=None)
    score = CosineMagnitudeScore()(stats)
    assert score[2] == math.inf and score[0] > score[1]


# ---------------------------------------------------------------------------- the λ rule
finite = st.floats(-10, 10, allow_nan=False, allow_subnormal=False)


@settings(max_examples=300, deadline=None)
@given(x=st.lists(finite, min_size=3, max_size=3), d=st.lists(finite, min_size=3, max_size=3),
       lmbda=st.floats(1e-4, 1.0), amplify=st.floats(1.0, 3.0), coeff=st.floats(1.0, 20.0))
def test_lambda_rule_matches_reference_and_keeps_descent(x: list[float], d: list[float], lmbda: float,
                                                         amplify: float, coeff: float) -> None:
    xv = torch.tensor(x, dtype=torch.float64)
    dv = torch.tensor(d, dtype=torch.float64)
    dot, xn, dsq = float(xv @ dv), float(xv.norm()), float(dv @ dv)
    f64 = dict(dtype=torch.float64)
    lam = float(group_lambdas(torch.tensor([dot], **f64), torch.tensor([xn], **f64), torch.tensor([dsq], **f64),
                              lmbda=lmbda, amplify=amplify, coeff=coeff)[0])
    assert lam == pytest.approx(ref_lambda(dot, xn, dsq, lmbda=lmbda, amplify=amplify, coeff=coeff), rel=1e-12)
    if xn == 0:
        return
    lo, hi = (-dot / xn, dsq / (-dot / xn)) if dot < 0 else (None, None)
    in_clip = lmbda * (1 - 1e-12) <= lam <= coeff * lmbda * (1 + 1e-12)
    midpoint = lo is not None and lam == pytest.approx((lo + hi) / 2, rel=1e-12)
    assert in_clip or midpoint
    step = dv + lam * xv / xn  # the G_r step is −lr·step
    if dsq > 1e-12:  # still a descent direction for the base objective
        assert float(step @ dv) > -1e-9 * dsq
    if dot >= 0 or midpoint:  # and it shrinks the group
        assert float(step @ xv) > -1e-9 * (xn * xn)
    if midpoint and hi > lo * (1 + 1e-9):
        assert float(step @ dv) > 0 and float(step @ xv) > 0


def test_lambda_rule_keeps_descent_where_a_product_underflows() -> None:
    """Weights and directions of very different magnitudes (found by hypothesis): ‖d‖²·‖x‖ underflows
    to 0, but hi = −‖d‖²‖x‖/⟨x, d⟩ is not small; λ_g must still shrink the group."""
    test_lambda_rule_matches_reference_and_keeps_descent.hypothesis.inner_test(  # type: ignore[attr-defined]
        x=[0.0, 2.259583931562012e-156, -2.8924532691202265e-204], d=[0.0, 0.0, 1.2212844806026373e-103],
        lmbda=1.0, amplify=1.0, coeff=1.0)


# ---------------------------------------------------------------------------- the projection step
@pytest.mark.parametrize("momentum,wd,lmbda,epsilon", [(0.0, 0.0, 0.5, 0.2), (0.9, 1e-2, 2.0, 0.0),
                                                       (0.5, 0.0, 5.0, 0.5), (0.9, 1e-3, 1e-3, 0.0)])
@pytest.mark.parametrize("host_reads,block,kernels", [(True, None, True), (False, None, True), (True, 16, False),
                                                       (True, None, False), (False, None, False)])
@pytest.mark.parametrize("rule", ["fixed", "schedule"])
def test_projection_matches_group_by_group_reference(momentum: float, wd: float, lmbda: float, epsilon: float,
                                                     host_reads: bool, block: int | None, kernels: bool, rule: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Also with zero slices cleared by 0/1 masks (as off CPU, where nothing is read back), and
    with the conv weights' two passes taken by the fused loops (``_kernels``, SGD's momentum
    updated inside them) or by PyTorch calls on blocks of a few rows (as large weights are
    without numba)."""
    if block is not None:
        monkeypatch.setattr(_layout, "BLOCK", block)
        monkeypatch.setattr(_dhspg, "BLOCK", block)
    if kernels and not _kernels.enabled():
        pytest.skip(f"numba is not usable here: {_kernels._failed}")
    monkeypatch.setattr(_kernels, "enabled", lambda: kernels)
    monkeypatch.setattr(_kernels, "MIN_NUMEL", 0)  # the loops take these small weights too
    fused = []
    monkeypatch.setattr(DHSPG, "_fusable", lambda self, *a: fused.append(r := _fusable(self, *a)) or r)
    space = tiny_space()
    model = space.model
    kw = dict(lr=0.1, warmup_steps=2, end_step=14)
    opt = DHSPG(space, schedule="half_space", momentum=momentum, weight_decay=wd, target_group_sparsity=0.5, lmbda=lmbda,
                epsilon=epsilon, lambda_rule=rule, **kw)
    opt._host_reads = host_reads
    ref = RefDHSPG(space, k=opt.target_zero_groups, momentum=momentum, weight_decay=wd, lmbda=lmbda,
                   epsilon=epsilon, rule=rule, **kw)
    gen = torch.Generator().manual_seed(4)
    x = params_of(model)
    saw_natural_projection = False
    for t in range(18):
        g = random_grads(model, gen, scale=0.05)
        set_grads(model, g)
        quiet_step(opt)
        x = ref.apply(x, g)
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), x[n], rtol=1e-10, atol=1e-12, msg=f"step {t}, {n}")
        projected = set(torch.nonzero(opt._zero[:-1]).flatten().tolist())
        assert projected == ref.zero, f"step {t}"
        assert zero_set(opt) >= ref.zero
        if t < 13 and ref.zero:
            saw_natural_projection = True
        if 2 <= t < 14:
            lam = opt._lambdas
            for r, v in ref.lambdas.items():
                assert float(lam[r]) == pytest.approx(v, rel=1e-6)
    assert len(ref.zero) == opt.target_zero_groups
    assert opt.metrics()["num_forced_groups"] == ref.forced
    if rule == "fixed":
        assert saw_natural_projection == (lmbda >= 5.0)  # strong λ: groups reach zero before end_step
    else:
        assert ref.forced == 0  # the scheduled λ makes every group cross the boundary by itself
    assert any(fused) == (kernels and momentum > 0)  # with momentum, the loops updated it


def test_half_space_test_zeroes_exactly_the_groups_below_epsilon() -> None:
    """One projection step with d = grad: the zeroed groups are those with ⟨x̂_g, x_g⟩ < ε‖x_g‖²,
    with x̂ computed group by group (overlapping conv2 weight slices included)."""
    for seed in range(6):
        space = tiny_space(seed=seed, family=False)
        model = space.model
        opt = DHSPG(space, schedule="half_space", lr=0.5, momentum=0.0, target_group_sparsity=1.0, warmup_steps=0, end_step=5,
                    lmbda=1.0, hat_lmbda_coeff=3.0, epsilon=0.3)
        g = random_grads(model, torch.Generator().manual_seed(seed), scale=0.3)
        x = params_of(model)
        set_grads(model, g)
        opt.step()
        slices = group_slices(space)
        xhat = {n: x[n] - 0.5 * g[n] for n in x}
        for r in range(9):
            xx = sums(slices[r], x, x)
            lam = ref_lambda(sums(slices[r], x, g), math.sqrt(xx), sums(slices[r], g, g), lmbda=1.0, amplify=1.1,
                             coeff=3.0)
            for n, dim, pos in slices[r]:
                xhat[n].select(dim, pos).sub_(0.5 * lam / math.sqrt(xx) * x[n].select(dim, pos))
        expected = {r for r in range(9) if sums(slices[r], xhat, x) < 0.3 * sums(slices[r], x, x)}
        assert zero_set(opt) == expected, f"seed {seed}"
        assert 0 < len(expected) < 9 or seed > 0  # the first seed exercises a mixed outcome


# ---------------------------------------------------------------------------- phases and invariants
def test_no_projection_before_start_step() -> None:
    space = tiny_space()
    opt = DHSPG(space, schedule="half_space", lr=0.5, momentum=0.0, target_group_sparsity=0.5, warmup_steps=10, lmbda=10.0, epsilon=0.9)
    gen = torch.Generator().manual_seed(0)
    for _ in range(10):
        x = params_of(space.model)
        g = random_grads(space.model, gen)
        set_grads(space.model, g)
        opt.step()
        for n, p in space.model.named_parameters():
            assert torch.equal(p.detach(), x[n] - 0.5 * g[n])
        assert opt.group_sparsity() == 0.0 and opt.redundant_groups is None
    m = opt.metrics()
    assert m["phase"] == "warmup" and m["num_redundant_groups"] == 0 and math.isnan(m["lambda_mean"])
    set_grads(space.model, random_grads(space.model, gen))
    opt.step()
    assert opt.metrics()["phase"] == "projection" and opt.metrics()["num_redundant_groups"] == 5


@pytest.mark.parametrize("variant", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("host_reads", [True, False])
def test_zero_groups_never_revive(variant: str, host_reads: bool) -> None:
    space = tiny_space()
    model = space.model
    opt = DHSPG(space, schedule="half_space", lr=0.05, variant=variant, momentum=0.9, weight_decay=0.1, target_group_sparsity=0.5,
                warmup_steps=2, end_step=12, lmbda=1.0, epsilon=0.1)
    opt._host_reads = host_reads
    batch = tiny_batch()
    seen: set[int] = set()
    for t in range(30):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ForcedProjectionWarning)
            loss_step(model, opt, batch)
        now = zero_set(opt)
        assert now >= seen, f"step {t}: groups {seen - now} came back"
        redundant = opt.redundant_groups
        if redundant is not None:
            assert now <= set(torch.nonzero(redundant).flatten().tolist())  # only G_r is ever zeroed
        seen = now
        # the optimizer state of zero groups is zero too (no momentum can revive them later)
        slices = group_slices(space)
        names = dict(model.named_parameters())
        for r in now:
            for n, dim, pos in slices[r]:
                for v in opt.state[names[n]].values():
                    if isinstance(v, torch.Tensor) and v.shape == names[n].shape:
                        assert not v.select(dim, pos).any()
    assert len(seen) == opt.target_zero_groups and opt.group_sparsity() == pytest.approx(5 / 9)


@pytest.mark.parametrize("variant", ["sgd", "adam", "adamw"])
def test_end_step_forces_exactly_k_and_says_so(variant: str) -> None:
    space = tiny_space()
    opt = DHSPG(space, schedule="half_space", lr=1e-3, variant=variant, target_group_sparsity=0.5, warmup_steps=1, end_step=4,
                lmbda=1e-6, lambda_rule="fixed")
    batch = tiny_batch()
    for _ in range(3):
        loss_step(space.model, opt, batch)
    assert opt.group_sparsity() == 0.0 and opt.metrics()["forced_projection"] is False
    with pytest.warns(ForcedProjectionWarning, match="5 of the 5 redundant groups"):
        loss_step(space.model, opt, batch)
    m = opt.metrics()
    assert m["num_zero_groups"] == m["target_zero_groups"] == 5 and m["forced_projection"] is True
    assert m["num_forced_groups"] == 5 and m["phase"] == "done"


@pytest.mark.parametrize("variant", ["sgd", "adam", "adamw"])
def test_scheduled_lambda_reaches_zero_where_the_fixed_rule_forces(variant: str) -> None:
    """The run that forces all of G_r under lambda_rule="fixed" (λ far too weak for 3 steps):
    with the default rule every group crosses the half-space boundary by itself."""
    space = tiny_space()
    opt = DHSPG(space, schedule="half_space", lr=1e-3, variant=variant, target_group_sparsity=0.5, warmup_steps=1, end_step=4,
                lmbda=1e-6)
    batch = tiny_batch()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ForcedProjectionWarning)
        for _ in range(4):
            loss_step(space.model, opt, batch)
    m = opt.metrics()
    assert m["num_zero_groups"] == m["target_zero_groups"] == 5 and m["phase"] == "done"
    assert m["num_forced_groups"] == 0 and m["forced_projection"] is False


def test_schedule_lambdas_set_the_move_along_the_group() -> None:
    """Per group the step along −x_g/‖x_g‖, lr·(⟨d_g, x_g⟩/‖x_g‖ + λ_g), is at least
    gain·(1 − ε)·‖x_g‖/R, exactly that where OTOv2's λ_g is smaller; λ_g never drops below it."""
    gen = torch.Generator().manual_seed(0)
    dot = torch.randn(64, generator=gen, dtype=torch.float64)
    x_norm = torch.rand(64, generator=gen, dtype=torch.float64) + 0.1
    x_norm[0] = 0.0
    d_sq = dot.square() / x_norm.clamp(min=0.1).square() + torch.rand(64, generator=gen, dtype=torch.float64)
    lam = group_lambdas(dot, x_norm, d_sq, lmbda=0.5, amplify=1.1, coeff=10.0)
    for lr, steps, gain, eps in [(0.1, 10, 1.5, 0.0), (0.05, 1, 2.0, 0.3), (1.0, 3, 1.1, 0.9)]:
        out = schedule_lambdas(lam, dot, x_norm, lr=lr, steps_left=steps, gain=gain, epsilon=eps)
        live = x_norm > 0
        move = lr * (dot[live] / x_norm[live] + out[live])
        want = gain * (1 - eps) * x_norm[live] / steps
        assert (out >= lam).all() and out[0] == lam[0]
        assert (move >= want * (1 - 1e-12)).all()
        lifted = out[live] > lam[live]
        assert lifted.any() and torch.allclose(move[lifted], want[lifted])
        if steps == 1:  # the last step crosses the half-space boundary: ⟨x̂_g, x_g⟩ < ε‖x_g‖²
            assert (x_norm[live] ** 2 - lr * dot[live] - lr * out[live] * x_norm[live]
                    < eps * x_norm[live] ** 2).all()
    assert torch.equal(schedule_lambdas(lam, dot, x_norm, lr=0.0, steps_left=5, gain=1.5, epsilon=0.0), lam)


def test_natural_projection_reaches_the_target_without_forcing() -> None:
    """With gradients too weak to hold the redundant groups up, λ drives them to zero before end_step."""
    space = tiny_space()
    opt = DHSPG(space, schedule="half_space", lr=0.1, momentum=0.0, target_group_sparsity=0.5, warmup_steps=2, end_step=40, lmbda=2.0)
    gen = torch.Generator().manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ForcedProjectionWarning)
        for t in range(40):
            set_grads(space.model, random_grads(space.model, gen, scale=0.01))
            opt.step()
            if t == 30:
                assert opt.metrics()["num_zero_groups"] == 5
    m = opt.metrics()
    assert m["num_zero_groups"] == 5 and not m["forced_projection"] and m["num_forced_groups"] == 0


def test_metrics_report_the_run() -> None:
    space = tiny_space()
    opt = DHSPG(space, schedule="half_space", lr=0.1, target_group_sparsity=0.5, warmup_steps=1, end_step=3, lmbda=0.1)
    batch = tiny_batch()
    loss_step(space.model, opt, batch)
    loss_step(space.model, opt, batch)
    m = opt.metrics()
    assert m["step"] == 2 and m["phase"] == "projection" and m["num_redundant_groups"] == 5
    assert m["target_zero_groups"] == 5 and m["num_groups"] == 9 and m["target_group_sparsity"] == 0.5
    assert 0.1 <= m["lambda_min"] <= m["lambda_mean"] <= m["lambda_max"]
    x = params_of(space.model)
    slices = group_slices(space)
    redundant = torch.nonzero(opt.redundant_groups).flatten().tolist()
    assert m["redundant_norm"] > 0 and math.isfinite(m["redundant_norm"])
    assert opt.group_sparsity() == m["group_sparsity"] == len(zero_set(opt)) / 9
    assert all(sums(slices[r], x, x) >= 0 for r in redundant)


def test_unused_parameters_are_still_projected() -> None:
    """A grouped parameter that gets no gradient (an unused branch) is shrunk and zeroed with its group."""
    space = tiny_space(family=False)
    opt = DHSPG(space, schedule="half_space", lr=0.1, target_group_sparsity=1.0, warmup_steps=0, end_step=2, lmbda=0.1)
    g = random_grads(space.model, torch.Generator().manual_seed(0))
    del g["bn1.bias"]
    for n, p in space.model.named_parameters():
        p.grad = g[n].clone() if n in g else None
    opt.step()
    for n, p in space.model.named_parameters():
        p.grad = g[n].clone() if n in g else None
    quiet_step(opt)
    assert opt.group_sparsity() == 1.0 and not space.model.bn1.bias.any()


# ---------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("variant", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("cut", [2, 5, 9])  # warm-up, projection phase, after it
@pytest.mark.parametrize("kernels", [False, True])
def test_resume_is_bit_exact(variant: str, cut: int, kernels: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the PyTorch path and with the fused loops (which then take conv2's weight)."""
    if kernels and not _kernels.enabled():
        pytest.skip(f"numba is not usable here: {_kernels._failed}")
    monkeypatch.setattr(_kernels, "enabled", lambda: kernels)
    monkeypatch.setattr(_kernels, "MIN_NUMEL", 0)
    kw = dict(lr=0.05, variant=variant, momentum=0.9, weight_decay=1e-2, target_group_sparsity=0.5, warmup_steps=3,
              end_step=8, lmbda=0.5, epsilon=0.05)
    batches = [tiny_batch(seed=s) for s in range(12)]

    space = tiny_space()
    opt = DHSPG(space, schedule="half_space", **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ForcedProjectionWarning)
        for b in batches:
            loss_step(space.model, opt, b)
    full = params_of(space.model)

    space = tiny_space()
    opt = DHSPG(space, schedule="half_space", **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ForcedProjectionWarning)
        for b in batches[:cut]:
            loss_step(space.model, opt, b)
        buf = io.BytesIO()
        torch.save({"model": space.model.state_dict(), "opt": opt.state_dict()}, buf)
        del space, opt
        buf.seek(0)
        ckpt = torch.load(buf, weights_only=True)
        space = tiny_space(seed=123)  # other initial values: everything must come from the checkpoint
        space.model.load_state_dict(ckpt["model"])
        opt = DHSPG(space, schedule="half_space", **kw)
        opt.load_state_dict(ckpt["opt"])
        assert opt.step_count == cut
        for b in batches[cut:]:
            loss_step(space.model, opt, b)
    for n, p in space.model.named_parameters():
        assert torch.equal(p.detach(), full[n]), n
    assert opt.metrics()["num_zero_groups"] == 5


def test_state_dict_is_a_snapshot_and_checks_its_source() -> None:
    space = tiny_space()
    opt = DHSPG(space, schedule="half_space", lr=0.1, target_group_sparsity=0.5, warmup_steps=0, end_step=5)
    loss_step(space.model, opt, tiny_batch())
    sd = copy.deepcopy(opt.state_dict())
    assert sd["dhspg"]["redundant"].sum() == 5 and sd["dhspg"]["step"] == 1
    with pytest.raises(OtonasError, match="not saved by DHSPG"):
        opt.load_state_dict(torch.optim.SGD(space.model.parameters(), lr=0.1).state_dict())
    other = StubSpace(space.model, {"fc.weight": [(0, torch.arange(5))]}, 5)
    with pytest.raises(OtonasError, match="same search space"):
        DHSPG(other, schedule="half_space", lr=0.1, target_group_sparsity=0.5, warmup_steps=0).load_state_dict(sd)


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kw,match", [
    (dict(variant="rmsprop"), "variant"), (dict(target_group_sparsity=1.5), "target_group_sparsity"),
    (dict(warmup_steps=-1), "warmup_steps"), (dict(start_step=-1), "start_step"), (dict(warmup_steps=5, end_step=5), "end_step"),
    (dict(lmbda=0.0), "lmbda"), (dict(epsilon=1.0), "epsilon"), (dict(hat_lmbda_coeff=0.5), "hat_lmbda_coeff"),
    (dict(lmbda_amplify=0.9), "lmbda_amplify"), (dict(nesterov=True, momentum=0.0), "nesterov"),
    (dict(lr=-1.0), "lr"), (dict(betas=(0.9, 1.0)), "betas"),
    (dict(lambda_rule="adaptive"), "lambda_rule"), (dict(lambda_gain=1.0), "lambda_gain"),
])
def test_bad_options_name_the_option(kw: dict, match: str) -> None:
    args = dict(lr=0.1, target_group_sparsity=0.5, warmup_steps=0) | kw
    with pytest.raises(OtonasError, match=match):
        DHSPG(tiny_space(), schedule="half_space", **args)


def test_start_step_is_the_deprecated_name_of_warmup_steps() -> None:
    """``start_step=`` still works, warns once with the new name, and trains exactly as
    ``warmup_steps=``; giving both is refused."""
    runs = []
    for kw in (dict(warmup_steps=2), dict(start_step=2)):
        space = tiny_space()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            opt = DHSPG(space, lr=0.1, target_group_sparsity=0.5, end_step=5, **kw)
        dep = [w for w in caught if issubclass(w.category, DeprecationWarning)]
        assert len(dep) == ("start_step" in kw)
        if dep:
            assert "warmup_steps=2" in str(dep[0].message)
        x, y = tiny_batch()
        for _ in range(6):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(space.model(x), y).backward()
            opt.step()
        runs.append({n: p.detach().clone() for n, p in space.model.named_parameters()})
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])
    with pytest.raises(OtonasError, match="warmup_steps only"):
        DHSPG(tiny_space(), lr=0.1, target_group_sparsity=0.5, warmup_steps=2, start_step=2)


def test_bad_layouts_name_the_parameter() -> None:
    def space(layout: dict, n: int = 6) -> StubSpace:
        return StubSpace(TinyNet(), layout, n)

    cases = [
        (space({"nope.weight": [(0, torch.arange(6))]}), "nope.weight"),
        (space({"conv1.weight": [(4, torch.arange(6))]}), "dim 4"),
        (space({"conv1.weight": [(0, torch.arange(5))]}), "5 group ids"),
        (space({"conv1.weight": [(0, torch.arange(6) + 1)]}), "outside"),
        (space({"conv1.weight": [(0, torch.zeros(6))]}), "integer"),
        (space({"conv1.weight": [(0, torch.tensor([0, 1, 2, 0, 1, 2]))]}), "no slice"),
    ]
    for s, match in cases:
        with pytest.raises(OtonasError, match=match):
            DHSPG(s, schedule="half_space", lr=0.1, target_group_sparsity=0.5, warmup_steps=0)
    frozen = tiny_space()
    frozen.model.bn1.weight.requires_grad_(False)
    with pytest.raises(OtonasError, match="bn1.weight.requires_grad"):
        DHSPG(frozen, schedule="half_space", lr=0.1, target_group_sparsity=0.5, warmup_steps=0)
    with pytest.raises(OtonasError, match="one group"):
        DHSPG(tiny_space(), schedule="half_space", lr=0.1, target_group_sparsity=0.5, warmup_steps=0).add_param_group(
            {"params": [torch.zeros(1, requires_grad=True)]})


class _OddNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(4, 3, 5, dtype=torch.float64))
        self.v = torch.nn.Parameter(torch.randn(4, 6, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
        self.free = torch.nn.Parameter(torch.randn(2, dtype=torch.float64))


@pytest.mark.parametrize("host_reads,kernels", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("rule", ["fixed", "schedule"])
def test_any_layout_matches_reference(host_reads: bool, kernels: bool, rule: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Groups on three dims of one tensor, on a last dim, two entries on one dim, ids of -1."""
    if kernels and not _kernels.enabled():
        pytest.skip(f"numba is not usable here: {_kernels._failed}")
    monkeypatch.setattr(_kernels, "enabled", lambda: kernels)
    monkeypatch.setattr(_kernels, "MIN_NUMEL", 0)  # the loops take these small weights too
    torch.manual_seed(0)
    model = _OddNet()
    layout = {
        "w": [(0, torch.tensor([0, 1, 2, 3])), (1, torch.tensor([4, -1, 5])), (2, torch.tensor([6, 6, 7, -1, 7]))],
        "v": [(0, torch.tensor([0, 1, 2, 3])), (1, torch.tensor([8, 8, 9, 9, -1, 4]))],
        "b": [(0, torch.tensor([4, 5, -1])), (0, torch.tensor([9, -1, 8]))],
    }
    space = StubSpace(model, layout, 10)
    kw = dict(lr=0.2, warmup_steps=1, end_step=9)
    opt = DHSPG(space, schedule="half_space", momentum=0.5, weight_decay=1e-2, target_group_sparsity=0.6, lmbda=2.0, epsilon=0.5,
                lambda_rule=rule, **kw)
    opt._host_reads = host_reads
    ref = RefDHSPG(space, k=6, momentum=0.5, weight_decay=1e-2, lmbda=2.0, epsilon=0.5, rule=rule, **kw)
    gen = torch.Generator().manual_seed(1)
    x = params_of(model)
    for t in range(12):
        g = random_grads(model, gen, scale=0.02)
        set_grads(model, g)
        quiet_step(opt)
        x = ref.apply(x, g)
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), x[n], rtol=1e-10, atol=1e-12, msg=f"step {t}, {n}")
        assert set(torch.nonzero(opt._zero[:-1]).flatten().tolist()) == ref.zero, f"step {t}"
        if t == 7:
            natural = len(ref.zero)
    assert len(ref.zero) == 6 and zero_set(opt) >= ref.zero
    assert opt.metrics()["num_forced_groups"] == ref.forced
    if rule == "fixed":
        assert 0 < natural < 6  # some groups reached zero by themselves, the rest were forced
    else:
        assert ref.forced == 0


@pytest.mark.parametrize("n_groups,target", [(0, 0.5), (9, 0.0)])
def test_nothing_to_prune_is_plain_sgd(n_groups: int, target: float) -> None:
    a, b = tiny_space(family=False), tiny_space(family=False)
    if n_groups == 0:
        a = StubSpace(a.model, {}, 0)
    opt = DHSPG(a, schedule="half_space", lr=0.05, momentum=0.9, target_group_sparsity=target, warmup_steps=1, end_step=3)
    ref = torch.optim.SGD(b.model.parameters(), lr=0.05, momentum=0.9, foreach=True)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        g = random_grads(a.model, gen)
        set_grads(a.model, g)
        set_grads(b.model, g)
        opt.step()
        ref.step()
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)
    m = opt.metrics()
    assert m["num_zero_groups"] == 0 and m["target_zero_groups"] == 0 and not m["forced_projection"]


@pytest.mark.parametrize("contiguous", [True, False])
def test_zero_slices_are_cleared_whichever_way_they_are_written(contiguous: bool) -> None:
    """A few slices of an inner dim are written one by one, many through a 0/1 mask: same result."""
    t = torch.randn(5, 12, 3, 2)
    if not contiguous:
        t = t.to(memory_format=torch.channels_last)
    e = Entry(dim=1, index=torch.arange(12), view=(1, 12, 1, 1), pre=5, post=6)
    dead = torch.tensor([2, 7])
    want = t.clone()
    want[:, dead] = 0
    by_index, by_mask = t.clone(), t.clone()
    _fill_zero(by_index, e, dead)
    _fill_zero(by_mask, e, torch.ones(12).index_fill_(0, dead, 0).repeat_interleave(6))
    assert torch.equal(by_index, want) and torch.equal(by_mask, want)


def test_channels_last_parameters_match_contiguous_ones() -> None:
    """Memory format does not change the arithmetic (views of non-contiguous tensors are handled)."""
    kw = dict(lr=0.05, momentum=0.9, weight_decay=1e-2, target_group_sparsity=0.5, warmup_steps=2, end_step=6,
              lmbda=0.5, epsilon=0.05)
    a, b = tiny_space(), tiny_space()
    b.model.to(memory_format=torch.channels_last)
    assert not b.model.conv2.weight.is_contiguous()
    opt_a, opt_b = DHSPG(a, schedule="half_space", **kw), DHSPG(b, schedule="half_space", **kw)
    for s in range(10):
        batch = tiny_batch(seed=s)
        loss_step(a.model, opt_a, batch)
        loss_step(b.model, opt_b, batch)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-9, atol=1e-12)
    assert zero_set(opt_a) == zero_set(opt_b) and len(zero_set(opt_a)) == 5


@pytest.mark.parametrize("schedule", ["progressive", "half_space"])
@pytest.mark.parametrize("wd", [0.0, 1e-3])
def test_small_weights_on_one_flat_buffer_step_as_one_by_one(schedule: str, wd: float,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The small weights' masking and momentum step on one flat buffer (``_flat``) against the same
    optimizer stepping them one by one: the same weights and momentum buffers, bit for bit, through
    the warm-up, the projection (zero groups masked) and after; a step where one weight has no
    gradient (the one-by-one step for all); and a checkpoint loaded into a fresh optimizer."""
    kw = dict(lr=0.05, momentum=0.9, weight_decay=wd, target_group_sparsity=0.5, warmup_steps=3, end_step=9,
              schedule=schedule)
    a, b = tiny_space(), tiny_space()
    flat = DHSPG(a, **kw)  # type: ignore[arg-type]
    plain = DHSPG(b, **kw)  # type: ignore[arg-type]
    monkeypatch.setattr(plain, "_flat_momentum", lambda params, hp: None)
    gen = torch.Generator().manual_seed(4)
    for t in range(14):
        g = random_grads(a.model, gen)
        for m in (a.model, b.model):
            set_grads(m, g)
            if t == 5:
                m.fc.bias.grad = None
        quiet_step(flat)
        quiet_step(plain)
        if t == 1:
            assert flat._flat and flat._flat._buf is not None  # the flat step is taken
        if t == 7:  # a checkpoint, loaded into a fresh optimizer that goes on
            sd = copy.deepcopy(flat.state_dict())
            flat = DHSPG(a, **kw)  # type: ignore[arg-type]
            flat.load_state_dict(sd)
        for (name, x), y in zip(a.model.named_parameters(), b.model.parameters()):
            assert torch.equal(x, y), (t, name)
            bx, by = flat.state[x].get("momentum_buffer"), plain.state[y].get("momentum_buffer")
            assert (bx is None) == (by is None) and (bx is None or torch.equal(bx, by)), (t, name)
    assert flat.zero_groups().sum() == flat.target_zero_groups


# ---------------------------------------------------------------------------- selectors
def test_a_selector_of_ones_own_decides_which_groups_go() -> None:
    """The engine drives exactly the groups a user's ``Selector`` returns to zero, on both
    schedules, and asks it at each selection point (once for the half-space schedule, at every
    period start for the progressive one); budget options beside ``selector=`` are refused."""
    from otonas.optim import Selection, Selector, TopKSelector

    class Fixed(Selector):
        def __init__(self, order: list[int], per_call: int) -> None:
            self.order, self.per_call, self.calls = order, per_call, []
            self.target_zero_groups = per_call

        def select(self, selection: Selection) -> list[int]:
            self.calls.append((selection.period, selection.progressive))
            todo = [g for g in self.order if not selection.zero[g]]
            return todo[: self.per_call]

    for schedule, periods in (("half_space", 1), ("progressive", 3)):
        space = tiny_space()
        sel = Fixed([7, 2, 4, 0, 8, 1], per_call=2 if schedule == "progressive" else 3)
        opt = DHSPG(space, lr=0.05, warmup_steps=2, end_step=8, schedule=schedule, periods=periods, selector=sel)
        assert opt.selector is sel
        x, y = tiny_batch()
        for _ in range(10):
            opt.zero_grad()
            F.cross_entropy(space.model(x), y).backward()
            opt.step()
        want = {7, 2, 4} if schedule == "half_space" else {7, 2, 4, 0, 8, 1}
        assert set(torch.nonzero(opt.zero_groups()).flatten().tolist()) == want
        assert sel.calls == ([(0, False)] if schedule == "half_space" else [(p, True) for p in range(3)])
    with pytest.raises(OtonasError, match="target_flops"):
        DHSPG(tiny_space(), lr=0.1, warmup_steps=1, selector=TopKSelector(target_group_sparsity=0.5), target_flops=0.5)
