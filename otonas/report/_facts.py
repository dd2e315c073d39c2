"""What the pictures show, read from a SearchSpace and a removal: per op its family, its
channels before and after, whether it is erased or pinned; per layer its channel counts."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..analysis import Plan
from ..errors import OtonasError

__all__ = ["LayerChannels", "OpFacts", "GraphFacts", "graph_facts", "layer_channels", "short_op"]


@dataclass(frozen=True)
class LayerChannels:
    """One channel-making layer (conv, linear, …): its output channels before and after."""

    layer: str  # module path (the graph node name when the op is not inside a module)
    node: str  # the graph node of the layer's op
    op: str
    channels_before: int
    channels_after: int  # 0 when the layer is erased
    erased: bool = False
    family: int | None = None

    @property
    def kept_fraction(self) -> float:
        return self.channels_after / self.channels_before if self.channels_before else 1.0


@dataclass(frozen=True)
class OpFacts:
    """One node of the OpGraph as the pictures show it."""

    name: str
    op: str
    module: str
    shape: tuple[int, ...] | None
    family: int | None
    channels: tuple[int, int] | None  # (before, after) along the channel dim, when it has one
    dead: bool
    pins: tuple[str, ...]  # why channels here were pinned
    erasing_groups: tuple[int, ...]  # innermost first
    layer: bool  # it makes channels from a parameter (conv, linear, …)


@dataclass(frozen=True)
class GraphFacts:
    ops: dict[str, OpFacts]  # in graph order
    removed: np.ndarray  # prunable groups gone, including the channels dead concat inputs take away
    erased: np.ndarray  # erasing groups erased
    dead: frozenset[str]  # graph nodes erased


def short_op(op: str) -> str:
    """'aten.conv2d.default' -> 'conv2d'; '<built-in function getitem>' -> 'getitem'."""
    if op.startswith("<built-in function "):
        return op[len("<built-in function "):-1]
    parts = op.split(".")
    if parts[0] in ("aten", "prims", "quantized") and len(parts) >= 2:
        return parts[1]
    return op


def _as_mask(mask: Any, n: int, what: str) -> np.ndarray:
    if mask is None:
        return np.zeros(n, dtype=bool)
    out = np.asarray(mask, dtype=bool)
    if out.shape != (n,):
        raise OtonasError(f"{what} is a boolean mask of shape {out.shape}; this search space has {n} {what} "
                          f"entries, so it must have shape ({n},)")
    return out


def _dims(space: Any, name: str) -> list[np.ndarray] | None:
    """Group ids per position of every dim of a node's (first) output, or None."""
    try:
        d = space.node_groups(name)
    except KeyError:
        return None
    if isinstance(d, tuple):
        d = next((x for x in d if x is not None), None)
    if not d or not isinstance(d[0], np.ndarray):
        return None
    return list(d)


def graph_facts(space: Any, *, removed: Any = None, erased: Any = None, plan: Plan | None = None) -> GraphFacts:
    """Read every op of ``space.graph`` with ``removed`` prunable groups and ``erased``
    erasing groups (boolean masks) taken out, or what ``plan`` (:meth:`SearchSpace.plan`) takes out."""
    graph = space.graph
    if plan is not None:
        if removed is not None or erased is not None:
            raise OtonasError("graph_facts takes a plan or removed=/erased=, not both")
        removed, erased = plan.removed, plan.erased
    removed_mask = _as_mask(removed, space.num_prunable_groups, "removed").copy()
    erased_mask = _as_mask(erased, space.num_erasing_groups, "erased")
    dead: set[str] = set()
    if plan is not None:
        dead = {n for n in plan.dead if n in graph}
    elif erased_mask.any():
        all_dead, why = space.segments.dead_nodes(erased_mask)
        if why:
            raise OtonasError(f"invalid erasure: {why}; draw a valid set (see SearchSpace.check_erasure)")
        dead = {n for n in all_dead if n in graph}
    dims = {n: _dims(space, n) for n in graph.nodes}
    # a live concat that loses a dead input loses that input's channels downstream too
    for n in graph.nodes:
        if n in dead or short_op(graph.nodes[n]["op"]) not in ("cat", "concat", "concatenate"):
            continue
        for p in graph.predecessors(n):
            if p in dead and (dp := dims[p]) is not None:
                ids = np.concatenate([g[g >= 0] for g in dp])
                removed_mask[ids] = True

    pins: dict[str, list[str]] = {}
    for ev in space.pins:
        if ev.node in graph and ev.reason not in pins.setdefault(ev.node, []):
            pins[ev.node].append(ev.reason)
    minted: dict[str, int] = {}
    for fam in space.families:
        for n in fam.minting_nodes:
            minted.setdefault(n, fam.index)
    groups_of: dict[str, list[int]] = {}
    for g in sorted(space.erasing_groups, key=lambda g: -g.depth):
        for n in g.nodes:
            if n in graph:
                groups_of.setdefault(n, []).append(g.index)
    group_family = np.asarray(space.group_family, dtype=np.int64)

    ops: dict[str, OpFacts] = {}
    for n in graph.nodes:
        data = graph.nodes[n]
        op = str(data.get("op", ""))
        shape = data.get("shape")
        shape = tuple(int(s) for s in shape) if isinstance(shape, (tuple, list)) else None
        family: int | None = None
        channels: tuple[int, int] | None = None
        d = dims[n]
        if d is not None:
            counts = [int((g >= 0).sum()) for g in d]
            if counts and max(counts) > 0:
                g = d[int(np.argmax(counts))]
                valid = g[g >= 0]
                family = Counter(group_family[valid].tolist()).most_common(1)[0][0]
                kept = int((g < 0).sum()) + int((~removed_mask[valid]).sum())
                channels = (len(g), 0 if n in dead else kept)
        is_layer = n in minted and bool(data.get("params"))
        if family is None and n in minted:
            family = minted[n]
        if channels is None and is_layer and shape:
            c = shape[1] if "conv" in op and len(shape) > 1 else shape[-1]
            channels = (c, 0 if n in dead else c)
        if family is None and op not in ("input", "output"):
            family = next((ops[p].family for p in graph.predecessors(n) if p in ops and ops[p].family is not None),
                          None)
        ops[n] = OpFacts(n, op, str(data.get("module") or ""), shape, family, channels, n in dead,
                         tuple(pins.get(n, ())), tuple(groups_of.get(n, ())), is_layer)
    return GraphFacts(ops, removed_mask, erased_mask, frozenset(dead))


def layer_channels(space: Any, *, removed: Any = None, erased: Any = None,
                   plan: Plan | None = None) -> list[LayerChannels]:
    """Output channels of every layer (op that makes channels from a parameter), before and
    after removing the ``removed`` prunable groups and erasing the ``erased`` erasing groups
    (or what ``plan`` removes).

    One row per module path (a module called twice is listed once), in graph order.
    """
    facts = graph_facts(space, removed=removed, erased=erased, plan=plan)
    return _layers_from(facts)


def _layers_from(facts: GraphFacts) -> list[LayerChannels]:
    out: dict[str, LayerChannels] = {}
    for f in facts.ops.values():
        if not f.layer or f.channels is None:
            continue
        key = f.module or f.name
        if key not in out:
            out[key] = LayerChannels(key, f.name, short_op(f.op), f.channels[0], f.channels[1], f.dead, f.family)
    return list(out.values())
