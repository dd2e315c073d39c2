"""The progressive projection schedule and the budgets it spends.

With the *progressive* schedule (the default of ``otonas search`` and ``otonas tune``; the
scheme of OTO's later optimizer HESSO, arXiv 2409.09085) the projection window
``[start_step, end_step)`` is split into P periods. At the start of period p the groups not
yet selected are re-scored and, in every *cell* (a family, or a family within a stage), the
most redundant of them are selected until the cell holds ``round(quota · (p + 1) / P)``
selected groups. During the period every group selected at its start is multiplied after
each step by ``(r − 1) / r``, r the steps left in the period counting this one: the last step
multiplies by exactly 0, so every selected group is zero at the end of its period by
construction — nothing is ever forced — and stays zero from then on.

Quotas come from a budget: a fraction of the prunable groups (spread over the families in
proportion to their sizes, largest remainders first) or a fraction of the FLOPs or parameters
to keep (:func:`cost_quotas`: one common share of every family, found by bisection over the
search space's own cost model ``space.costs``), or of the latency (the same bisection over a
measured latency model, :class:`otonas.latency.LatencyModel`). Selection never crosses a cell: a layer cannot
be stripped because its weights are small next to another layer's (a global normalisation
would rate the wide late layers' small-init channels most redundant and empty the classifier's
input), and with ``keep_one_per_family`` a cell never gives its last group.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import OtonasError

__all__ = ["SCHEDULES", "period_bounds", "split_quota", "cost_quotas", "select_in_cells", "Alignment",
           "cell_alignment", "align_quota", "align_up"]

SCHEDULES = ("progressive", "half_space")


def period_bounds(start: int, end: int, periods: int) -> list[int]:
    """The first step of each period and ``end``: ``P + 1`` increasing step numbers (fewer
    periods when the window has fewer than ``periods`` steps)."""
    p = max(1, min(int(periods), end - start))
    return [start + (i * (end - start)) // p for i in range(p + 1)]


def split_quota(total: int, sizes: Sequence[int], caps: Sequence[int]) -> list[int]:
    """``total`` spread over cells in proportion to ``sizes``, each at most its cap: largest
    remainders first, what a capped cell cannot take goes to the others. Sums to
    ``min(total, sum(caps))``."""
    sizes_a = np.asarray(sizes, dtype=np.float64)
    caps_a = np.asarray(caps, dtype=np.int64)
    out = np.zeros(len(sizes_a), dtype=np.int64)
    left = min(int(total), int(caps_a.sum()))
    while left > 0:
        open_ = out < caps_a
        weight = np.where(open_, sizes_a, 0.0)
        if weight.sum() <= 0:
            weight = open_.astype(np.float64)
        share = left * weight / weight.sum()
        add = np.minimum(np.floor(share).astype(np.int64), caps_a - out)
        rest = left - int(add.sum())
        if rest > 0:  # largest remainders, ties by position, among cells with room after ``add``
            frac = np.where(open_ & (out + add < caps_a), share - np.floor(share), -1.0)
            order = np.argsort(-frac, kind="stable")
            for i in order[:rest]:
                if frac[i] >= 0:
                    add[i] += 1
        if not add.any():
            break
        out += add
        left -= int(add.sum())
    return out.tolist()


class Alignment:
    """How ``round_to`` applies to each cell: its channels besides its prunable groups (pinned
    ones), and whether its groups are channels at all (a group spanning several positions in
    every slice — an attention head — is removed whole; such cells are not rounded)."""

    def __init__(self, round_to: int, sizes: Sequence[int], pinned: Sequence[int], blocks: Sequence[bool]) -> None:
        self.round_to = int(round_to)
        self.sizes = [int(v) for v in sizes]
        self.pinned = [int(v) for v in pinned]
        self.blocks = [bool(v) for v in blocks]

    def kept_channels(self, c: int, q: int) -> int:
        return self.sizes[c] + self.pinned[c] - int(q)

    def aligned(self, c: int, q: int) -> bool:
        return (self.round_to <= 1 or self.blocks[c] or q == 0 or self.kept_channels(c, q) % self.round_to == 0)


def cell_alignment(space: Any, cells: Sequence[Any], round_to: int) -> Alignment:
    """The :class:`Alignment` of ``cells`` in ``space`` (a SearchSpace: families and group layout;
    other spaces: no pinned channels, every group a channel)."""
    n = sum(len(c) for c in cells)
    pinned = [0] * len(cells)
    blocks = [False] * len(cells)
    families = getattr(space, "families", None)
    group_family = getattr(space, "group_family", None)
    if families and group_family is not None and len(group_family) >= n:
        for i, c in enumerate(cells):
            fam = families[int(group_family[int(c[0])])]
            if len(c) == len(fam.groups):  # a whole family (with per-stage cells a family may be split)
                pinned[i] = int(fam.num_channels) - len(fam.groups)
    layout = getattr(space, "group_layout", None)
    if layout is not None and round_to > 1:
        width = np.full(int(getattr(space, "num_prunable_groups", n)) + 1, np.iinfo(np.int64).max, dtype=np.int64)
        for entries in layout().values():
            for _, g in entries:
                ids = np.asarray(g)
                ids = ids[ids >= 0]
                if ids.size:
                    u, k = np.unique(ids, return_counts=True)
                    width[u] = np.minimum(width[u], k)
        for i, c in enumerate(cells):
            w = width[np.asarray(c, dtype=np.int64)]
            blocks[i] = bool((w[w < np.iinfo(np.int64).max] > 1).any())
    return Alignment(round_to, [len(c) for c in cells], pinned, blocks)


def align_quota(al: Alignment, c: int, q: int, cap: int) -> int:
    """``q`` groups removed from cell ``c``, moved to the nearest count whose kept channels are a
    multiple of ``round_to`` (at least ``round_to`` of them, at most ``cap`` removed), or 0 (the
    cell keeps all its channels) when none is."""
    q = max(0, min(int(q), int(cap)))
    n = al.round_to
    if n <= 1 or al.blocks[c] or q == 0:
        return q
    total = al.sizes[c] + al.pinned[c]
    kept = n * int(math.floor((total - q) / n + 0.5))
    least = max(n, total - int(cap))  # the fewest channels the cell may keep
    kept = max(kept, n * math.ceil(least / n))
    return 0 if kept >= total else total - kept


def align_up(al: Alignment, c: int, q: int, cap: int) -> int:
    """The smallest quota of cell ``c`` from ``q`` up whose kept channels are aligned (``cap`` at
    most): where groups already zero outnumber an aligned quota, remove a few more."""
    while q < cap and not al.aligned(c, q):
        q += 1
    return q


def _give_back(al: Alignment | None, c: int, q: int) -> int:
    """Cell ``c``'s quota with the fewest channels more kept (one, or ``round_to``)."""
    if al is None or al.round_to <= 1 or al.blocks[c]:
        return q - 1
    kept = al.kept_channels(c, q) + al.round_to
    kept = al.round_to * math.ceil(kept / al.round_to)
    total = al.sizes[c] + al.pinned[c]
    return 0 if kept >= total else total - kept


def cost_quotas(space: Any, cells: Sequence[Any], caps: Sequence[int], *, target: float,
                metric: str, align: Alignment | None = None,
                cost: Callable[[np.ndarray], float] | None = None) -> tuple[list[int], float]:
    """Per-cell quotas that keep at most ``target`` of the dense network's FLOPs (``metric`` =
    "flops") or parameters ("params"), as close to it as one common share of every cell allows.
    With ``cost`` (removed mask -> cost, e.g. a latency model's estimated seconds) that cost is
    bisected instead, under the name ``metric`` ("latency").

    ``cells`` lists the prunable groups of each cell, ``caps`` the most each may give. Every
    cell gives ``round(share · size)`` groups (capped); ``share`` is bisected on
    ``space.costs(removed)``, then single channels are given back while the budget allows. Within a cell the groups of a family cost alike, so the first
    ones stand for any choice. With ``align`` (``round_to``) every quota is moved to one whose
    kept channels are a multiple of ``round_to`` (or 0), and channels are given back
    ``round_to`` at a time. Returns the quotas and the fraction they keep.
    """
    n = int(space.num_prunable_groups)
    measure: Callable[[np.ndarray], float]
    if cost is not None:
        measure = cost
    else:
        costs = getattr(space, "costs", None)
        if costs is None:
            raise OtonasError(f"target_{metric} needs a search space with a cost model (space.costs): pass the "
                              "SearchSpace from otonas.analyze, or give target_group_sparsity instead")

        def measure(removed: np.ndarray) -> float:
            return float(getattr(costs(removed), metric))
    if not 0.0 < target <= 1.0:
        raise OtonasError(f"target_{metric}={target!r} is invalid; expected the fraction of {metric} to keep, "
                          "in (0, 1]")
    dense = measure(np.zeros(n, dtype=bool))
    if dense <= 0:
        raise OtonasError(f"the model has no {metric} that otonas counts; give target_group_sparsity instead")

    def quotas(share: float) -> list[int]:
        q = [min(int(c), int(math.floor(share * len(m) + 0.5))) for m, c in zip(cells, caps)]
        return q if align is None else [align_quota(align, i, v, caps[i]) for i, v in enumerate(q)]

    def kept(q: Sequence[int]) -> float:
        removed = np.zeros(n, dtype=bool)
        for members, k in zip(cells, q):
            removed[list(members)[:k]] = True
        return measure(removed) / dense

    if target >= 1.0:
        return [0] * len(cells), 1.0
    most = quotas(1.0)
    least_kept = kept(most)
    if least_kept > target + 1e-12:
        raise OtonasError(
            f"target_{metric}={target} cannot be reached by pruning channels: removing every removable channel "
            f"keeps {least_kept:.3f} of the {metric} (the rest is in pinned or unprunable layers, or in the one "
            f"channel each family keeps); raise target_{metric} to at least {least_kept:.3f}")
    lo, hi = 0.0, 1.0  # kept(quotas(lo)) > target >= kept(quotas(hi))
    for _ in range(40):
        mid = (lo + hi) / 2
        if kept(quotas(mid)) <= target:
            hi = mid
        else:
            lo = mid
    q = quotas(hi)
    now = kept(q)
    # One common share moves in steps of whole channels of every family at once; give channels
    # back one at a time, the one that brings the kept fraction closest to the target without
    # passing it, while any fits (a bounded number of cost evaluations).
    evaluations = 0
    while now < target and evaluations < 600:
        best: tuple[float, int] | None = None
        for c in range(len(q)):
            if q[c] == 0:
                continue
            old = q[c]
            q[c] = _give_back(align, c, old)
            k = kept(q)
            q[c] = old
            evaluations += 1
            if k <= target and (best is None or k > best[0]):
                best = (k, c)
        if best is None:
            break
        now, c = best
        q[c] = _give_back(align, c, q[c])
    return q, now


def count_in_cells(cells: Sequence[np.ndarray], mask: np.ndarray) -> np.ndarray:
    """How many groups of each cell ``mask`` (bool, per group) holds: one count over all the cells."""
    if not len(cells):
        return np.zeros(0, dtype=np.int64)
    sizes = np.array([len(c) for c in cells], dtype=np.int64)
    members = np.concatenate([np.asarray(c, dtype=np.int64) for c in cells])
    return np.bincount(np.repeat(np.arange(len(cells)), sizes)[mask[members]], minlength=len(cells))


def select_in_cells(score: np.ndarray, eligible: np.ndarray, cells: Sequence[Any],
                    want: Sequence[int] | np.ndarray, have: Sequence[int] | np.ndarray) -> list[int]:
    """The groups to add so that cell c holds ``want[c]`` selected groups (it holds ``have[c]``):
    its most redundant eligible groups (higher ``score`` first, ties by index; NaN last)."""
    need = np.asarray(want, dtype=np.int64) - np.asarray(have, dtype=np.int64)
    take = np.flatnonzero(need > 0)
    if not take.size:
        return []
    # One sort for every cell that needs groups: by cell, then score (higher first; NaN last), then
    # the member's place in its cell (ties by index); the first need[c] of each cell.
    members = [np.asarray(cells[c], dtype=np.int64) for c in take.tolist()]
    lens = np.array([m.size for m in members], dtype=np.int64)
    mem = np.concatenate(members)
    cell = np.repeat(np.arange(take.size), lens)
    place = np.arange(mem.size) - np.repeat(np.cumsum(lens) - lens, lens)
    ok = eligible[mem]
    mem, cell, place = mem[ok], cell[ok], place[ok]
    neg = -np.where(np.isnan(score), -np.inf, score)[mem]
    order = np.lexsort((place, neg, cell))
    mem, cell = mem[order], cell[order]
    first = np.searchsorted(cell, np.arange(take.size))
    rank = np.arange(mem.size) - first[cell]
    return sorted(mem[rank < need[take][cell]].tolist())
