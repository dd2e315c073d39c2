"""What a rule sees: :class:`FlowContext` during analysis, :class:`BuildContext` while the
builder copies the graph, and the node facts both read (shape, module path)."""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from torch import fx

from ..errors import AnalysisError
from ._ids import IdTable
from ._meta import module_path, node_shape

if TYPE_CHECKING:
    from ..analysis import SearchSpace

__all__ = ["FlowContext", "FlowResult", "PinEvent", "BuildContext", "Dims", "GQA", "GQA_MODES", "KV_HEADS_KEPT",
           "node_shape", "module_path"]

Dims = list  # list[np.ndarray], one id array per tensor dimension

GQA = Literal["kv", "query"]
"""How grouped-query attention is pruned: ``"kv"``, a key/value head with the query heads that
read it; ``"query"``, one query-head slot of every key/value group (the key/value heads stay)."""
GQA_MODES: tuple[GQA, ...] = ("kv", "query")
KV_HEADS_KEPT = "key/value heads kept: gqa='query' (a query head is removed by its slot in every key/value group)"


@dataclass(frozen=True)
class PinEvent:
    op: str
    node: str
    module: str
    reason: str


@dataclass
class FlowResult:
    ids: IdTable
    dims: dict[str, Any]  # node name -> Dims, or a tuple/list of Dims for multi-output ops
    pin_events: list[PinEvent]
    spaces: list[tuple[str, np.ndarray]]  # (node name, ids) of every channel-minting layer dim
    param_nodes: dict[str, str]  # placeholder name -> parameter FQN
    buffer_nodes: dict[str, str]  # placeholder name -> buffer FQN
    constant_nodes: dict[str, str]  # placeholder name -> constant name
    user_inputs: list[str]
    zero_requirements: list[tuple[list[tuple[fx.Node, int]], str]] = field(default_factory=list)
    gqa: GQA = "kv"  # the option the pass ran with


class FlowContext:
    """What a rule sees: the ids of its arguments and helpers to mint, unify and pin."""

    def __init__(self, result: FlowResult, graph: fx.Graph, *, gqa: GQA = "kv") -> None:
        if gqa not in GQA_MODES:
            raise ValueError(f"gqa={gqa!r} is not one of {', '.join(map(repr, GQA_MODES))}")
        self.result = result
        self.gqa: GQA = gqa
        result.gqa = gqa
        self._replicas: dict[int, int] = {}  # first id -> size of a dim that expand broadcasts
        self.ids = result.ids
        self.node: fx.Node | None = None
        self.param_derived: set[fx.Node] = set()
        self.zero_out: dict[fx.Node, set[int]] = {}
        self._graph = graph

    # --- reading -------------------------------------------------------------------
    def dims(self, arg: Any) -> Dims | None:
        if isinstance(arg, fx.Node):
            d = self.result.dims.get(arg.name)
            if isinstance(d, list) and (not d or isinstance(d[0], np.ndarray)):
                return d
        return None

    def shape(self, node: fx.Node) -> tuple[int, ...]:
        shape = node_shape(node.meta.get("val"))
        if shape is None:
            raise AnalysisError(f"{self.where(node)}: no tensor shape recorded")
        return shape

    def out_shapes(self, node: fx.Node) -> list[tuple[int, ...] | None]:
        val = node.meta.get("val")
        if isinstance(val, (list, tuple)):
            return [node_shape(v) for v in val]
        return [node_shape(val)]

    def where(self, node: fx.Node | None = None) -> str:
        node = node or self.node
        assert node is not None
        path = module_path(node)
        return f"node {node.name} ({node.target})" + (f" in module '{path}'" if path else "")

    # --- writing -------------------------------------------------------------------
    def fresh(self, size: int, *, pin: str | None = None) -> np.ndarray:
        return self.ids.new(size, pin=self._event(pin) if pin else None)

    def fresh_dims(self, shape: tuple[int, ...], *, pin: str | None = None) -> Dims:
        return [self.fresh(s, pin=pin) for s in shape]

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        if a is not b and len(a) == len(b):
            self.ids.union(a, b)

    def mint(self, ids: np.ndarray) -> np.ndarray:
        """Declare ``ids`` a layer's output channels (a prunable space unless pinned)."""
        self.ids.mark_channel(ids)
        assert self.node is not None
        self.result.spaces.append((self.node.name, ids))
        return ids

    def mark_replica(self, ids: np.ndarray) -> None:
        """``ids`` (fresh) are a dim that ``expand`` broadcasts right after a channel dim: copies
        of each channel, such as the ``n_rep`` query heads that share a key/value head in
        ``repeat_kv``. Marked with ``gqa="query"`` only; :func:`merge_ids` reads the mark."""
        if len(ids) > 1:
            self._replicas[int(ids[0])] = len(ids)

    def is_replica(self, ids: np.ndarray) -> bool:
        return len(ids) > 1 and self._replicas.get(int(ids[0])) == len(ids) and bool(
            (np.diff(ids) == 1).all())

    def pin(self, ids: np.ndarray, reason: str, node: fx.Node | None = None) -> None:
        self.ids.pin(ids, self._event(reason, node))

    def pin_all(self, dims: Dims | None, reason: str) -> None:
        for d in dims or []:
            self.pin(d, reason)

    def require_zero(self, alternatives: list[tuple[fx.Node, int]], reason: str) -> None:
        """The channels at (node, dim) are summed without a parameter: removal is exact only
        if, once the group is zeroed, at least one alternative is exactly zero there."""
        self.result.zero_requirements.append((alternatives, self._event(reason)))

    def _event(self, reason: str, node: fx.Node | None = None) -> str:
        node = node or self.node
        assert node is not None
        ev = PinEvent(str(node.target), node.name, module_path(node), reason)
        key = f"{ev.node}|{ev.op}|{ev.reason}"
        if key not in self._seen:
            self._seen[key] = len(self.result.pin_events)
            self.result.pin_events.append(ev)
        return key

    _seen: dict[str, int]


class BuildContext:
    """What a rewrite rule sees: original and reduced sizes, and the graph being written."""

    def __init__(self, space: SearchSpace, removed_root: np.ndarray | None, graph: fx.Graph,
                 source: dict[str, str]) -> None:
        self.space = space
        self.removed_root = removed_root
        self.graph = graph
        self.source = source  # node of the copied program -> node of the analysed one
        self._masks: dict[str, Any] = {}

    def masks(self, node: fx.Node) -> Any:
        """Keep-mask of every position of every dim of ``node``'s output(s)."""
        name = self.source.get(node.name, node.name)
        if name not in self._masks:
            self._masks[name] = self.space.keep_masks(name, self.removed_root)
        return self._masks[name]

    def sizes(self, node: fx.Node) -> Any:
        m = self.masks(node)
        if isinstance(m, list) and (not m or isinstance(m[0], np.ndarray)):
            return [int(k.sum()) for k in m]
        return type(m)(None if x is None else [int(k.sum()) for k in x] for x in m)

    def orig(self, node: fx.Node) -> list[int]:
        shape = node_shape(node.meta.get("val"))
        assert shape is not None
        return list(shape)

    def size_list(self, sizes: Any, orig: list[int], new: list[int]) -> list[Any]:
        """Rewrite a size argument (ints, -1, or symbolic nodes for the batch) to new sizes."""
        out = []
        for a, o, n in zip(sizes, orig, new):
            if n == o or (isinstance(a, int) and a == -1):
                out.append(a)
            elif isinstance(a, fx.Node):
                # A symbolic size that contains the batch: scale it (s·c·n/o == s·c' exactly).
                out.append(self.graph.call_function(operator.floordiv,
                                                    (self.graph.call_function(operator.mul, (a, n)), o)))
            else:
                out.append(n)
        return out
