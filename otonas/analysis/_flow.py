"""The channel-flow pass: one walk over the captured graph that gives every position
of every tensor dimension an id, unifies the ids that must be removed together, and
pins the ones that must stay. It reads the graph and writes only its own result."""

from __future__ import annotations

import operator
from typing import Any, cast

import numpy as np
import torch
from torch import fx
from torch.export.graph_signature import InputKind

from ..errors import AnalysisError
from ..ops import GQA, FlowContext, FlowResult, IdTable, node_shape, rule_for

__all__ = ["run_flow"]


def run_flow(program: torch.export.ExportedProgram, *, gqa: GQA = "kv") -> FlowResult:
    graph = program.graph
    sig = program.graph_signature
    result = FlowResult(IdTable(), {}, [], [], {}, {}, {}, [])
    ctx = FlowContext(result, graph, gqa=gqa)
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
    out = rule_for(target).flow(ctx, node)
    if out is None:
        return
    ctx.result.dims[node.name] = out
