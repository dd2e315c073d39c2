"""A layered (Sugiyama-style) drawing of a directed graph, top to bottom, in pure Python.

Longest-path layering, dummy nodes on edges that span several layers, a few
barycenter sweeps to cut crossings, then x positions by weighted isotonic regression
(each node as close as it can be to the mean of its neighbours, in its layer's order,
without overlapping). Good enough for a few hundred boxes; no graphviz needed.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

__all__ = ["Layout", "layered_layout"]

_DUMMY_WIDTH = 6.0


@dataclass(frozen=True)
class Layout:
    """Where everything goes. ``pos[node]`` is the centre of the node's box; each edge is a
    polyline from the bottom of its source to the top of its target."""

    pos: dict[Hashable, tuple[float, float]]
    size: dict[Hashable, tuple[float, float]]
    edges: dict[tuple[Hashable, Hashable], list[tuple[float, float]]]
    width: float
    height: float
    layer: dict[Hashable, int]


def layered_layout(
    nodes: Sequence[Hashable],
    edges: Sequence[tuple[Hashable, Hashable]],
    sizes: dict[Hashable, tuple[float, float]],
    *,
    node_gap: float = 18.0,
    layer_gap: float = 30.0,
    sweeps: int = 6,
    margin: float = 10.0,
) -> Layout:
    """Lay ``nodes`` (given in a topological order where possible) out in layers.

    Edges that point backwards in the given order are treated as reversed for layering,
    so a cyclic graph still gets a drawing.
    """
    order = {n: i for i, n in enumerate(nodes)}
    fwd: list[tuple[Hashable, Hashable]] = []
    seen_edges: set[tuple[Hashable, Hashable]] = set()
    for u, v in edges:
        if u == v or (u, v) in seen_edges or u not in order or v not in order:
            continue
        seen_edges.add((u, v))
        fwd.append((u, v) if order[u] < order[v] else (v, u))
    preds: dict[Hashable, list[Hashable]] = {n: [] for n in nodes}
    succs: dict[Hashable, list[Hashable]] = {n: [] for n in nodes}
    for u, v in fwd:
        succs[u].append(v)
        preds[v].append(u)

    layer = _layering(nodes, preds, succs)
    # long edges get one dummy per layer they cross, so they can be routed and ordered
    vpreds: dict[Hashable, list[Hashable]] = {n: [] for n in nodes}
    vsuccs: dict[Hashable, list[Hashable]] = {n: [] for n in nodes}
    chains: dict[tuple[Hashable, Hashable], list[Hashable]] = {}
    vlayer = dict(layer)
    for u, v in fwd:
        chain = [u]
        for k in range(layer[u] + 1, layer[v]):
            d = ("__dummy__", u, v, k)
            vlayer[d] = k
            vpreds[d], vsuccs[d] = [], []
            chain.append(d)
        chain.append(v)
        for a, b in zip(chain, chain[1:]):
            vsuccs[a].append(b)
            vpreds[b].append(a)
        chains[(u, v)] = chain
    nlayers = max(vlayer.values(), default=-1) + 1
    rows: list[list[Hashable]] = [[] for _ in range(nlayers)]
    for n in _dfs_order(nodes, vsuccs, vpreds, order):
        rows[vlayer[n]].append(n)

    rows = _order_rows(rows, vpreds, vsuccs, sweeps)

    def size(n: Hashable) -> tuple[float, float]:
        return sizes[n] if n in sizes else (_DUMMY_WIDTH, 0.0)

    xs = _x_positions(rows, vpreds, vsuccs, size, node_gap)
    heights = [max((size(n)[1] for n in row), default=0.0) for row in rows]
    ys, y = [], margin
    for h in heights:
        ys.append(y + h / 2)
        y += h + layer_gap
    height = y - layer_gap + margin if rows else 2 * margin
    left = min((xs[n] - size(n)[0] / 2 for row in rows for n in row), default=0.0)
    shift = margin - left
    pos = {n: (xs[n] + shift, ys[vlayer[n]]) for row in rows for n in row}
    width = max((pos[n][0] + size(n)[0] / 2 for row in rows for n in row), default=0.0) + margin

    routes: dict[tuple[Hashable, Hashable], list[tuple[float, float]]] = {}
    for (u, v), chain in chains.items():
        pts = [(pos[u][0], pos[u][1] + size(u)[1] / 2)]
        pts += [pos[d] for d in chain[1:-1]]
        pts.append((pos[v][0], pos[v][1] - size(v)[1] / 2))
        routes[(u, v)] = pts
    real = {n: pos[n] for n in nodes}
    return Layout(real, {n: sizes[n] for n in nodes}, _restore_direction(routes, edges, order), width, height,
                  {n: layer[n] for n in nodes})


def _restore_direction(routes: dict[tuple[Hashable, Hashable], list[tuple[float, float]]],
                       edges: Sequence[tuple[Hashable, Hashable]],
                       order: dict[Hashable, int]) -> dict[tuple[Hashable, Hashable], list[tuple[float, float]]]:
    out: dict[tuple[Hashable, Hashable], list[tuple[float, float]]] = {}
    for u, v in edges:
        if (u, v) in routes and order.get(u, 0) < order.get(v, 0):
            out[(u, v)] = routes[(u, v)]
        elif (v, u) in routes:
            out[(u, v)] = list(reversed(routes[(v, u)]))
    return out


def _layering(nodes: Sequence[Hashable], preds: dict[Hashable, list[Hashable]],
              succs: dict[Hashable, list[Hashable]]) -> dict[Hashable, int]:
    layer: dict[Hashable, int] = {}
    for n in nodes:  # nodes come in topological order of the forward edges
        layer[n] = max((layer[p] + 1 for p in preds[n]), default=0)
    # a source other than the first input (a constant, a second input) sits just above its first use
    for n in reversed(nodes):
        if not preds[n] and succs[n] and n != nodes[0]:
            layer[n] = max(0, min(layer[s] for s in succs[n]) - 1)
    return layer


def _dfs_order(nodes: Sequence[Hashable], succs: dict[Hashable, list[Hashable]],
               preds: dict[Hashable, list[Hashable]], order: dict[Hashable, int]) -> list[Hashable]:
    """Depth-first discovery order from the sources: a start ordering that keeps chains together."""
    seen: set[Hashable] = set()
    out: list[Hashable] = []
    for root in nodes:
        if root in seen or preds[root]:
            continue
        stack = [root]
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            out.append(n)
            stack.extend(reversed(succs[n]))
    for n in list(succs):
        if n not in seen:
            seen.add(n)
            out.append(n)
    return out


def _crossings(upper: list[Hashable], lower: list[Hashable], succs: dict[Hashable, list[Hashable]]) -> int:
    where = {n: i for i, n in enumerate(lower)}
    pairs = sorted((i, where[s]) for i, n in enumerate(upper) for s in succs[n] if s in where)
    count, seen_ends = 0, []
    for _, j in pairs:
        count += len(seen_ends) - bisect_right(seen_ends, j)
        insort(seen_ends, j)
    return count


def _order_rows(rows: list[list[Hashable]], preds: dict[Hashable, list[Hashable]],
                succs: dict[Hashable, list[Hashable]], sweeps: int) -> list[list[Hashable]]:
    def total(rs: list[list[Hashable]]) -> int:
        return sum(_crossings(rs[i], rs[i + 1], succs) for i in range(len(rs) - 1))

    def sweep(rs: list[list[Hashable]], down: bool) -> list[list[Hashable]]:
        rs = [list(r) for r in rs]
        idx = range(1, len(rs)) if down else range(len(rs) - 2, -1, -1)
        for i in idx:
            ref = rs[i - 1] if down else rs[i + 1]
            where = {n: k for k, n in enumerate(ref)}
            nbrs = preds if down else succs

            def key(item: tuple[int, Hashable]) -> tuple[float, int]:
                k, n = item
                ps = [where[p] for p in nbrs[n] if p in where]
                return (sum(ps) / len(ps) if ps else float(k), k)

            rs[i] = [n for _, n in sorted(enumerate(rs[i]), key=key)]
        return rs

    best, best_count = rows, total(rows)
    cur = rows
    for it in range(sweeps):
        if best_count == 0:
            break
        cur = sweep(cur, down=it % 2 == 0)
        c = total(cur)
        if c < best_count:
            best, best_count = cur, c
    return best


def _isotonic(targets: list[float], weights: list[float]) -> list[float]:
    """Weighted least squares fit of a non-decreasing sequence (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, weight, count]
    for t, w in zip(targets, weights):
        blocks.append([t, w, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2, c2 = blocks.pop()
            m1, w1, c1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, c1 + c2])
    out: list[float] = []
    for m, _, c in blocks:
        out.extend([m] * int(c))
    return out


def _x_positions(rows: list[list[Hashable]], preds: dict[Hashable, list[Hashable]],
                 succs: dict[Hashable, list[Hashable]], size: object, gap: float) -> dict[Hashable, float]:
    width = {n: size(n)[0] for row in rows for n in row}  # type: ignore[operator]

    def offsets(row: list[Hashable]) -> list[float]:
        off, acc = [], 0.0
        for i, n in enumerate(row):
            if i:
                acc += (width[row[i - 1]] + width[n]) / 2 + gap
            off.append(acc)
        return off

    x: dict[Hashable, float] = {}
    for row in rows:
        off = offsets(row)
        mid = off[-1] / 2 if off else 0.0
        for n, o in zip(row, off):
            x[n] = o - mid

    def place(row: list[Hashable], nbr_sets: list[dict[Hashable, list[Hashable]]]) -> None:
        off = offsets(row)
        targets, weights = [], []
        for n, o in zip(row, off):
            ns = [m for nb in nbr_sets for m in nb[n]]
            want = sum(x[m] for m in ns) / len(ns) if ns else x[n]
            dummy = isinstance(n, tuple) and n and n[0] == "__dummy__"
            targets.append(want - o)
            weights.append((4.0 if dummy else 1.0) * (1.0 if ns else 0.25))
        fit = _isotonic(targets, weights)
        for n, o, f in zip(row, off, fit):
            x[n] = f + o

    for it in range(8):
        if it % 2 == 0:
            for row in rows[1:]:
                place(row, [preds] if it < 6 else [preds, succs])
        else:
            for row in reversed(rows[:-1]):
                place(row, [succs] if it < 6 else [preds, succs])
    return x
