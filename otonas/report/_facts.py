"""What the pictures show, read from a SearchSpace and a removal: per op its family, its
channels before and after, whether it is erased or pinned; per layer its channel counts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..analysis import LayerChannels, Plan
from ..ops import short_op
from ..errors import OtonasError

__all__ = ["LayerChannels", "OpFacts", "GraphFacts", "graph_facts", "layer_channels", "short_op"]


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


def _plan_of(space: Any, removed: Any, erased: Any, plan: Plan | None) -> Plan:
    """``plan``, or the plan of the ``removed`` / ``erased`` masks (none removed, none erased
    when not given: nothing is read from the weights)."""
    if plan is not None:
        if removed is not None or erased is not None:
            raise OtonasError("graph_facts takes a plan or removed=/erased=, not both")
        return plan
    n, e = space.num_prunable_groups, space.num_erasing_groups
    removed = _as_mask(removed, n, "removed")
    erased = _as_mask(erased, e, "erased")
    try:
        return space.plan(removed=removed, erased=erased)
    except OtonasError as err:
        if "invalid erasure" in str(err):
            raise OtonasError(f"{err}; draw a valid set (see SearchSpace.check_erasure)") from None
        raise


def _as_mask(mask: Any, n: int, what: str) -> np.ndarray:
    if mask is None:
        return np.zeros(n, dtype=bool)
    out = np.asarray(mask, dtype=bool)
    if out.shape != (n,):
        raise OtonasError(f"{what} is a boolean mask of shape {out.shape}; this search space has {n} {what} "
                          f"entries, so it must have shape ({n},)")
    return out


def graph_facts(space: Any, *, removed: Any = None, erased: Any = None, plan: Plan | None = None) -> GraphFacts:
    """Read every op of ``space.graph`` with what ``plan`` (:meth:`SearchSpace.plan`) takes out,
    or the plan of the ``removed`` prunable groups and ``erased`` erasing groups (boolean masks).
    Channel counts are the plan's: what the built network has."""
    graph = space.graph
    plan = _plan_of(space, removed, erased, plan)
    n_groups = space.num_prunable_groups
    removed_mask = plan.gone if plan.gone is not None else np.zeros(n_groups, dtype=bool)
    erased_mask = plan.erased if plan.erased is not None else np.zeros(space.num_erasing_groups, dtype=bool)
    dead = {n for n in plan.dead if n in graph}

    pins: dict[str, list[str]] = {}
    for ev in space.pins:
        if ev.node in graph and ev.reason not in pins.setdefault(ev.node, []):
            pins[ev.node].append(ev.reason)
    groups_of: dict[str, list[int]] = {}
    for g in sorted(space.erasing_groups, key=lambda g: -g.depth):
        for n in g.nodes:
            if n in graph:
                groups_of.setdefault(n, []).append(g.index)

    ops: dict[str, OpFacts] = {}
    for n in graph.nodes:
        data = graph.nodes[n]
        op = str(data.get("op", ""))
        shape = data.get("shape")
        shape = tuple(int(s) for s in shape) if isinstance(shape, (tuple, list)) else None
        family, channels, is_layer = space.node_channels(n, dead=dead, kept=plan.kept)
        if family is None and op not in ("input", "output"):
            family = next((ops[p].family for p in graph.predecessors(n) if p in ops and ops[p].family is not None),
                          None)
        ops[n] = OpFacts(n, op, str(data.get("module") or ""), shape, family, channels, n in dead,
                         tuple(pins.get(n, ())), tuple(groups_of.get(n, ())), is_layer)
    return GraphFacts(ops, removed_mask, erased_mask, frozenset(dead))


def layer_channels(space: Any, *, removed: Any = None, erased: Any = None,
                   plan: Plan | None = None) -> list[LayerChannels]:
    """Output channels of every layer (op that makes channels from a parameter), before and
    after: :attr:`Plan.layers` of ``plan``, or of the plan of the ``removed`` prunable groups
    and ``erased`` erasing groups (boolean masks; none when not given).

    One row per module path (a module called twice is listed once), in graph order.
    """
    return list(_plan_of(space, removed, erased, plan).layers)
