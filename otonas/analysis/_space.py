"""The SearchSpace: what can be removed, found by the channel-flow pass."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np
import torch
from torch import fx, nn

from ..errors import OtonasError, UsageError
from ..capture import Capture, capture
from ..graph import build_opgraph
from ..ops import GQA, GQA_MODES, FlowResult, IdTable, PinEvent, module_path, op_flops, rule_for, short_op
from ._flow import run_flow
from ._plan import LayerChannels, Plan
from ._rewrites import unrewritable_families
from ._segments import ErasingGroup, ErasureWalk, Segments

__all__ = ["Family", "Costs", "Plan", "LayerChannels", "SearchSpace", "ErasingGroup", "analyze", "analyze_captured"]


@dataclass(frozen=True)
class Family:
    """Channels coupled across layers: e.g. a conv's outputs, its BN, and every input
    column that reads them. Each of its prunable groups is one removable channel."""

    index: int
    layers: tuple[str, ...]
    num_channels: int
    groups: tuple[int, ...]
    pins: tuple[PinEvent, ...]
    minting_nodes: tuple[str, ...] = ()

    @property
    def prunable(self) -> bool:
        return bool(self.groups)


@dataclass(frozen=True)
class Costs:
    params: int
    flops: int


def _same_tensors(mine: Mapping[str, torch.Tensor], theirs: dict[str, torch.Tensor],
                  kind: str) -> dict[str, torch.Tensor]:
    """``theirs`` when it has every tensor of ``mine`` with the same shape; else an error naming the first."""
    for fqn, t in mine.items():
        other = theirs.get(fqn)
        if other is None:
            raise UsageError(f"model= is not the analysed architecture: it has no {kind} '{fqn}'; pass a network "
                             "of the same architecture (the same modules and sizes), or analyze this one")
        if tuple(other.shape) != tuple(t.shape):
            raise UsageError(f"model= is not the analysed architecture: {kind} '{fqn}' has shape "
                             f"{tuple(other.shape)}, the analysed model's {tuple(t.shape)}; pass a network of the "
                             "same architecture, or analyze this one")
    return theirs


class SearchSpace:
    """Groups, families and pins of one captured model. Built by :func:`analyze`."""

    def __init__(self, model: nn.Module, cap: Capture, flow: FlowResult, *, check_rewrites: bool = True) -> None:
        self.model = model
        self.capture = cap
        self._flow = flow
        self.graph: nx.DiGraph = build_opgraph(cap.program)
        self._index()
        if check_rewrites:
            # a family whose removal some op cannot take is pinned now, not found at build time
            bad = unrewritable_families(self)
            if bad:
                for f, event in bad.items():
                    key = f"{event.node}|{event.op}|{event.reason}"
                    if key not in self._events_by_key:
                        flow.pin_events.append(event)
                    flow.ids.pin(self._prunable_roots[list(self.families[f].groups)], key)
                self._index()
        n = flow.ids.n
        pinned_root = np.zeros(n, dtype=bool)
        pinned_root[self._roots] = self._pinned
        self.segments = Segments(cap.program, flow, self._roots, pinned_root)
        self._hierarchy: nx.DiGraph | None = None
        self._full_costs: Costs | None = None  # the costs of the whole network, which plan() reports
        self._minted: dict[str, int] | None = None  # minting node -> its family (node_channels)
        self._group_family = np.zeros(0, dtype=np.int64)  # group_family as an array, with _minted

    def _index(self) -> None:
        """Groups and families from the channel ids (again after the rewrite check pins some)."""
        flow = self._flow
        roots, channel, pinned, reason = flow.ids.finish()
        self._roots = roots
        self._pinned = pinned
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
        self._prunable_roots = prunable_roots
        self._layout: dict[str, list[tuple[int, torch.Tensor]]] | None = None
        self._families()

    @property
    def gqa(self) -> GQA:
        """The grouped-query attention granularity the analysis ran with (:func:`analyze`)."""
        return self._flow.gqa

    # --- erasure ------------------------------------------------------------------------
    @property
    def erasing_groups(self) -> list[ErasingGroup]:
        """Operators (or nests of them) that can be erased whole; see ``hierarchy``."""
        return self.segments.groups

    @property
    def num_erasing_groups(self) -> int:
        return len(self.segments.groups)

    @property
    def hierarchy(self) -> nx.DiGraph:
        """Tree of erasing groups and the pruning families that live inside them."""
        if self._hierarchy is None:
            self._hierarchy = self.segments.hierarchy(self.families)
        return self._hierarchy

    def check_erasure(self, erased: Any) -> str | None:
        """None when erasing these groups (indices or a boolean mask) leaves a valid,
        connected network; otherwise the reason it does not."""
        return self.segments.check(erased)

    def erasure_walk(self) -> ErasureWalk:
        """An empty erasure to grow group by group (``walk.check(g)``, ``walk.accept(g)``), each
        addition judged as :meth:`check_erasure` judges the grown set, but at the cost of the
        nodes the new group reaches rather than of the whole graph."""
        return self.segments.walk()

    def is_valid(self, erased: Any) -> bool:
        return self.segments.check(erased) is None

    def weights_of(self, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """The parameters a removal decision reads, by FQN: ``model``'s (a network of the analysed
        architecture with other weights: a trained copy, one loaded from a checkpoint, the real model
        when this space was analysed on the meta device), by default the analysed model's. A model
        whose parameters are not the analysed one's (names and shapes) is refused, naming the first."""
        mine: dict[str, torch.Tensor] = dict(self.model.named_parameters(remove_duplicate=False))
        if model is None or model is self.model:
            return mine
        return _same_tensors(mine, dict(model.named_parameters(remove_duplicate=False)), "parameter")

    def buffers_of(self, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """The buffers (running statistics, …) by FQN, of ``model`` or the analysed model, checked
        as :meth:`weights_of` checks the parameters."""
        mine: dict[str, torch.Tensor] = dict(self.model.named_buffers(remove_duplicate=False))
        if model is None or model is self.model:
            return mine
        return _same_tensors(mine, dict(model.named_buffers(remove_duplicate=False)), "buffer")

    def zero_erasing_groups(self, model: nn.Module | None = None) -> np.ndarray:
        """Boolean mask over erasing groups: True where every parameter is exactly zero (in
        ``model``'s weights, by default the analysed model's: see :meth:`weights_of`)."""
        params = self.weights_of(model)
        zero_param = {fqn: not bool(params[fqn].detach().ne(0).any()) for g in self.erasing_groups for fqn in g.params}
        return np.array([all(zero_param[f] for f in g.params) for g in self.erasing_groups], dtype=bool)

    def erasable(self, zero: np.ndarray) -> np.ndarray:
        """The largest valid subset of the zero erasing groups, outer groups first."""
        chosen = np.zeros(self.num_erasing_groups, dtype=bool)
        order = sorted(np.nonzero(zero)[0].tolist(), key=lambda i: (-len(self.erasing_groups[i].nodes), i))
        for i in order:
            g = self.erasing_groups[i]
            p = g.parent
            while p is not None and not chosen[p]:
                p = self.erasing_groups[p].parent
            if p is not None:
                continue  # already inside an erased group
            chosen[i] = True
            if not self.is_valid(chosen):
                chosen[i] = False
        return chosen

    def _removed_root(self, removed: np.ndarray | None, dead: set[str] | None = None) -> np.ndarray | None:
        if removed is None and not dead:
            return None
        out = np.zeros(len(self._roots), dtype=bool)
        if removed is not None:
            out[self._prunable_roots[np.asarray(removed, dtype=bool)]] = True
        if dead:
            out[self.segments.removed_roots(dead)] = True
        return out

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
            minting = tuple(dict.fromkeys(spaces[k][0] for k in members))
            families.append(Family(f, layers, len(froots), groups, tuple(pins), minting))
        self.families = tuple(families)

    @property
    def pins(self) -> list[PinEvent]:
        """Every pin that kept at least one channel from being pruned."""
        out: dict[int, PinEvent] = {}
        for fam in self.families:
            for ev in fam.pins:
                out[id(ev)] = ev
        return list(out.values())

    def pin_sizes(self) -> list[tuple[PinEvent, int]]:
        """Each pin with the number of channel groups it keeps from being pruned (a group
        counts for the first pin that reached it), largest first."""
        counts: dict[int, int] = {}
        for code in self._root_reason[self._pinned_roots].tolist():
            if code >= 0:
                counts[code] = counts.get(code, 0) + 1
        out = []
        for code, k in counts.items():
            ev = self._events_by_key.get(self._flow.ids.reasons[code])
            if ev is not None:
                out.append((ev, k))
        return sorted(out, key=lambda t: -t[1])

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

    @property
    def normalization_params(self) -> frozenset[str]:
        """The parameters (FQNs) that a normalization op of the graph takes as its scale or shift
        (γ, β: the ops' ``affine_args``), whatever module holds them; ``NormAffineScore`` ranks
        channels by them."""
        out = set()
        for node in self.capture.graph.nodes:
            if node.op == "call_function":
                for a in rule_for(node.target).affine_operands(node):
                    fqn = self._flow.param_nodes.get(a.name)
                    if fqn is not None:
                        out.add(fqn)
        return frozenset(out)

    # --- zero patterns ------------------------------------------------------------------
    def zero_groups(self, model: nn.Module | None = None) -> np.ndarray:
        """Boolean mask over prunable groups: True where every parameter slice is exactly zero (in
        ``model``'s weights, by default the analysed model's: see :meth:`weights_of`)."""
        nonzero = np.zeros(self.num_prunable_groups, dtype=bool)
        params = self.weights_of(model)
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
        """The groups the builder removes for a zero pattern: all zero groups, except that no
        tensor dimension loses its last channel (one zero channel is kept, which is exact;
        PyTorch layers do not all accept empty dimensions)."""
        removed = np.asarray(zero, dtype=bool).copy()
        if not removed.any():
            return removed
        for ids in self._all_dims():
            g = self._gid(ids)
            if g.size and (g >= 0).all() and removed[g].all():
                removed[g[0]] = False
        return removed

    def _all_dims(self) -> list[np.ndarray]:
        """Every id array of the graph, once."""
        if not hasattr(self, "_dims_cache"):
            seen: dict[int, np.ndarray] = {}
            for d in self._flow.dims.values():
                lists = [d] if isinstance(d, list) and (not d or isinstance(d[0], np.ndarray)) else \
                    [x for x in d if x is not None]
                for lst in lists:
                    for ids in lst:
                        seen.setdefault(id(ids), ids)
            self._dims_cache = list(seen.values())
        return self._dims_cache

    def has_channels(self, name: str) -> bool:
        """Whether the channel flow covers the output of graph node ``name`` (its sizes can change)."""
        return name in self._flow.dims

    def keep_masks(self, name: str, removed_root: np.ndarray | None) -> Any:
        """Keep-mask of every position of every dim of a node's output(s)."""
        d = self._flow.dims[name]

        def keep(ids: np.ndarray) -> np.ndarray:
            if removed_root is None:
                return np.ones(len(ids), dtype=bool)
            return ~removed_root[self._roots[ids]]

        if isinstance(d, list) and (not d or isinstance(d[0], np.ndarray)):
            return [keep(ids) for ids in d]
        return type(d)(None if x is None else [keep(ids) for ids in x] for x in d)

    def kept_sizes(self, name: str, removed_root: np.ndarray | None) -> Any:
        m = self.keep_masks(name, removed_root)
        if isinstance(m, list) and (not m or isinstance(m[0], np.ndarray)):
            return [int(k.sum()) for k in m]
        return type(m)(None if x is None else [int(k.sum()) for k in x] for x in m)

    def _removal(self, removed: np.ndarray | None, erased: np.ndarray | None, *,
                 unchecked: bool = False) -> tuple[set[str], np.ndarray | None]:
        """The dead nodes of the erasure ``erased`` (an invalid one raises, unless ``unchecked``)
        and the removed roots of ``removed`` with them: what :meth:`plan`, :meth:`costs` and
        :meth:`kept_shapes` count on."""
        dead: set[str] = set()
        if erased is not None and np.asarray(erased).any():
            dead, why = self.segments.dead_nodes(np.asarray(erased, dtype=bool))
            if why and not unchecked:
                raise OtonasError(f"invalid erasure: {why}")
        return dead, self._removed_root(removed, dead)

    def plan(self, removed: np.ndarray | None = None, erased: np.ndarray | None = None, *,
             model: nn.Module | None = None, _unchecked: bool = False) -> Plan:
        """The removal decision for the current weights, once, for build, export and report.

        By default it is read from the model: the zero pruning groups that the builder can
        remove (:meth:`removable` of :meth:`zero_groups`) and the largest valid set of zero
        erasing groups (:meth:`erasable` of :meth:`zero_erasing_groups`). ``removed`` (a boolean
        mask over prunable groups, passed through :meth:`removable`) and ``erased`` (a boolean mask
        over erasing groups, which must be a valid erasure) replace what is read from the weights.
        ``model``: read the weights of this network of the analysed architecture instead of the
        analysed model's (see :meth:`weights_of`); build it with ``otonas.build(space, plan, model=...)``.
        """
        n, e = self.num_prunable_groups, self.num_erasing_groups
        if not n:
            removed = None
        elif removed is not None:
            removed = self.removable(self._mask(removed, n, "removed"))
        else:
            removed = self.removable(self.zero_groups(model))
        if not e:
            erased = None
        elif erased is not None:
            erased = self._mask(erased, e, "erased")
        else:
            erased = self.erasable(self.zero_erasing_groups(model))
        dead, removed_root = self._removal(removed, erased, unchecked=_unchecked)
        sizes = self._sizes(removed_root)
        if self._full_costs is None:
            self._full_costs = self._count(set(), self._sizes(None))
        kept = {k: tuple(v) for k, v in self._kept(dead, sizes, None).items()}
        gone = None
        if n:
            gone = removed_root[self._prunable_roots] if removed_root is not None else np.zeros(n, dtype=bool)
        return Plan(removed, erased, frozenset(dead), removed_root, kept, self._full_costs, self._count(dead, sizes),
                    gone=gone, layers=tuple(self._layer_table(dead, kept)))

    def channel_dim(self, name: str) -> tuple[int, np.ndarray] | None:
        """The channel dim of graph node ``name``'s (first) output: the dim with the most prunable
        positions, with the group id (or -1) of each of its positions; None when no dim has one."""
        if name not in self._flow.dims:
            return None
        d = self.node_groups(name)
        if isinstance(d, tuple):
            d = next((x for x in d if x is not None), None)
        if not d or not isinstance(d[0], np.ndarray):
            return None
        counts = [int((g >= 0).sum()) for g in d]
        if not counts or max(counts) == 0:
            return None
        dim = int(np.argmax(counts))
        return dim, d[dim]

    def node_channels(self, name: str, *, dead: frozenset[str] | set[str],
                      kept: Mapping[str, Sequence[int]]) -> tuple[int | None, tuple[int, int] | None, bool]:
        """What graph node ``name``'s output channels are under a removal decision (``dead``
        nodes and ``kept`` sizes, a :class:`Plan`'s): ``(family, (before, after), is_layer)``.
        The family is the most common one of the channel dim's groups (a channel-making layer
        without prunable channels: the family it mints); the counts are the channel dim's, or
        for such a layer its shape's channel dim (0 after when erased); ``is_layer``: the node
        makes channels from a parameter (a conv, a linear). None where a value is not known."""
        if self._minted is None:
            minted: dict[str, int] = {}
            for fam in self.families:
                for n in fam.minting_nodes:
                    minted.setdefault(n, fam.index)
            self._minted = minted
            self._group_family = np.asarray(self.group_family, dtype=np.int64)
        data = self.graph.nodes[name]
        is_layer = name in self._minted and bool(data.get("params"))
        family: int | None = None
        channels: tuple[int, int] | None = None
        found = self.channel_dim(name)
        if found is not None:
            dim, g = found
            family = Counter(self._group_family[g[g >= 0]].tolist()).most_common(1)[0][0]
            channels = (len(g), 0 if name in dead else int(kept[name][dim]))
        if family is None:
            family = self._minted.get(name)
        shape = data.get("shape")
        if channels is None and is_layer and isinstance(shape, (tuple, list)) and shape:
            c = int(shape[1] if "conv" in str(data.get("op", "")) and len(shape) > 1 else shape[-1])
            channels = (c, 0 if name in dead else c)
        return family, channels, is_layer

    def _layer_table(self, dead: frozenset[str] | set[str], kept: Mapping[str, Sequence[int]]) -> list[LayerChannels]:
        """One row per channel-making layer (an op that makes channels from a parameter), by
        module path, in graph order: its output channels in the full and in the built network."""
        rows: dict[str, LayerChannels] = {}
        for name, data in self.graph.nodes(data=True):
            family, channels, is_layer = self.node_channels(name, dead=dead, kept=kept)
            if not is_layer or channels is None:
                continue
            key = str(data.get("module") or "") or name
            rows.setdefault(key, LayerChannels(key, name, short_op(str(data.get("op", ""))), channels[0], channels[1],
                                               name in dead, family))
        return list(rows.values())

    @staticmethod
    def _mask(mask: Any, n: int, what: str) -> np.ndarray:
        out = np.asarray(mask, dtype=bool)
        if out.shape != (n,):
            raise UsageError(f"{what} is a boolean mask of shape {out.shape}; this search space has {n} {what} "
                             f"entries, so it must have shape ({n},)")
        return out

    def _sizes(self, removed_root: np.ndarray | None) -> Any:
        """``kept_sizes`` of a node by name, each computed once."""
        memo: dict[str, Any] = {}

        def sizes(name: str) -> Any:
            if name not in memo:
                memo[name] = self.kept_sizes(name, removed_root)
            return memo[name]
        return sizes

    def costs(self, removed: np.ndarray | None = None, erased: np.ndarray | None = None) -> Costs:
        """Parameters and per-sample FLOPs of the network with ``removed`` pruning groups and
        ``erased`` erasing groups (boolean masks, taken as they are) taken out. For the
        network the builder makes, read :attr:`Plan.after` of :meth:`plan`."""
        dead, removed_root = self._removal(removed, erased)
        return self._count(dead, self._sizes(removed_root))

    def _count(self, dead: set[str] | frozenset[str], sizes: Any) -> Costs:
        graph_nodes = {n.name: n for n in self.capture.graph.nodes}
        params = 0
        for node_name in self._flow.param_nodes:
            users = graph_nodes[node_name].users
            if node_name in self._flow.dims and not (users and all(u.name in dead for u in users)):
                params += math.prod(sizes(node_name))
        flops = 0
        batch = self._batch_size()
        dims = self._flow.dims
        for node in self.capture.graph.nodes:
            if node.name not in dead and node.name in dims:
                flops += op_flops(node, lambda n: sizes(n.name) if n.name in dims else None) or 0
        return Costs(params, flops // max(batch, 1))

    def kept_shapes(self, removed: np.ndarray | None = None, erased: np.ndarray | None = None, *,
                    nodes: Any = None) -> dict[str, list[int]]:
        """The kept sizes of the output of every live op (or of the op names in ``nodes``) with
        ``removed`` pruning groups and ``erased`` erasing groups taken out: node name -> sizes
        (the first output of an op with several). Ops the channel flow does not cover are left
        out. A latency model reads layer widths from this, as :meth:`costs` reads FLOPs; the
        network the builder makes has :attr:`Plan.kept`."""
        dead, removed_root = self._removal(removed, erased)
        return self._kept(dead, self._sizes(removed_root), nodes)

    def _kept(self, dead: set[str] | frozenset[str], sizes: Any, nodes: Any) -> dict[str, list[int]]:
        names = nodes if nodes is not None else [n.name for n in self.capture.graph.nodes]
        out: dict[str, list[int]] = {}
        for name in names:
            if name in dead or name not in self._flow.dims:
                continue
            s = sizes(name)
            if s and not isinstance(s[0], int):
                s = next((x for x in s if x is not None), None)
            if s is not None:
                out[name] = list(s)
        return out

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
        if self.erasing_groups or self.segments.skipped:
            lines.append("")
            lines.append(f"{self.num_erasing_groups} erasing groups (operators that can be removed whole):")
            lines.extend(self._tree_lines("model", 1, limit=60))
            free = [s for s in self.segments.skipped]
            if free:
                lines.append(f"{len(free)} join inputs are not erasable on their own:")
                for sk in free[:10]:
                    lines.append(f"  {sk.module or sk.output} -> {sk.join}: {sk.reason}")
                if len(free) > 10:
                    lines.append(f"  … and {len(free) - 10} more")
        return "\n".join(lines)

    def _tree_lines(self, node: str, depth: int, limit: int) -> list[str]:
        out: list[str] = []
        tree = self.hierarchy
        for child in tree.successors(node):
            if len(out) >= limit:
                out.append("  " * depth + "…")
                break
            data = tree.nodes[child]
            if data["kind"] == "erasing":
                g = self.erasing_groups[int(child[1:])]
                out.append("  " * depth + f"{child} {g.module or g.output} ({len(g.params)} params -> {g.join_kind} "
                           f"{g.join})")
                out.extend(self._tree_lines(child, depth + 1, limit - len(out)))
            elif depth > 1:
                out.append("  " * depth + f"{child} family {', '.join(data['layers'][:2])} "
                           f"({data['prunable']} prunable channels)")
        return out

    def __repr__(self) -> str:
        return (f"SearchSpace({type(self.model).__name__}: {len(self.families)} families, "
                f"{self.num_prunable_groups}/{self.num_groups} prunable groups, {self.num_erasing_groups} erasing groups)")


def analyze(
    model: nn.Module,
    example_inputs: Sequence[Any] | torch.Tensor,
    *,
    strict: bool | None = None,
    dynamic_batch: bool = True,
    dynamic_shapes: Any = None,
    gqa: GQA = "kv",
) -> SearchSpace:
    """Capture ``model`` on ``example_inputs`` and find every removable channel.

    The model is not modified (it is exported in eval mode and its mode restored).
    Works on the ``meta`` device: analysis needs shapes only. Use a batch of at least
    2 in ``example_inputs`` so the batch dimension can stay free in the built network.
    The built network takes any batch size and, for token-id inputs (integer tensors of
    two or more dims), any sequence length, where the model does; ``dynamic_shapes``, in
    ``torch.export.export``'s own terms (e.g. ``({0: Dim.AUTO, 2: Dim.AUTO},)``), marks the
    free dims instead. A HuggingFace model is captured without its key/value cache.

    ``gqa`` chooses what a group of grouped-query attention is: ``"kv"`` (the default) one
    key/value head with the query heads that read it; ``"query"`` one query-head slot of every
    key/value group (query head j of each group: removing it lowers the query heads per group
    by one, and the key/value heads are pinned). Multi-head and multi-query attention are the
    same in both.
    """
    return analyze_captured(model, capture(model, example_inputs, strict=strict, dynamic_batch=dynamic_batch,
                                           dynamic_shapes=dynamic_shapes), gqa=gqa)


def analyze_captured(model: nn.Module, captured: Capture, *, gqa: GQA = "kv") -> SearchSpace:
    """:func:`analyze` of a model already captured (``otonas.capture.capture``)."""
    if gqa not in GQA_MODES:
        raise UsageError(f"gqa={gqa!r} is not one of {', '.join(map(repr, GQA_MODES))}")
    return SearchSpace(model, captured, run_flow(captured.program, gqa=gqa))
