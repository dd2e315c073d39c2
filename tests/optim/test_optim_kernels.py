"""The fused CPU loops (otonas.optim._kernels) against the PyTorch formulas they replace."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from typing import Any

import pytest
import torch
from optim_helpers import StubSpace

from otonas.optim import DHSPG, ForcedProjectionWarning, MagnitudeScore, _kernels
from otonas.optim._base import SGDRule

pytestmark = pytest.mark.skipif(not _kernels.enabled(), reason=f"numba is not usable here: {_kernels._failed}")


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Run at 1 and at 2 threads; at 2 even small weights are split into blocks of rows."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    monkeypatch.setattr(_kernels, "_PARALLEL_MIN", 0)
    monkeypatch.setattr(_kernels, "MIN_NUMEL", 0)
    yield request.param
    torch.set_num_threads(before)


def _tol(dtype: torch.dtype) -> dict[str, float]:
    return dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(7, 5, 3, 3), (16, 40), (3, 2, 1, 1), (33, 17, 2, 5)])
@pytest.mark.parametrize("with_abs", [False, True])
def test_stats_are_the_row_and_channel_sums(shape: tuple[int, ...], dtype: torch.dtype, with_abs: bool,
                                            threads: int) -> None:
    g = torch.Generator().manual_seed(0)
    x, d = (torch.randn(shape, generator=g, dtype=dtype) for _ in range(2))
    post = x[0, 0].numel()
    rows, cols = _kernels.stats(x, d, post, with_abs=with_abs)
    prods = [x * d, x * x, d * d] + ([x.abs()] if with_abs else [])
    want_rows = torch.stack([p.reshape(shape[0], -1).sum(1) for p in prods])
    want_cols = torch.stack([p.reshape(shape[0], shape[1], -1).sum((0, 2)) for p in prods])
    torch.testing.assert_close(rows, want_rows, **_tol(dtype))
    torch.testing.assert_close(cols, want_cols, **_tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_abs", [True, False])
def test_stats_without_a_direction_are_the_weights_sums(dtype: torch.dtype, with_abs: bool, threads: int) -> None:
    """``d=None``: the sums of x² (and |x|) as with a direction, the sums with d zero."""
    g = torch.Generator().manual_seed(3)
    x, d = (torch.randn(12, 6, 3, 3, generator=g, dtype=dtype) for _ in range(2))
    rows, cols = _kernels.stats(x, None, 9, with_abs=with_abs)
    want_rows, want_cols = _kernels.stats(x, d, 9, with_abs=with_abs)
    weights = [1, 3] if with_abs else [1]
    torch.testing.assert_close(rows[weights], want_rows[weights], **_tol(dtype))
    torch.testing.assert_close(cols[weights], want_cols[weights], **_tol(dtype))
    torch.testing.assert_close(rows[1], (x * x).sum((1, 2, 3)), **_tol(dtype))
    assert (rows[[0, 2]] == 0).all() and (cols[[0, 2]] == 0).all()
    with pytest.raises(ValueError, match="momentum buffer"):
        _kernels.stats(x, None, 9, with_abs=False, sgd=(d, 0.9, 0.0, 0.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dampening,wd", [(0.0, 0.0), (0.0, 1e-2), (0.3, 1e-3)])
def test_stats_update_sgd_momentum_as_sgd_rule_does(dtype: torch.dtype, dampening: float, wd: float,
                                                     threads: int) -> None:
    g = torch.Generator().manual_seed(1)
    x, grad, buf = (torch.randn(12, 6, 3, 3, generator=g, dtype=dtype) for _ in range(3))
    want = buf.clone()
    SGDRule().directions([x], [grad], [{"momentum_buffer": want}],
                         dict(weight_decay=wd, momentum=0.9, nesterov=False, dampening=dampening))
    rows, cols = _kernels.stats(x, buf, 9, with_abs=False, sgd=(grad, 0.9, dampening, wd))
    torch.testing.assert_close(buf, want, **_tol(dtype))
    torch.testing.assert_close(rows[0], (x * want).sum((1, 2, 3)), **_tol(dtype))
    torch.testing.assert_close(cols[2], (want * want).sum((0, 2, 3)), **_tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stats_with_masks_update_momentum_as_from_the_masked_gradient(dtype: torch.dtype, threads: int) -> None:
    """``alive``: the gradient's entries in dead rows and columns taken as zero inside the loop, the
    same buffer and sums, bit for bit, as the loop on a gradient masked beforehand."""
    g = torch.Generator().manual_seed(2)
    x, grad, buf = (torch.randn(12, 6, 3, 3, generator=g, dtype=dtype) for _ in range(3))
    row_alive = torch.rand(12, generator=g) > 0.3
    col_alive = (torch.rand(6, generator=g) > 0.3).repeat_interleave(9)
    x[~row_alive] = 0
    x.view(12, -1)[:, ~col_alive] = 0
    masked = grad.clone()
    masked[~row_alive] = 0
    masked.view(12, -1)[:, ~col_alive] = 0
    want = buf.clone()
    want_rows, want_cols = _kernels.stats(x, want, 9, with_abs=True, sgd=(masked, 0.9, 0.3, 1e-2))
    rows, cols = _kernels.stats(x, buf, 9, with_abs=True, sgd=(grad, 0.9, 0.3, 1e-2), alive=(row_alive, col_alive))
    assert torch.equal(buf, want) and torch.equal(rows, want_rows) and torch.equal(cols, want_cols)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_d", [True, False])
@pytest.mark.parametrize("shape", [(7, 5, 3, 3), (16, 40)])
def test_step_is_the_shrink_and_base_step_with_cross_sums(dtype: torch.dtype, with_d: bool,
                                                          shape: tuple[int, ...], threads: int) -> None:
    g = torch.Generator().manual_seed(2)
    x, d = (torch.randn(shape, generator=g, dtype=dtype) for _ in range(2))
    o, i = shape[:2]
    post = x[0, 0].numel()
    c0, c = torch.rand(o, generator=g, dtype=dtype), torch.rand(i, generator=g, dtype=dtype)
    u0, v = 1 - 0.1 * c0, -0.1 * c
    factor = u0.view((o,) + (1,) * (len(shape) - 1)) + v.view((1, i) + (1,) * (len(shape) - 2))
    want_x = x * factor - (0.1 * d if with_d else 0)
    xx = x * x
    cw = c.view((1, i) + (1,) * (len(shape) - 2))
    want_rows = (xx * cw).reshape(o, -1).sum(1)
    want_cols = (xx * c0.view((o,) + (1,) * (len(shape) - 1))).reshape(o, i, -1).sum((0, 2))
    rows, cols = _kernels.step(x, d if with_d else None, u0, v, c0, c, 0.1, post)
    torch.testing.assert_close(x, want_x, **_tol(dtype))
    torch.testing.assert_close(rows, want_rows, **_tol(dtype))
    torch.testing.assert_close(cols, want_cols, **_tol(dtype))


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(3, 128, 3)
        self.b = torch.nn.Conv2d(128, 96, 3)  # 110,592 elements: above a PyTorch block


def _space(model: _Net) -> StubSpace:
    a, b = torch.arange(128), torch.arange(128, 224)
    return StubSpace(model, {"a.weight": [(0, a)], "a.bias": [(0, a)], "b.weight": [(0, b), (1, a)],
                             "b.bias": [(0, b)]}, 224)


def _run(kernels: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, torch.Tensor], set[int]]:
    monkeypatch.setattr(_kernels, "enabled", lambda: kernels)
    torch.manual_seed(0)
    model = _Net()
    opt = DHSPG(_space(model), lr=0.05, momentum=0.9, weight_decay=1e-3, target_group_sparsity=0.5, lmbda=3.0,
                warmup_steps=2, end_step=12)
    gen = torch.Generator().manual_seed(3)
    for _ in range(14):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen) * 0.05
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ForcedProjectionWarning)
            opt.step()
    zero = set(torch.nonzero(opt.zero_groups()).flatten().tolist())
    return {n: p.detach().clone() for n, p in model.named_parameters()}, zero


def test_dhspg_in_float32_agrees_with_the_pytorch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A float32 model with a weight larger than a PyTorch block: the loops and the PyTorch
    calls zero the same groups and end in the same weights, up to float32 rounding."""
    fast, zero_fast = _run(True, monkeypatch)
    slow, zero_slow = _run(False, monkeypatch)
    assert zero_fast == zero_slow and len(zero_fast) == 112
    for n in fast:
        torch.testing.assert_close(fast[n], slow[n], rtol=1e-4, atol=1e-6, msg=n)


def _python(code: str, **env: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_loops_leave_pytorch_thread_count_alone() -> None:
    """numba's first parallel launch sets the OpenMP thread count that PyTorch shares (to
    numba's own count, the number of cores); PyTorch's count is put back. At 1 thread the
    loops never open a parallel region."""
    code = ("import torch\n"
            "from otonas.optim import _kernels\n"
            "x = torch.randn(512, 300)\n"
            "out = []\n"
            "for n in (1, 3, 2, 1):\n"
            "    torch.set_num_threads(n)\n"
            "    _kernels.stats(x, x.clone(), 1, with_abs=False)\n"
            "    out.append(torch.get_num_threads())\n"
            "print(out)")
    assert _python(code) == "[1, 3, 2, 1]"


def test_otonas_kernels_0_turns_the_loops_off() -> None:
    code = "from otonas.optim import _kernels; print(_kernels.enabled())"
    assert _python(code, OTONAS_KERNELS="0") == "False"
    assert _python(code) == "True"


class _Lines(torch.nn.Module):
    """Weights grouped along rows only, columns only, both, and two entries on one dim."""

    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Parameter(torch.randn(6, 4, dtype=torch.float64))
        self.down = torch.nn.Parameter(torch.randn(3, 6, 2, dtype=torch.float64))
        self.both = torch.nn.Parameter(torch.randn(6, 6, 3, dtype=torch.float64))
        self.free = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))


@pytest.mark.parametrize("momentum", [0.9, 0.0])
@pytest.mark.parametrize("rule", ["fixed", "schedule"])
def test_rows_only_and_columns_only_weights_match_reference(momentum: float, threads: int, rule: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from optim_helpers import RefDHSPG, params_of, random_grads

    torch.manual_seed(0)
    model = _Lines()
    h = torch.arange(6)
    layout = {"up": [(0, h)], "down": [(1, h)],
              "both": [(0, h + 6), (1, h), (0, torch.tensor([12, 12, 13, 13, -1, 14]))]}
    space = StubSpace(model, layout, 15)
    fused: list[dict] = []
    real = DHSPG._fusable
    monkeypatch.setattr(DHSPG, "_fusable", lambda self, *a: fused.append(r := real(self, *a)) or r)
    kw = dict(lr=0.2, warmup_steps=1, end_step=9)
    opt = DHSPG(space, schedule="half_space", momentum=momentum, weight_decay=1e-2, target_group_sparsity=0.5,
                lmbda=2.0, epsilon=0.3, lambda_rule=rule, **kw)
    ref = RefDHSPG(space, k=opt.target_zero_groups, momentum=momentum, weight_decay=1e-2,
                   lmbda=2.0, epsilon=0.3, rule=rule, **kw)
    gen = torch.Generator().manual_seed(1)
    x = params_of(model)
    for t in range(12):
        g = random_grads(model, gen, scale=0.05)
        for n, p in model.named_parameters():
            p.grad = g[n].clone()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ForcedProjectionWarning)
            opt.step()
        x = ref.apply(x, g)
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), x[n], rtol=1e-10, atol=1e-12, msg=f"step {t}, {n}")
        assert set(torch.nonzero(opt._zero[:-1]).flatten().tolist()) == ref.zero, f"step {t}"
    assert any(fused) == (momentum > 0)


def test_without_a_disk_cache_the_loops_still_compile() -> None:
    """numba refuses ``cache=True`` where it finds no writable place (a read-only install):
    the loops are then compiled without it."""
    code = ("import numba, torch\n"
            "real = numba.njit\n"
            "def njit(*a, **k):\n"
            "    if k.get('cache'):\n"
            "        raise RuntimeError('cannot cache function: no locator available')\n"
            "    return real(*a, **k)\n"
            "numba.njit = njit\n"
            "from otonas.optim import _kernels\n"
            "x = torch.randn(6, 5)\n"
            "rows, cols = _kernels.stats(x, x.clone(), 1, with_abs=False)\n"
            "print(_kernels.enabled(), torch.allclose(rows[1], (x * x).sum(1)))")
    assert _python(code) == "True True"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(7, 5, 3, 3), (16, 40)])
@pytest.mark.parametrize("factor", [0.75, 0.0, 1.0])
@pytest.mark.parametrize("update", [True, False])
def test_sgd_step_is_the_masked_momentum_step_and_the_shrink(dtype: torch.dtype, shape: tuple[int, ...],
                                                             factor: float, update: bool, threads: int) -> None:
    g = torch.Generator().manual_seed(4)
    x, grad, buf = (torch.randn(shape, generator=g, dtype=dtype) for _ in range(3))
    o, i = shape[:2]
    post = x[0, 0].numel()
    row_alive, col_alive = torch.rand(o, generator=g) > 0.3, torch.rand(i, generator=g) > 0.3
    row_count = torch.randint(0, 3, (o,), generator=g)
    col_count = torch.randint(0, 2, (i,), generator=g).repeat_interleave(post)
    col_alive = col_alive.repeat_interleave(post)
    for t in (x, buf):  # a zero group's slices are zero in x and in its momentum
        t[~row_alive] = 0
        t.view(o, -1)[:, ~col_alive] = 0
    # A zero group's gradient may be anything, NaN and inf too: the loop must never let it reach x or
    # its momentum (as masking it would not).
    grad[~row_alive] = math.nan
    grad.view(o, -1)[:, ~col_alive] = math.inf
    want_x, want_b = x.clone(), buf.clone()
    if update:  # the reference: mask the gradient, SGDRule, the base step, the factors one dim at a time
        masked = grad.clone()
        masked[~row_alive] = 0
        masked.view(o, -1)[:, ~col_alive] = 0
        SGDRule().directions([want_x], [masked], [{"momentum_buffer": want_b}],
                             dict(weight_decay=1e-2, momentum=0.9, nesterov=False, dampening=0.3))
    want_x.add_(want_b, alpha=-0.1)
    rs = torch.tensor(factor, dtype=dtype) ** row_count.to(dtype)
    cs = torch.tensor(factor, dtype=dtype) ** col_count.to(dtype)
    want_x.mul_(rs.view((o,) + (1,) * (len(shape) - 1)))
    want_x.view(o, -1).mul_(cs)
    f = rs.view(-1, 1) * cs * col_alive
    want_b.view(o, -1)[f == 0] = 0  # shrunk to zero: no momentum left
    _kernels.sgd_step(x, grad if update else None, buf, row_alive, row_count, col_alive, col_count, factor,
                      momentum=0.9, dampening=0.3, weight_decay=1e-2, lr=0.1)
    torch.testing.assert_close(x, want_x, **_tol(dtype))
    torch.testing.assert_close(buf, want_b, **_tol(dtype))
    assert (x[~row_alive] == 0).all() and (x.view(o, -1)[:, ~col_alive] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(7, 5, 3, 3), (16, 40)])
@pytest.mark.parametrize("factor", [0.75, 0.0])
def test_sgd_step_sums_are_the_stats_of_the_new_weights(dtype: torch.dtype, shape: tuple[int, ...], factor: float,
                                                        threads: int) -> None:
    """``sgd_step(post=)``: the same step, and the new weight's sums (x², |x|; those with d zero)
    as ``stats(x, None)`` reads them from the written weight."""
    g = torch.Generator().manual_seed(5)
    x, grad, buf = (torch.randn(shape, generator=g, dtype=dtype) for _ in range(3))
    o, i = shape[:2]
    post = x[0, 0].numel()
    row_alive = torch.rand(o, generator=g) > 0.3
    col_alive = (torch.rand(i, generator=g) > 0.3).repeat_interleave(post)
    row_count = torch.randint(0, 3, (o,), generator=g)
    col_count = torch.randint(0, 2, (i,), generator=g).repeat_interleave(post)
    for t in (x, buf):
        t[~row_alive] = 0
        t.view(o, -1)[:, ~col_alive] = 0
    x2, buf2 = x.clone(), buf.clone()
    args = (row_alive, row_count, col_alive, col_count, factor)
    opts = dict(momentum=0.9, dampening=0.0, weight_decay=1e-3, lr=0.1)
    assert _kernels.sgd_step(x, grad, buf, *args, **opts) is None
    got = _kernels.sgd_step(x2, grad, buf2, *args, **opts, post=post)
    assert got is not None
    torch.testing.assert_close(x2, x, rtol=0, atol=0)  # the step itself is the same
    torch.testing.assert_close(buf2, buf, rtol=0, atol=0)
    want = _kernels.stats(x, None, post, with_abs=True)
    for have, ref in zip(got, want):
        assert have.shape == ref.shape
        torch.testing.assert_close(have, ref, **_tol(dtype))
    assert (got[0][[0, 2]] == 0).all() and (got[1][[0, 2]] == 0).all()


def _progressive_run(kernels: bool, monkeypatch: pytest.MonkeyPatch, dampening: float, periods: int,
                     calls: list[int], score: Any = None,
                     ) -> list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], set[int]]]:
    """Steps of a progressive DHSPG on ``_Lines`` (rows only, columns only, both, two entries on one
    dim): the parameters, momentum buffers and zero groups after each."""
    monkeypatch.setattr(_kernels, "enabled", lambda: kernels)
    real = _kernels.SGDCall.__call__
    monkeypatch.setattr(_kernels.SGDCall, "__call__", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    model = _Lines()
    h = torch.arange(6)
    layout = {"up": [(0, h)], "down": [(1, h)],
              "both": [(0, h + 6), (1, h), (0, torch.tensor([12, 12, 13, 13, -1, 14]))]}
    opt = DHSPG(StubSpace(model, layout, 15), lr=0.2, momentum=0.9, dampening=dampening, weight_decay=1e-2,
                target_group_sparsity=0.6, keep_one_per_family=False, warmup_steps=2, end_step=11, periods=periods,
                **({} if score is None else {"score": score}))
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(15):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.05
        with warnings.catch_warnings():
            warnings.simplefilter("error", ForcedProjectionWarning)
            opt.step()
        out.append(({n: p.detach().clone() for n, p in model.named_parameters()},
                    {n: opt.state[p]["momentum_buffer"].clone() for n, p in model.named_parameters()},
                    set(torch.nonzero(opt.zero_groups()).flatten().tolist())))
    return out


@pytest.mark.parametrize("dampening,periods", [(0.0, 3), (0.3, 4)])
def test_progressive_steps_in_one_loop_match_the_pytorch_path(dampening: float, periods: int, threads: int,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The progressive schedule with its steps in ``_kernels.sgd_step`` (``SGDCall``: masking, momentum step and
    shrink in one pass; at period starts after the statistics loop) against the PyTorch calls
    (masked gradients, SGDRule, the base step, the shrink lists): the same parameters, momentum
    buffers and zero groups after every step, through the window and after it."""
    calls: list[int] = []
    fast = _progressive_run(True, monkeypatch, dampening, periods, calls)
    assert calls  # the loop was used
    slow = _progressive_run(False, monkeypatch, dampening, periods, calls := [])
    assert not calls
    for t, ((xf, bf, zf), (xs, bs, zs)) in enumerate(zip(fast, slow)):
        assert zf == zs, f"step {t}"
        for n in xf:
            torch.testing.assert_close(xf[n], xs[n], rtol=1e-10, atol=1e-12, msg=f"step {t}, {n}")
            torch.testing.assert_close(bf[n], bs[n], rtol=1e-10, atol=1e-12, msg=f"step {t}, momentum of {n}")
    assert len(fast[-1][2]) >= 9  # round(15 · 0.6) selected (a group whose slices others cover is zero too)


def test_prepared_fused_steps_follow_new_storage_of_weights_and_buffers(threads: int) -> None:
    """DHSPG keeps each fused weight's prepared call (``_kernels.SGDCall``: numpy views of the weight
    and its momentum). When a weight gets new storage (``p.data = ...``) or its buffer is replaced
    (a loaded state), the next step must use the new tensors: the run equals one whose tensors
    were never swapped, step by step."""
    runs = []
    for swap in (False, True):
        torch.manual_seed(0)
        model = _Lines()
        h = torch.arange(6)
        layout = {"up": [(0, h)], "down": [(1, h)],
                  "both": [(0, h + 6), (1, h), (0, torch.tensor([12, 12, 13, 13, -1, 14]))]}
        opt = DHSPG(StubSpace(model, layout, 15), lr=0.2, momentum=0.9, weight_decay=1e-2, target_group_sparsity=0.6,
                    keep_one_per_family=False, warmup_steps=2, end_step=11, periods=3)
        gen = torch.Generator().manual_seed(1)
        out = []
        for t in range(15):
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.05
            if swap and t in (5, 9, 12):  # mid-period, the period after, after the window
                for p in model.parameters():
                    p.data = p.data.clone()
                    opt.state[p]["momentum_buffer"] = opt.state[p]["momentum_buffer"].clone()
            with warnings.catch_warnings():
                warnings.simplefilter("error", ForcedProjectionWarning)
                opt.step()
            out.append([p.detach().clone() for p in model.parameters()]
                       + [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()])
        assert opt._sgd_calls  # the prepared calls were used
        runs.append(out)
    for t, (a, b) in enumerate(zip(*runs)):
        for u, v in zip(a, b):
            assert torch.equal(u, v), f"step {t}"


class _MagnitudeAfterTheDirections(MagnitudeScore):
    """The magnitude score, but claiming to read the directions: the period start's selection then
    comes after the directions, as for any score that needs them (the reference path)."""

    needs_direction = True


@pytest.mark.parametrize("kernels", [True, False], ids=["loops", "pytorch"])
@pytest.mark.parametrize("periods", [3, 4])
def test_a_weights_only_score_selects_before_the_step_with_the_same_result(
        kernels: bool, periods: int, threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A score that reads only the weights (``needs_direction = False``: magnitude, norm_affine)
    has a period start's groups chosen before that step, from the weights alone, and the step
    then taken like the period's other steps (one fused pass with the loops): the same zero
    groups after every step, parameters and momentum buffers equal, as the selection made after
    the directions (the path of a score that reads them)."""
    seen: list[bool] = []
    real = DHSPG._selection_stats

    def spy(self: DHSPG, *a: Any, with_direction: bool = True, **k: Any) -> Any:
        seen.append(with_direction)
        return real(self, *a, with_direction=with_direction, **k)

    monkeypatch.setattr(DHSPG, "_selection_stats", spy)
    early = _progressive_run(kernels, monkeypatch, 0.0, periods, calls := [], score=MagnitudeScore())
    assert seen == [False] * periods  # every period start selected from the weights alone
    if kernels:
        assert len(calls) > 0
    seen.clear()
    late = _progressive_run(kernels, monkeypatch, 0.0, periods, [], score=_MagnitudeAfterTheDirections())
    assert seen == [True] * periods
    for t, ((xe, be, ze), (xl, bl, zl)) in enumerate(zip(early, late)):
        assert ze == zl, f"step {t}"
        for n in xe:
            torch.testing.assert_close(xe[n], xl[n], rtol=1e-10, atol=1e-12, msg=f"step {t}, {n}")
            torch.testing.assert_close(be[n], bl[n], rtol=1e-10, atol=1e-12, msg=f"step {t}, momentum of {n}")
    assert len(early[-1][2]) >= 9


@pytest.mark.parametrize("periods", [3, 4])
def test_period_start_sums_from_the_step_before_are_those_read_afresh(
        periods: int, threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A weights-only score's period start reads the sums the fused loop of the step before took of
    the weights it wrote (no statistics pass over those weights): the same zero groups after every
    step, parameters equal, as reading them again; a weight changed in place since is read again."""
    used: list[int] = []
    real = DHSPG._presum

    def spy(self: DHSPG, position: int, x: torch.Tensor) -> Any:
        got = real(self, position, x)
        used.append(got is not None)
        return got

    monkeypatch.setattr(DHSPG, "_presum", spy)
    reused = _progressive_run(True, monkeypatch, 0.0, periods, [], score=MagnitudeScore())
    assert sum(used) > 0 and not all(used)  # later period starts reuse; the first has no step before it
    monkeypatch.setattr(DHSPG, "_presum", lambda self, position, x: None)
    fresh = _progressive_run(True, monkeypatch, 0.0, periods, [], score=MagnitudeScore())
    for t, ((xr, br, zr), (xf, bf, zf)) in enumerate(zip(reused, fresh)):
        assert zr == zf, f"step {t}"
        for n in xr:
            torch.testing.assert_close(xr[n], xf[n], rtol=1e-10, atol=1e-12, msg=f"step {t}, {n}")


def test_period_start_sums_are_dropped_when_the_weight_changed(threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sums kept for a period start are not used for a weight written in place after the step
    that took them (a new version), nor for another step than the one they were taken for."""
    monkeypatch.setattr(_kernels, "enabled", lambda: True)
    torch.manual_seed(0)
    model = _Lines()
    h = torch.arange(6)
    layout = {"up": [(0, h)], "down": [(1, h)], "both": [(0, h + 6), (1, h)]}
    opt = DHSPG(StubSpace(model, layout, 12), lr=0.2, momentum=0.9, weight_decay=1e-2, target_group_sparsity=0.5,
                keep_one_per_family=False, warmup_steps=2, end_step=8, periods=3, score=MagnitudeScore())
    params = opt.param_groups[0]["params"]
    gen = torch.Generator().manual_seed(1)
    kept = None
    for _ in range(8):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.05
        opt.step()
        if opt._presums is not None:
            kept = opt._presums
            break
    assert kept is not None, "no step kept sums for a period start"
    pos = next(iter(kept[1]))
    x = params[pos]
    rows, cols = opt._presum(pos, x)
    want = _kernels.stats(x, None, math.prod(x.shape[2:]), with_abs=True)
    torch.testing.assert_close(rows, want[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cols, want[1], rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        x.mul_(2.0)
    assert opt._presum(pos, x) is None
    opt._presums = (kept[0] + 1, kept[1])
    with torch.no_grad():
        x.div_(2.0)
    assert opt._presum(pos, x) is None
