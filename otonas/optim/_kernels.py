"""Fused CPU loops for the two passes of a projection step over a conv / linear weight.

A weight grouped along its output and input channels (dims 0 and 1) is seen as a matrix
``[O, M]`` (``M`` = input channels × kernel elements). A projection step needs, per row and
per column, the sums of x·d, x² and d² (:func:`stats`), and then the step itself, with the
sums of x² weighted by the other dim's coefficients (:func:`step`). Written with PyTorch
calls, each sum is a separate pass (a product, then a matrix-vector product) and a weight
is read several times; here each of the two is one loop over the weight, compiled by numba,
that reads it once (the row's reductions and the columns' running sums are taken while the
row is in cache). On ResNet-50 this makes the projection step about as fast as the plain
step plus two passes over the weights (see ``docs/optim.md``, Cost).

numba is a dependency, but the optimizers do not need it: where it does not import (or with
``OTONAS_KERNELS=0`` in the environment) they use the PyTorch path in ``_layout.block_sums`` and ``DHSPG._step_in_blocks``,
which computes the same sums (summed in another order, so the last bits differ). The loops
are compiled on first use (about 4 s per dtype) and cached on disk by numba (compiled again in
each process where numba finds no writable place for its cache).
Only contiguous float32 / float64 tensors on the CPU come here; elsewhere the PyTorch path runs.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["enabled", "usable", "stats", "step", "sgd_step", "SGDCall"]

_FLAGS = {"reassoc", "contract"}  # reorder sums so that they vectorize; keep NaN / inf semantics
_jit: Any = None  # the loops (see _define), once loaded
_failed: str | None = None  # why numba could not be used, if it could not


def enabled() -> bool:
    """Whether the fused loops are used: numba imports and ``OTONAS_KERNELS`` was not ``0`` when
    first asked (the answer is kept for the process)."""
    global _state
    if _state is None:
        _state = False
        if os.environ.get("OTONAS_KERNELS", "1") != "0":
            try:
                _run(_load)  # loading the parallel loops may start numba's threads
                _state = True
            except Exception as e:  # noqa: BLE001 - numba missing or broken: the PyTorch path runs
                global _failed
                _failed = f"{type(e).__name__}: {e}"
    return _state


def usable(x: Tensor, *others: Tensor | None) -> bool:
    """Whether these tensors can go through the loops: CPU, contiguous, all of ``x``'s float dtype."""
    return (x.is_cpu and x.dtype in _DTYPES and x.is_contiguous()
            and all(t is None or (t.is_cpu and t.dtype == x.dtype and t.is_contiguous()) for t in others)
            and enabled())


_DTYPES = (torch.float32, torch.float64)
MIN_NUMEL = 4096
"""Smaller weights take the PyTorch path: for them a call's fixed cost (about 20 µs) outweighs
the passes it saves (measured on the DARTS supernet, 3,447 tensors, most of a few hundred elements)."""
_state: bool | None = None  # enabled(), once known


def _load() -> None:
    global _jit
    try:
        _jit = _define(cache=True)
    except RuntimeError:  # numba found no writable place for its cache: compile in each process
        _jit = _define(cache=False)


def _define(cache: bool) -> tuple[Any, ...]:
    """The loops, compiled on their first call; ``cache``: machine code kept on disk by numba."""
    import numba

    jit = numba.njit(fastmath=_FLAGS, nogil=True, cache=cache)

    @jit
    def abs_sums(xo: Any, rows: Any, cols: Any, o: int, m: int) -> None:  # pragma: no cover - compiled
        """Row ``o`` (``xo``): the sum of |x| into ``rows[3, o]``, its entries added to ``cols[3]``."""
        sab = rows[3, o]  # zero of x's dtype
        for j in range(m):
            a = abs(xo[j])
            sab += a
            cols[3, j] += a
        rows[3, o] = sab

    @jit
    def stats_rows(x: Any, d: Any, g: Any, momentum: Any, damp1: Any, wd: Any, update: bool, with_abs: bool,
                   masked: bool, with_d: bool, row_alive: Any, col_alive: Any, rows: Any, cols: Any, lo: int,
                   hi: int) -> None:  # pragma: no cover - compiled
        """Rows lo..hi: their sums into ``rows``, their share of the column sums added to ``cols``
        (``with_d`` false: the sums of x² and |x| only, d unread, the others left at zero)."""
        m = x.shape[1]
        if not with_d:
            for o in range(lo, hi):
                xo = x[o]
                sxx = rows[1, o]  # zero of x's dtype
                for j in range(m):
                    a = xo[j]
                    sxx += a * a
                rows[1, o] = sxx
                for j in range(m):
                    a = xo[j]
                    cols[1, j] += a * a
                if with_abs:
                    abs_sums(xo, rows, cols, o, m)
            return
        nil = momentum - momentum  # 0 in x's dtype: a masked gradient entry
        for o in range(lo, hi):
            xo, do, go = x[o], d[o], g[o]
            if update and masked and not row_alive[o]:  # a zero group's row: its gradient taken as zero
                for j in range(m):
                    do[j] = momentum * do[j] + damp1 * (nil + wd * xo[j])
            elif update and masked:
                for j in range(m):
                    gj = go[j] if col_alive[j] else nil
                    do[j] = momentum * do[j] + damp1 * (gj + wd * xo[j])
            elif update:  # d is SGD's momentum buffer: d ← momentum·d + (1 − dampening)·(g + wd·x)
                for j in range(m):
                    do[j] = momentum * do[j] + damp1 * (go[j] + wd * xo[j])
            sxd, sxx, sdd = rows[0, o], rows[1, o], rows[2, o]  # zeros of x's dtype
            for j in range(m):
                a, b = xo[j], do[j]
                sxd += a * b
                sxx += a * a
                sdd += b * b
            rows[0, o], rows[1, o], rows[2, o] = sxd, sxx, sdd
            for j in range(m):
                a, b = xo[j], do[j]
                cols[0, j] += a * b
                cols[1, j] += a * a
                cols[2, j] += b * b
            if with_abs:
                abs_sums(xo, rows, cols, o, m)

    @jit
    def step_rows(x: Any, d: Any, has_d: bool, u0: Any, v1: Any, c0: Any, c1: Any, lr: Any, rowc: Any,
                  colc: Any, lo: int, hi: int) -> None:  # pragma: no cover - compiled
        """Rows lo..hi: the step, their cross sums into ``rowc``, their share added to ``colc``."""
        m = x.shape[1]
        for o in range(lo, hi):
            xo, do = x[o], d[o]
            co, uo, s = c0[o], u0[o], rowc[o]  # rowc arrives zeroed
            for j in range(m):
                a = xo[j]
                s += c1[j] * (a * a)
            rowc[o] = s
            for j in range(m):
                a = xo[j]
                colc[j] += co * (a * a)
            if has_d:
                for j in range(m):
                    xo[j] = xo[j] * (uo + v1[j]) - lr * do[j]
            else:
                for j in range(m):
                    xo[j] = xo[j] * (uo + v1[j])

    # One block of rows per thread, each with its own column sums (``cols[b]``, ``colc[b]``).
    # A single block is run without a parallel region: an OpenMP barrier waiting for an idle
    # worker thread that another process holds the core of costs milliseconds.
    @numba.njit(fastmath=_FLAGS, nogil=True, cache=cache, parallel=True)
    def stats_blocks(x: Any, d: Any, g: Any, momentum: Any, damp1: Any, wd: Any, update: bool, with_abs: bool,
                     masked: bool, with_d: bool, row_alive: Any, col_alive: Any, rows: Any,
                     cols: Any) -> None:  # pragma: no cover - compiled
        n, chunks = x.shape[0], cols.shape[0]
        for b in numba.prange(chunks):
            stats_rows(x, d, g, momentum, damp1, wd, update, with_abs, masked, with_d, row_alive, col_alive, rows,
                       cols[b],
                       b * n // chunks, (b + 1) * n // chunks)

    @numba.njit(fastmath=_FLAGS, nogil=True, cache=cache, parallel=True)
    def step_blocks(x: Any, d: Any, has_d: bool, u0: Any, v1: Any, c0: Any, c1: Any, lr: Any, rowc: Any,
                    colc: Any) -> None:  # pragma: no cover - compiled
        n, chunks = x.shape[0], colc.shape[0]
        for b in numba.prange(chunks):
            step_rows(x, d, has_d, u0, v1, c0, c1, lr, rowc, colc[b], b * n // chunks, (b + 1) * n // chunks)

    @jit
    def sgd_rows(x: Any, g: Any, b: Any, row_alive: Any, row_count: Any, col_alive: Any, col_count: Any,
                 factor: Any, momentum: Any, damp1: Any, wd: Any, lr: Any, update: bool, cs: Any, zc: Any,
                 with_sums: bool, rows: Any, cols: Any, lo: int, hi: int) -> None:  # pragma: no cover - compiled
        """Rows lo..hi: SGD's momentum step on the live elements, then the shrink factors
        (``with_sums``: the new x's sums of x² and |x| per row into ``rows[1]`` / ``rows[3]``, its
        entries added to ``cols[1]`` / ``cols[3]``, as ``stats_rows`` without d gives them)."""
        m = x.shape[1]
        one = factor - factor + 1  # in x's dtype
        zero = one - one
        odd = False  # some column dead or shrunk (else the row's factor alone: the plainer loop)
        nz = 0  # the columns whose factor is 0 (dead, or shrunk to zero now): zc[:nz]
        for j in range(m):
            c = one
            for _ in range(col_count[j]):
                c *= factor
            c = c if col_alive[j] else zero  # a dead column: zero gradient, as if masked
            cs[j] = c
            odd = odd or c != one
            if c == zero:
                zc[nz] = j
                nz += 1
        for o in range(lo, hi):
            if not row_alive[o]:
                continue  # a zero group's row: x and its momentum are zero and stay so (its sums too)
            rs = one
            for _ in range(row_count[o]):
                rs *= factor
            xo, go, bo = x[o], g[o], b[o]
            if rs == 0:  # shrunk to zero (a period's last step): x and its momentum
                for j in range(m):
                    xo[j] = zero
                    bo[j] = zero
                continue
            if not odd:  # every column live and unshrunk: no test per element
                if update:
                    for j in range(m):
                        v = momentum * bo[j] + damp1 * (go[j] + wd * xo[j])
                        xo[j] = (xo[j] - lr * v) * rs
                        bo[j] = v
                else:
                    for j in range(m):
                        xo[j] = (xo[j] - lr * bo[j]) * rs
            elif update:
                # The step times each column's factor, with no select (a loop with selects stays
                # scalar, 2.4x slower); then the columns whose factor is 0 are set to exactly zero,
                # x and its momentum, whatever the step wrote there: a dead column's gradient (NaN
                # even) never reaches them, as if masked.
                for j in range(m):
                    v = momentum * bo[j] + damp1 * (go[j] + wd * xo[j])
                    xo[j] = (xo[j] - lr * v) * (rs * cs[j])
                    bo[j] = v
                for k in range(nz):
                    xo[zc[k]] = zero
                    bo[zc[k]] = zero
            else:
                for j in range(m):
                    f = rs * cs[j]
                    v = bo[j]
                    xo[j] = (xo[j] - lr * v) * f
                    bo[j] = v if f != 0 else zero
            if with_sums:  # the row just written, still in cache
                sxx = rows[1, o]
                for j in range(m):
                    a = xo[j]
                    sxx += a * a
                    cols[1, j] += a * a
                rows[1, o] = sxx
                abs_sums(xo, rows, cols, o, m)

    @numba.njit(fastmath=_FLAGS, nogil=True, cache=cache, parallel=True)
    def sgd_blocks(x: Any, g: Any, b: Any, row_alive: Any, row_count: Any, col_alive: Any, col_count: Any,
                   factor: Any, momentum: Any, damp1: Any, wd: Any, lr: Any, update: bool,
                   cs: Any, zc: Any, with_sums: bool, rows: Any, cols: Any) -> None:  # pragma: no cover - compiled
        n, chunks = x.shape[0], cs.shape[0]
        for c in numba.prange(chunks):
            sgd_rows(x, g, b, row_alive, row_count, col_alive, col_count, factor, momentum, damp1, wd, lr, update,
                     cs[c], zc[c], with_sums, rows, cols[c] if with_sums else cols[0], c * n // chunks, (c + 1) * n // chunks)

    return stats_rows, step_rows, stats_blocks, step_blocks, sgd_rows, sgd_blocks


def _loops() -> Any:
    if not enabled():
        raise RuntimeError(f"otonas' fused loops are off (OTONAS_KERNELS=0 or numba unusable: {_failed}); "
                           "check _kernels.usable() first")
    return _jit


def _np(t: Tensor) -> Any:
    return t.detach().numpy()


def _run(loop: Any, *args: Any) -> None:
    """Call ``loop`` (loading the loops, a parallel loop, numba's thread setting): starting
    numba's OpenMP layer sets the OpenMP thread count that PyTorch shares to numba's (the number
    of cores), so PyTorch's count is put back."""
    threads = torch.get_num_threads()
    loop(*args)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _chunks(x2: Tensor) -> int:
    """Blocks of rows to share among threads: as many as PyTorch's threads (numba runs that many),
    one for a weight too small for threads to pay."""
    threads = torch.get_num_threads()
    if threads == 1 or x2.numel() < _PARALLEL_MIN:
        return 1
    _run(_numba_threads, threads)  # the first call starts numba's threads
    return min(threads, x2.shape[0])


def _numba_threads(threads: int) -> None:
    numba = sys.modules["numba"]
    want = min(threads, numba.config.NUMBA_NUM_THREADS)
    if numba.get_num_threads() != want:
        numba.set_num_threads(want)


_PARALLEL_MIN = 1 << 16
_NO_MASK = np.ones(1, dtype=np.bool_)  # the masks' place when there are none (never read)
_NP = {torch.float32: np.float32, torch.float64: np.float64}
_NO_SUMS = {dt: (np.zeros((4, 1), dtype=npt), np.zeros((1, 4, 1), dtype=npt))  # sgd_step's without post=
            for dt, npt in _NP.items()}


def _scalar(v: float, dtype: torch.dtype) -> Any:
    """``v`` as a scalar of ``dtype``, so that the loops' arithmetic stays in x's dtype."""
    return np.float32(v) if dtype == torch.float32 else float(v)


def stats(x: Tensor, d: Tensor | None, post: int, *, with_abs: bool,
          sgd: tuple[Tensor, float, float, float] | None = None,
          alive: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Per-row and per-input-channel sums of x·d, x², d² (and |x|) of a weight: ``[k, O]`` and
    ``[k, O_in]``, ``post`` elements per input channel (kernel elements). Same results as
    ``_layout.block_sums`` up to the order of summation.

    ``sgd = (g, momentum, dampening, weight_decay)``: ``d`` is SGD's momentum buffer, first
    updated in place to ``momentum·d + (1 − dampening)·(g + weight_decay·x)`` in the same loop
    (what ``_base.SGDRule`` does, in one pass instead of three). ``alive = (row_alive, col_alive)``
    (bool, per row and per column of the ``[O, M]`` view, as :func:`sgd_step` takes them): the
    gradient's entries outside a live row and column are taken as zero, as if masked.
    ``d=None`` (no ``sgd`` then): the weight's own sums only, x² and |x|; the sums with d are zero."""
    if d is None and sgd is not None:
        raise ValueError("_kernels.stats: sgd needs the momentum buffer d")
    x2 = x.view(x.shape[0], -1)
    d2 = x2 if d is None else d.view(x.shape[0], -1)
    k = 4 if with_abs else 3
    rows = x2.new_zeros(k, x2.shape[0])
    cols = x2.new_zeros(_chunks(x2), k, x2.shape[1])
    g, momentum, dampening, wd = sgd if sgd is not None else (d2, 0.0, 0.0, 0.0)
    dt = x.dtype
    if alive is None:
        row_alive, col_alive = _NO_MASK, _NO_MASK
    else:
        row_alive, col_alive = _np(alive[0]), _np(alive[1])
    args = (_np(x2), _np(d2), _np(g.view(x2.shape)), _scalar(momentum, dt), _scalar(1 - dampening, dt),
            _scalar(wd, dt), sgd is not None, with_abs, alive is not None, d is not None, row_alive, col_alive,
            _np(rows))
    if cols.shape[0] == 1:
        _loops()[0](*args, _np(cols[0]), 0, x2.shape[0])
    else:
        _run(_loops()[2], *args, _np(cols))
    cols = cols.sum(0) if cols.shape[0] > 1 else cols[0]
    return rows, cols if post == 1 else cols.view(k, -1, post).sum(2)


def step(x: Tensor, d: Tensor | None, u0: Tensor, v: Tensor, c0: Tensor, c: Tensor, lr: float,
         post: int) -> tuple[Tensor, Tensor]:
    """In place ``x ← x·(u0[row] + v[input channel]) − lr·d`` over the ``[O, M]`` view of a weight
    (``post`` columns per input channel), and the sums of the old x² per row weighted by
    ``c[input channel]`` and per input channel weighted by ``c0[row]``."""
    x2 = x.view(x.shape[0], -1)
    rowc = x2.new_zeros(x2.shape[0])
    colc = x2.new_zeros(_chunks(x2), x2.shape[1])
    d2 = x2 if d is None else d.view(x2.shape)
    v1, c1 = (t.repeat_interleave(post) if post > 1 else t for t in (v, c))  # per column: its channel's
    args = (_np(x2), _np(d2), d is not None, _np(u0), _np(v1), _np(c0), _np(c1), _scalar(lr, x.dtype), _np(rowc))
    if colc.shape[0] == 1:
        _loops()[1](*args, _np(colc[0]), 0, x2.shape[0])
    else:
        _run(_loops()[3], *args, _np(colc))
    colc = colc.sum(0) if colc.shape[0] > 1 else colc[0]
    return rowc, colc if post == 1 else colc.view(-1, post).sum(1)



class SGDCall:
    """:func:`sgd_step` on one weight, prepared once: the numpy views of the weight, its momentum
    buffer and the masks, the scratch for the column factors and the thread split. A step then
    costs one view of the gradient and one call of the loop, where :func:`sgd_step` makes every
    view and scratch anew (a few tens of µs of Python per weight). Kept by the optimizer per
    weight; :meth:`fits` says whether it still serves these tensors (the same storage, the same
    thread count), :meth:`set_masks` takes a new period's masks."""

    __slots__ = ("x", "buf", "masks", "shape", "dtype", "threads", "chunks", "_ptrs", "_x", "_b", "_masks", "_cs",
                 "_zc")

    def __init__(self, x: Tensor, buf: Tensor, row_alive: Tensor, row_count: Tensor, col_alive: Tensor,
                 col_count: Tensor) -> None:
        x2 = x.view(x.shape[0], -1)
        self.x, self.buf = x, buf
        self.masks = (row_alive, row_count, col_alive, col_count)
        self.shape = tuple(x2.shape)
        self.dtype = x.dtype
        self.threads = torch.get_num_threads()
        self.chunks = _chunks(x2)
        self._ptrs = (x.data_ptr(), buf.data_ptr())
        self._x, self._b = _np(x2), _np(buf.view(x2.shape))
        self._masks = tuple(_np(t) for t in self.masks)
        self._cs = np.empty((self.chunks, x2.shape[1]), dtype=_NP[x.dtype])  # per thread: the column factors
        self._zc = np.empty((self.chunks, x2.shape[1]), dtype=np.int64)  # per thread: the columns of factor 0

    def set_masks(self, row_alive: Tensor, row_count: Tensor, col_alive: Tensor, col_count: Tensor) -> None:
        """Take other masks (a new period, a new zero set): only their views are made."""
        self.masks = (row_alive, row_count, col_alive, col_count)
        self._masks = (row_alive.numpy(), row_count.numpy(), col_alive.numpy(), col_count.numpy())

    def fits(self, x: Tensor, buf: Tensor) -> bool:
        """Whether this call steps ``x`` and ``buf`` as they are now."""
        return (x is self.x and buf is self.buf and (x.data_ptr(), buf.data_ptr()) == self._ptrs
                and x.shape[0] == self.shape[0] and x.numel() == self.shape[0] * self.shape[1]
                and torch.get_num_threads() == self.threads)

    def __call__(self, g: Tensor | None, factor: float, *, momentum: float, dampening: float, weight_decay: float,
                 lr: float, post: int | None = None) -> tuple[Tensor, Tensor] | None:
        """:func:`sgd_step` with the tensors given at construction (``g`` contiguous, of x's dtype)."""
        dt, chunks = self.dtype, self.chunks
        with_sums = post is not None
        if with_sums:
            rows = torch.zeros(4, self.shape[0], dtype=dt)
            cols = torch.zeros(chunks, 4, self.shape[1], dtype=dt)
            rows_np, cols_np = _np(rows), _np(cols)
        else:  # never read: the loops' place for them, allocated once per dtype
            rows_np, cols_np = _NO_SUMS[dt]
        gn = self._b if g is None else g.detach().numpy().reshape(self.shape)
        args = (self._x, gn, self._b, *self._masks, _scalar(factor, dt), _scalar(momentum, dt),
                _scalar(1 - dampening, dt), _scalar(weight_decay, dt), _scalar(lr, dt), g is not None)
        if chunks == 1:
            _loops()[4](*args, self._cs[0], self._zc[0], with_sums, rows_np, cols_np[0], 0, self.shape[0])
        else:
            _run(_loops()[5], *args, self._cs, self._zc, with_sums, rows_np, cols_np)
        if post is None:
            return None
        c = cols.sum(0) if chunks > 1 else cols[0]
        return rows, c if post == 1 else c.view(4, -1, post).sum(2)


def sgd_step(x: Tensor, g: Tensor | None, buf: Tensor, row_alive: Tensor, row_count: Tensor, col_alive: Tensor,
             col_count: Tensor, factor: float, *, momentum: float, dampening: float, weight_decay: float,
             lr: float, post: int | None = None) -> tuple[Tensor, Tensor] | None:
    """SGD's momentum step (``_base.SGDRule``, no Nesterov) and the progressive shrink, in place and
    in one pass over the ``[O, M]`` view of a weight: on every element of a live row and column
    (``row_alive[O]``, ``col_alive[M]``, bool, one per column of the view)
    ``buf ← momentum·buf + (1 − dampening)·(g + weight_decay·x)`` and
    ``x ← (x − lr·buf)·factor^(row_count + col_count)`` (the counts, int64: how many of the
    period's groups hold the element's row and its column); where that factor is 0 (a period's
    last step) buf is zeroed too. Elements of a dead row or column (a zero group's) stay zero, as
    if their gradient had been masked: x and buf are zero there. With ``g=None`` buf is the
    direction, already updated (by :func:`stats`, at a period start): the step and the shrink only.

    ``post`` (the kernel elements per input channel): also return the new x's own sums, what
    ``stats(x, None, post, with_abs=True)`` would return after the step, taken in the same pass
    (the statistics of a weights-only score at the next step's period start); None otherwise."""
    return SGDCall(x, buf, row_alive, row_count, col_alive, col_count)(
        g, factor, momentum=momentum, dampening=dampening, weight_decay=weight_decay, lr=lr, post=post)
