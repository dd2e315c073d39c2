"""Zero-invariance where no parameter guards it.

A channel consumed by a layer is safe to remove once its group is zero, because the
layer's input columns are part of the group. A channel summed *without* a parameter
(an activation-by-activation matmul, ``sum`` over channels, query·key in attention)
is safe only if its value is exactly zero there once the group is zero. This pass
decides that conservatively from the ops between the channel's layers and the sum,
and pins the channels where it cannot prove it.
"""

from __future__ import annotations

from typing import Any

from torch import fx

from ._flow import FlowContext, node_shape
from ._registry import op_key

# f(0) == 0, one tensor input
_ZERO_PRESERVING = {
    "aten.relu", "aten.relu_", "aten.gelu", "aten.gelu_", "aten.silu", "aten.silu_", "aten.hardswish",
    "aten.hardswish_", "aten.leaky_relu", "aten.leaky_relu_", "aten.elu", "aten.elu_", "aten.tanh", "aten.tanh_",
    "aten.neg", "aten.clone", "aten.contiguous", "aten.dropout", "aten.dropout_", "aten.hardtanh", "aten.hardtanh_",
    "aten.relu6", "aten.mish", "aten.mish_", "aten.sin", "aten.abs", "aten.square", "aten.alias", "aten.detach",
    "aten._to_copy", "aten.to", "aten.selu", "aten.celu", "aten.softshrink", "aten.hardshrink", "aten.feature_dropout",
}
_MUL = {"aten.mul", "aten.mul_"}
# ops that move positions around without changing values: follow the ids to the input
_STRUCTURAL = {
    "aten.view", "aten.reshape", "aten._unsafe_view", "aten.permute", "aten.transpose", "aten.t", "aten.select",
    "aten.slice", "aten.unflatten", "aten.flatten", "aten.squeeze", "aten.unsqueeze", "aten.expand", "aten.cat",
    "aten.narrow", "aten.split", "aten.split_with_sizes", "aten.chunk", "aten.unbind", "aten.max_pool1d",
    "aten.max_pool2d", "aten.max_pool3d", "aten.avg_pool1d", "aten.avg_pool2d", "aten.avg_pool3d",
    "aten.adaptive_avg_pool1d", "aten.adaptive_avg_pool2d", "aten.adaptive_avg_pool3d", "aten.upsample_nearest2d",
    "aten.upsample_bilinear2d", "aten.pad", "aten.constant_pad_nd", "aten.repeat",
}
_ADD = {"aten.add", "aten.add_", "aten.sub", "aten.sub_"}
_DIV = {"aten.div", "aten.div_"}


def check_zero_requirements(ctx: FlowContext) -> None:
    memo: dict[tuple[str, int], bool] = {}
    for alternatives, event in ctx.result.zero_requirements:
        if any(_is_zero(ctx, n, d, memo, 0) for n, d in alternatives):
            continue
        for n, d in alternatives:
            dims = ctx.dims(n)
            if dims is not None:
                ctx.ids.pin(dims[d], event)


def _is_zero(ctx: FlowContext, node: Any, dim: int, memo: dict[tuple[str, int], bool], depth: int) -> bool:
    """Is ``node`` exactly zero along ``dim`` (at the positions of a zeroed group)?"""
    if not isinstance(node, fx.Node) or depth > 200:
        return False
    key = (node.name, dim)
    if key in memo:
        return memo[key]
    memo[key] = False  # cycles cannot occur in a DAG, but be safe
    res = _decide(ctx, node, dim, memo, depth)
    memo[key] = res
    return res


def _decide(ctx: FlowContext, node: fx.Node, dim: int, memo: dict[tuple[str, int], bool], depth: int) -> bool:
    if node.op == "placeholder":
        return node.name in ctx.result.param_nodes
    if node.op != "call_function":
        return False
    if dim in ctx.zero_out.get(node, ()):
        return True
    shape = node_shape(node.meta.get("val"))
    _, packet = op_key(node.target)
    if str(node.target) == "<built-in function getitem>":
        src = node.args[0]
        if isinstance(src, fx.Node) and op_key(src.target)[1] in _STRUCTURAL:
            return _follow_ids(ctx, node, dim, list(src.all_input_nodes), memo, depth)
        if isinstance(src, fx.Node) and node.args[1] == 0:  # the value of (value, statistics...) ops
            return _is_zero(ctx, src, dim, memo, depth + 1)
        return False
    if shape is None:
        return False
    if packet in _STRUCTURAL:
        return _follow_ids(ctx, node, dim, [a for a in node.all_input_nodes], memo, depth)
    rel = dim - len(shape)  # right-aligned, for broadcasting

    def operand(a: Any) -> tuple[bool, bool]:
        """(carries the dim at full size, is zero there)"""
        s = node_shape(a.meta.get("val")) if isinstance(a, fx.Node) else None
        if s is None or len(s) < -rel or s[rel] != shape[dim]:
            return False, False
        return True, _is_zero(ctx, a, len(s) + rel, memo, depth + 1)

    tensors = [a for a in node.args if isinstance(a, fx.Node)]
    if packet in _ZERO_PRESERVING:
        return _is_zero(ctx, node.args[0], dim, memo, depth + 1)
    if packet in _MUL:
        return any(z for _, z in map(operand, tensors))
    if packet in _ADD:
        results = [operand(a) for a in tensors]
        scalars = [a for a in node.args[1:] if not isinstance(a, fx.Node)]
        return bool(results) and all(full and z for full, z in results) and all(s == 0 for s in scalars
                                                                               if isinstance(s, (int, float)))
    if packet in _DIV:
        return operand(node.args[0])[1]
    return False


def _follow_ids(ctx: FlowContext, node: fx.Node, dim: int, sources: list[fx.Node],
                memo: dict[tuple[str, int], bool], depth: int) -> bool:
    """Zero if every input dim that carries the same channels is zero."""
    mine = ctx.dims(node)
    if mine is None or dim >= len(mine):
        return False
    roots = set(ctx.ids.find(mine[dim]).tolist())
    found = False
    for src in sources:
        d = ctx.result.dims.get(src.name)
        if not (isinstance(d, list) and d and hasattr(d[0], "dtype")):
            continue
        for k, ids in enumerate(d):
            if roots & set(ctx.ids.find(ids).tolist()):
                found = True
                if not _is_zero(ctx, src, k, memo, depth + 1):
                    return False
    return found
