"""A layered (Sugiyama-style) drawing of a directed graph, top to bottom, in pure Python.

Longest-path layering (then nodes move up or down where that shortens their edges),
dummy nodes on edges that span several layers, a few barycenter sweeps to cut
crossings (keeping sibling boxes together), then x positions by isotonic regression:
each box as close as its layer's order allows to the median of its neighbours, long
edges routed through the gaps. Good enough for a few hundred boxes; no graphviz needed.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections.abc import Callable, Hashable, Sequence
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
    cluster: dict[Hashable, Hashable] | None = None,
    paths: dict[Hashable, str] | None = None,
) -> Layout:
    """Lay ``nodes`` (given in a topological order where possible) out in layers.

    Edges that point backwards in the given order are treated as reversed for layering,
    so a cyclic graph still gets a drawing. Nodes with the same ``cluster`` value are
    kept next to each other within a layer where the ordering allows; ``paths`` (dotted
    module paths) tell which neighbours a node belongs with when choosing its layer.
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

    layer = _layering(nodes, preds, succs, dict(paths or {}))
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
    for n in _dfs_order(nodes, vsuccs, vpreds):
        rows[vlayer[n]].append(n)

    rows = _order_rows(rows, vpreds, vsuccs, sweeps, dict(cluster or {}))

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


def _shared(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a.split("."), b.split(".")):
        if x != y:
            break
        n += 1
    return n


def _layering(nodes: Sequence[Hashable], preds: dict[Hashable, list[Hashable]],
              succs: dict[Hashable, list[Hashable]], paths: dict[Hashable, str]) -> dict[Hashable, int]:
    """Longest path from the top, then shorter edges: a node with more edges out than in
    sinks towards its users, one with more in than out rises towards its inputs, and on a
    tie it sinks when it belongs with its users (same module) more than with its inputs."""
    layer: dict[Hashable, int] = {}
    for n in nodes:  # nodes come in topological order of the forward edges
        layer[n] = max((layer[p] + 1 for p in preds[n]), default=0)
    first = nodes[0] if nodes else None
    for _ in range(3):
        moved = False
        for n in reversed(nodes):
            if not succs[n] or n == first:
                continue
            low = min(layer[s] for s in succs[n]) - 1
            if low <= layer[n]:
                continue
            ins, outs = len(preds[n]), len(succs[n])
            if ins == outs and ins:
                here = paths.get(n, "")
                closer = max(_shared(here, paths.get(s, "")) for s in succs[n])
                farther = max(_shared(here, paths.get(p, "")) for p in preds[n])
                sink = closer > farther
            else:
                sink = outs > ins
            if sink:
                layer[n], moved = low, True
        for n in nodes:
            if not preds[n]:
                continue
            high = max(layer[p] for p in preds[n]) + 1
            if high < layer[n] and len(preds[n]) > len(succs[n]) and succs[n]:
                layer[n], moved = high, True
        if not moved:
            break
    return layer


def _dfs_order(nodes: Sequence[Hashable], succs: dict[Hashable, list[Hashable]],
               preds: dict[Hashable, list[Hashable]]) -> list[Hashable]:
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
    count = 0
    seen_ends: list[int] = []  # ends seen so far, sorted: each later edge ending left of one crosses it
    for _, j in pairs:
        count += len(seen_ends) - bisect_right(seen_ends, j)
        insort(seen_ends, j)
    return count


def _order_rows(rows: list[list[Hashable]], preds: dict[Hashable, list[Hashable]],
                succs: dict[Hashable, list[Hashable]], sweeps: int,
                cluster: dict[Hashable, Hashable]) -> list[list[Hashable]]:
    def total(rs: list[list[Hashable]]) -> int:
        return sum(_crossings(rs[i], rs[i + 1], succs) for i in range(len(rs) - 1))

    def sweep(rs: list[list[Hashable]], down: bool) -> list[list[Hashable]]:
        rs = [list(r) for r in rs]
        idx = range(1, len(rs)) if down else range(len(rs) - 2, -1, -1)
        for i in idx:
            ref = rs[i - 1] if down else rs[i + 1]
            where = {n: k for k, n in enumerate(ref)}
            nbrs = preds if down else succs
            bary: dict[Hashable, float] = {}
            for k, n in enumerate(rs[i]):
                ps = [where[p] for p in nbrs[n] if p in where]
                bary[n] = sum(ps) / len(ps) if ps else float(k)
            # siblings (boxes of one parent module) stay side by side, in the place they pull to together
            members: dict[Hashable, list[float]] = {}
            for n in rs[i]:
                c = cluster.get(n)
                if c is not None:
                    members.setdefault(c, []).append(bary[n])
            pos = {n: k for k, n in enumerate(rs[i])}

            def key(n: Hashable) -> tuple[float, float, int]:
                c = cluster.get(n)
                cb = sum(members[c]) / len(members[c]) if c is not None else bary[n]
                return (cb, bary[n], pos[n])

            rs[i] = sorted(rs[i], key=key)
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


def _is_dummy(n: Hashable) -> bool:
    return isinstance(n, tuple) and bool(n) and n[0] == "__dummy__"


def _straighten(rows: list[list[Hashable]], preds: dict[Hashable, list[Hashable]],
                succs: dict[Hashable, list[Hashable]], x: dict[Hashable, float], width: dict[Hashable, float],
                gap: float) -> None:
    """Draw each long edge as one vertical line where its dummies have room for one."""
    room: dict[Hashable, tuple[float, float]] = {}
    for row in rows:
        for i, n in enumerate(row):
            if _is_dummy(n):
                lo = x[row[i - 1]] + width[row[i - 1]] / 2 + gap / 2 if i else float("-inf")
                hi = x[row[i + 1]] - width[row[i + 1]] / 2 - gap / 2 if i + 1 < len(row) else float("inf")
                room[n] = (lo, hi)
    done: set[Hashable] = set()
    for n in room:
        if n in done or (preds[n] and _is_dummy(preds[n][0])):
            continue
        chain = [n]
        while succs[chain[-1]] and _is_dummy(succs[chain[-1]][0]):
            chain.append(succs[chain[-1]][0])
        done.update(chain)
        lo = max(room[d][0] for d in chain)
        hi = min(room[d][1] for d in chain)
        if lo > hi:
            continue
        ends = [x[p] for p in preds[chain[0]]] + [x[s] for s in succs[chain[-1]]]
        want = sum(ends) / len(ends) if ends else sum(x[d] for d in chain) / len(chain)
        best = min(max(want, lo), hi)
        for d in chain:
            x[d] = best


def _x_positions(rows: list[list[Hashable]], preds: dict[Hashable, list[Hashable]],
                 succs: dict[Hashable, list[Hashable]], size: Callable[[Hashable], tuple[float, float]],
                 gap: float) -> dict[Hashable, float]:
    width = {n: size(n)[0] for row in rows for n in row}

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

    def want(n: Hashable, nbr_sets: list[dict[Hashable, list[Hashable]]]) -> float | None:
        ms = [m for nb in nbr_sets for m in nb[n]]
        if not _is_dummy(n) and any(not _is_dummy(m) for m in ms):
            ms = [m for m in ms if not _is_dummy(m)]  # long edges bend around boxes, not boxes around them
        ns = sorted(x[m] for m in ms)
        if not ns:
            return None
        # the median keeps chains straight where the mean would drift towards a side branch
        return ns[len(ns) // 2] if len(ns) % 2 else (ns[len(ns) // 2 - 1] + ns[len(ns) // 2]) / 2

    def place(row: list[Hashable], nbr_sets: list[dict[Hashable, list[Hashable]]]) -> None:
        # real boxes first: as close to their neighbours as their order allows, with room
        # left between them for the long edges that pass through the row
        reals = [k for k, n in enumerate(row) if not _is_dummy(n)]
        if reals:
            targets, weights, off, acc = [], [], [], 0.0
            for a, k in enumerate(reals):
                if a:
                    p = reals[a - 1]
                    between = sum(width[row[m]] + gap for m in range(p + 1, k))
                    acc += width[row[p]] / 2 + gap + between + width[row[k]] / 2
                off.append(acc)
                w = want(row[k], nbr_sets)
                targets.append((x[row[k]] if w is None else w) - acc)
                weights.append(1.0 if w is not None else 0.05)
            for k, o, f in zip(reals, off, _isotonic(targets, weights)):
                x[row[k]] = f + o
        # then the long edges, each in its slot between the boxes around it
        k = 0
        while k < len(row):
            if not _is_dummy(row[k]):
                k += 1
                continue
            end = k
            while end < len(row) and _is_dummy(row[end]):
                end += 1
            lo = x[row[k - 1]] + width[row[k - 1]] / 2 + gap if k else float("-inf")
            hi = x[row[end]] - width[row[end]] / 2 - gap if end < len(row) else float("inf")
            for m in range(k, end):
                n = row[m]
                rest = sum(width[row[r]] + gap for r in range(m + 1, end))
                w = want(n, nbr_sets)
                t = x[n] if w is None else w
                t = min(t, hi - rest - width[n] / 2)
                t = max(t, lo + width[n] / 2)
                x[n] = t
                lo = t + width[n] / 2 + gap
            k = end

    passes = 12
    for it in range(passes):
        both = it >= passes - 4
        if it % 2 == 0:
            for row in rows[1:]:
                place(row, [preds, succs] if both else [preds])
        else:
            for row in reversed(rows[:-1]):
                place(row, [preds, succs] if both else [succs])
    _straighten(rows, preds, succs, x, width, gap)
    return x
