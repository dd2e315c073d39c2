"""The SearchSpace: what can be removed, found by the channel-flow pass."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np
import torch
from torch import fx, nn

from .._errors import OtonasError
from ..capture import Capture, capture
from ..graph import build_opgraph
from ._flow import FlowResult, PinEvent, module_path, run_flow
from ._ids import IdTable
from ._registry import FLOP_RULES
from . import _rules  # noqa: F401  (registers the channel-flow rules)
from . import _costs  # noqa: F401  (registers the FLOP rules)

__all__ = ["Family", "Costs", "SearchSpace", "analyze"]


@dataclass(frozen=True)
class Family:
    """Channels coupled across layers: e.g. a conv's outputs, its BN, and every input
    column that reads them. Each of its prunable groups is one removable channel."""

    index: int
    layers: tuple[str, ...]
    num_channels: int
    groups: tuple[int, ...]
    pins: tuple[PinEvent, ...]

    @property
    def prunable(self) -> bool:
        return bool(self.groups)


@dataclass(frozen=True)
class Costs:
    params: int
    flops: int


class SearchSpace:
    """Groups, families and pins of one captured model. Built by :func:`analyze`."""

    def __init__(self, model: nn.Module, cap: Capture, flow: FlowResult) -> None:
        self.model = model
        self.capture = cap
        self._flow = flow
        self.graph: nx.DiGraph = build_opgraph(cap.program)
        roots, channel, pinned, reason = flow.ids.finish()
        self._roots = roots
        n = flow.ids.n
        is_group_root = np.zeros(n, dtype=bool)
        is_group_root[roots[channel]] = True  # a root is channel iff any member was
        candidate = np.nonzero(is_group_root & (roots == np.arange(n)))[0]
        prunable_roots = candidate[~pinned[candidate]]
        pinned_roots = candidate[pinned[candidate]]
        self._gid_of_root = np.full(n, -1, dtype=np.int64)
        self._gid_of_root[prunable_roots] = np.arange(len(prunable_roots))
        self.num_prunable_groups = int(len(prunable_roots))
        self.num_groups = int(len(candidate))
        self._events_by_key = {f"{e.node}|{e.op}|{e.reason}": e for e in flow.pin_events}
        self._pinned_roots = pinned_roots
        self._root_reason = reason
        self._families()
        self._layout: dict[str, list[tuple[int, torch.Tensor]]] | None = None

    # --- structure ----------------------------------------------------------------------
    def _gid(self, ids: np.ndarray) -> np.ndarray:
        return self._gid_of_root[self._roots[ids]]

    def _families(self) -> None:
        spaces = self._flow.spaces
        if not spaces:
            self.families: tuple[Family, ...] = ()
            self.group_family: list[int] = []
            return
        owner = np.concatenate([np.full(len(ids), k) for k, (_, ids) in enumerate(spaces)])
        roots = self._roots[np.concatenate([ids for _, ids in spaces])]
        order = np.argsort(roots, kind="stable")
        r, o = roots[order], owner[order]
        same = r[1:] == r[:-1]
        uf = IdTable()
        uf.new(len(spaces))
        uf.union(o[1:][same], o[:-1][same])
        fam_root = uf.find(np.arange(len(spaces)))
        fam_ids, fam_of_space = np.unique(fam_root, return_inverse=True)
        uniq_r, first = np.unique(r, return_index=True)
        fam_of_root = fam_of_space[o[first]]
        gids = self._gid_of_root[uniq_r]
        has = gids >= 0
        group_family = np.zeros(self.num_prunable_groups, dtype=np.int64)
        group_family[gids[has]] = fam_of_root[has]
        self.group_family = group_family.tolist()
        families = []
        pinned_set = set(self._pinned_roots.tolist())
        graph_nodes = {n.name: n for n in self.capture.graph.nodes}
        for f in range(len(fam_ids)):
            members = np.nonzero(fam_of_space == f)[0]
            layers = tuple(dict.fromkeys(module_path(graph_nodes[spaces[k][0]]) or spaces[k][0] for k in members))
            froots = uniq_r[fam_of_root == f]
            groups = tuple(int(g) for g in self._gid_of_root[froots] if g >= 0)
            pins = []
            seen = set()
            for rt in froots:
                if int(rt) in pinned_set:
                    code = int(self._root_reason[rt])
                    if code >= 0 and code not in seen:
                        seen.add(code)
                        ev = self._events_by_key.get(self._flow.ids.reasons[code])
                        if ev is not None:
                            pins.append(ev)
            families.append(Family(f, layers, len(froots), groups, tuple(pins)))
        self.families = tuple(families)

    @property
    def pins(self) -> list[PinEvent]:
        """Every pin that kept at least one channel from being pruned."""
        out: dict[int, PinEvent] = {}
        for fam in self.families:
            for ev in fam.pins:
                out[id(ev)] = ev
        return list(out.values())

    def node_groups(self, name: str) -> Any:
        """Group id (or -1) of every position of every dim of a graph node's output."""
        d = self._flow.dims[name]
        if isinstance(d, list) and (not d or isinstance(d[0], np.ndarray)):
            return [self._gid(ids) for ids in d]
        return type(d)(None if x is None else [self._gid(ids) for ids in x] for x in d)

    def group_layout(self) -> dict[str, list[tuple[int, torch.Tensor]]]:
        """For each parameter in a prunable group: ``[(dim, group id of each position along dim, -1 if none)]``."""
        if self._layout is None:
            layout: dict[str, list[tuple[int, torch.Tensor]]] = {}
            for node_name, fqn in self._flow.param_nodes.items():
                if node_name not in self._flow.dims:
                    continue
                entries = []
                for dim, g in enumerate(self.node_groups(node_name)):
                    if (g >= 0).any():
                        entries.append((dim, torch.from_numpy(g.copy())))
                if entries:
                    layout[fqn] = entries
            self._layout = layout
        return self._layout

    # --- zero patterns ------------------------------------------------------------------
    def zero_groups(self) -> np.ndarray:
        """Boolean mask over prunable groups: True where every parameter slice is exactly zero."""
        nonzero = np.zeros(self.num_prunable_groups, dtype=bool)
        params = dict(self.model.named_parameters(remove_duplicate=False))
        for fqn, entries in self.group_layout().items():
            p = params[fqn].detach()
            if p.is_meta:
                raise OtonasError("the model is on the meta device: it has no values to inspect")
            for dim, g in entries:
                other = [d for d in range(p.dim()) if d != dim]
                nz = (p.abs().amax(dim=other) if other else p.abs()).ne(0).cpu().numpy()
                sel = g.numpy() >= 0
                np.logical_or.at(nonzero, g.numpy()[sel], nz[sel])
        return ~nonzero

    def removable(self, zero: np.ndarray) -> np.ndarray:
        """The groups the builder removes for a zero pattern: all zero groups, except that a
        family never loses its last channel (one zero channel is kept, which is exact)."""
        removed = np.asarray(zero, dtype=bool).copy()
        for fam in self.families:
            if fam.groups and removed[list(fam.groups)].all():
                removed[fam.groups[0]] = False
        return removed

    def kept_sizes(self, name: str, removed: np.ndarray | None) -> Any:
        groups = self.node_groups(name)

        def count(g: np.ndarray) -> int:
            if removed is None:
                return len(g)
            sel = g >= 0
            return int(len(g) - removed[g[sel]].sum())

        if isinstance(groups, list) and (not groups or isinstance(groups[0], np.ndarray)):
            return [count(g) for g in groups]
        return type(groups)(None if x is None else [count(g) for g in x] for x in groups)

    def costs(self, removed: np.ndarray | None = None) -> Costs:
        """Parameters and per-sample FLOPs of the network with ``removed`` groups taken out."""
        params = 0
        for node_name in self._flow.param_nodes:
            if node_name in self._flow.dims:
                params += math.prod(self.kept_sizes(node_name, removed))
        flops = 0
        batch = self._batch_size()
        for node in self.capture.graph.nodes:
            if node.op != "call_function":
                continue
            fn = FLOP_RULES.lookup(node.target)
            if fn is None or node.name not in self._flow.dims:
                continue
            out = self.kept_sizes(node.name, removed)
            if not isinstance(out, list) or (out and not isinstance(out[0], int)):
                out = out[0]
            ins = [self.kept_sizes(a.name, removed) if isinstance(a, fx.Node) and a.name in self._flow.dims
                   and isinstance(self._flow.dims[a.name], list) else None for a in node.args]
            if str(node.target).startswith("aten.einsum"):
                ins = [None, [self.kept_sizes(a.name, removed) for a in node.args[1]]]
            flops += int(fn(node, out, ins))
        return Costs(params, flops // max(batch, 1))

    def _batch_size(self) -> int:
        for x in self.capture.example_inputs:
            if isinstance(x, torch.Tensor) and x.dim() > 0:
                return int(x.shape[0])
        return 1

    # --- reporting ----------------------------------------------------------------------
    def summary(self) -> str:
        rows = [("family", "layers", "channels", "prunable", "why not")]
        for fam in self.families:
            layers = ", ".join(fam.layers[:3]) + (f", … (+{len(fam.layers) - 3})" if len(fam.layers) > 3 else "")
            why = "; ".join(f"{e.reason} at {e.node}" + (f" ({e.module})" if e.module else "") for e in fam.pins[:2])
            rows.append((str(fam.index), layers, str(fam.num_channels), str(len(fam.groups)), why))
        widths = [min(max(len(r[i]) for r in rows), 60) for i in range(4)]
        lines = []
        for r in rows:
            cells = [r[i][:widths[i]].ljust(widths[i]) for i in range(4)] + [r[4]]
            lines.append("  ".join(cells).rstrip())
        full = self.costs()
        lines.append("")
        lines.append(f"{len(self.families)} families, {self.num_groups} channel groups, "
                     f"{self.num_prunable_groups} prunable; {full.params:,} parameters, {full.flops:,} FLOPs (MACs) per sample")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"SearchSpace({type(self.model).__name__}: {len(self.families)} families, "
                f"{self.num_prunable_groups}/{self.num_groups} prunable groups)")


def analyze(
    model: nn.Module,
    example_inputs: Sequence[Any] | torch.Tensor,
    *,
    strict: bool | None = None,
    dynamic_batch: bool = True,
) -> SearchSpace:
    """Capture ``model`` on ``example_inputs`` and find every removable channel.

    The model is not modified (it is exported in eval mode and its mode restored).
    Works on the ``meta`` device: analysis needs shapes only. Use a batch of at least
    2 in ``example_inputs`` so the batch dimension can stay free in the built network.
    """
    cap = capture(model, example_inputs, strict=strict, dynamic_batch=dynamic_batch)
    flow = run_flow(cap.program)
    return SearchSpace(model, cap, flow)
