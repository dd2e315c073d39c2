"""The channel-flow pass: one walk over the captured graph that gives every position
of every tensor dimension an id, unifies the ids that must be removed together, and
pins the ones that must stay. It reads the graph and writes only its own result."""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch import fx
from torch.export.graph_signature import InputKind

from .._errors import AnalysisError
from ._ids import IdTable
from ._registry import FLOW_RULES

__all__ = ["FlowResult", "PinEvent", "run_flow", "node_shape", "module_path"]

Dims = list  # list[np.ndarray], one id array per tensor dimension


@dataclass(frozen=True)
class PinEvent:
    op: str
    node: str
    module: str
    reason: str


def _hint(s: Any) -> int:
    if isinstance(s, torch.SymInt):
        hint = s.node.hint
        if hint is None:
            raise AnalysisError(f"symbolic size {s} has no example value")
        return int(hint)
    return int(s)


def node_shape(val: Any) -> tuple[int, ...] | None:
    if isinstance(val, torch.Tensor):
        return tuple(_hint(s) for s in val.shape)
    return None


def module_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    return list(stack.values())[-1][0]


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


class FlowContext:
    """What a rule sees: the ids of its arguments and helpers to mint, unify and pin."""

    def __init__(self, result: FlowResult, graph: fx.Graph) -> None:
        self.result = result
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


def run_flow(program: torch.export.ExportedProgram) -> FlowResult:
    graph = program.graph
    sig = program.graph_signature
    result = FlowResult(IdTable(), {}, [], [], {}, {}, {}, [])
    ctx = FlowContext(result, graph)
    ctx._seen = {}
    specs = {s.arg.name: s for s in sig.input_specs if hasattr(s.arg, "name")}
    for node in graph.nodes:
        ctx.node = node
        try:
            if node.op == "placeholder":
                _placeholder(ctx, node, specs.get(node.name))
            elif node.op == "call_function":
                _call(ctx, node)
            elif node.op == "output":
                _output(ctx, node, sig)
        except AnalysisError:
            raise
        except Exception as e:
            raise AnalysisError(f"channel-flow analysis failed at {ctx.where(node)}: {type(e).__name__}: {e}") from e
    from ._zero import check_zero_requirements

    check_zero_requirements(ctx)
    return result


def _placeholder(ctx: FlowContext, node: fx.Node, spec: Any) -> None:
    val = node.meta.get("val")
    shape = node_shape(val)
    kind = spec.kind if spec is not None else InputKind.USER_INPUT
    if kind == InputKind.PARAMETER:
        ctx.result.param_nodes[node.name] = spec.target
        ctx.param_derived.add(node)
    elif kind == InputKind.BUFFER:
        ctx.result.buffer_nodes[node.name] = spec.target
    elif kind in (InputKind.CONSTANT_TENSOR,):
        ctx.result.constant_nodes[node.name] = spec.target
    else:
        ctx.result.user_inputs.append(node.name)
    if shape is None:
        return
    if kind == InputKind.USER_INPUT:
        ctx.result.dims[node.name] = ctx.fresh_dims(shape, pin="model input")
    else:
        ctx.result.dims[node.name] = ctx.fresh_dims(shape)


def _output(ctx: FlowContext, node: fx.Node, sig: Any) -> None:
    from torch.export.graph_signature import OutputKind

    outs = node.args[0]
    assert isinstance(outs, (list, tuple))  # an exported graph returns a tuple/list of outputs
    kinds = [s.kind for s in sig.output_specs]
    for arg, kind in zip(outs, kinds):
        if kind == OutputKind.USER_OUTPUT:
            ctx.pin_all(ctx.dims(arg), "model output")


_PASSTHROUGH_NONTENSOR = {operator.mul, operator.add, operator.sub, operator.floordiv, operator.truediv,
                          operator.neg, operator.mod, operator.pow}


def _call(ctx: FlowContext, node: fx.Node) -> None:
    target = node.target
    if target is operator.getitem:
        src, idx = node.args
        d = ctx.result.dims.get(src.name) if isinstance(src, fx.Node) else None
        if isinstance(d, (list, tuple)) and d and not isinstance(d[0], np.ndarray):
            item = d[cast(int, idx)]  # getitem of a multi-output op: an int index
            if item is not None:
                ctx.result.dims[node.name] = item
            return
        shape = node_shape(node.meta.get("val"))
        if shape is not None:
            ctx.result.dims[node.name] = ctx.fresh_dims(shape, pin="getitem of an unanalysed value")
        return
    shapes = ctx.out_shapes(node)
    if all(s is None for s in shapes):
        return  # symbolic-size arithmetic, asserts: no tensor flows out
    rule = FLOW_RULES.lookup(target)
    if rule is None and isinstance(target, torch._ops.OpOverload) and torch.Tag.pointwise in target.tags:
        rule = FLOW_RULES.lookup("pointwise")
    if rule is None:
        rule = FLOW_RULES.lookup("unknown")
    assert rule is not None  # the "unknown" fallback is registered by _rules, which the package imports
    out = rule(ctx, node)
    if out is None:
        return
    ctx.result.dims[node.name] = out
