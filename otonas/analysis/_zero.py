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

from ..ops import FlowContext, node_shape, rule_for

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
    rule = rule_for(node.target)
    if str(node.target) == "<built-in function getitem>":
        src = node.args[0]
        if isinstance(src, fx.Node) and rule_for(src.target).structural:
            return _follow_ids(ctx, node, dim, list(src.all_input_nodes), memo, depth)
        if isinstance(src, fx.Node) and node.args[1] == 0:  # the value of (value, statistics...) ops
            return _is_zero(ctx, src, dim, memo, depth + 1)
        return False
    if shape is None:
        return False
    if rule.structural:
        return _follow_ids(ctx, node, dim, [a for a in node.all_input_nodes], memo, depth)
    rel = dim - len(shape)  # right-aligned, for broadcasting

    def operand(a: Any) -> tuple[bool, bool]:
        """(carries the dim at full size, is zero there)"""
        s = node_shape(a.meta.get("val")) if isinstance(a, fx.Node) else None
        if s is None or len(s) < -rel or s[rel] != shape[dim]:
            return False, False
        return True, _is_zero(ctx, a, len(s) + rel, memo, depth + 1)

    tensors = [a for a in node.args if isinstance(a, fx.Node)]
    if rule.zero_preserving:
        return _is_zero(ctx, node.args[0], dim, memo, depth + 1)
    if rule.zero_if == "any":
        return any(z for _, z in map(operand, tensors))
    if rule.zero_if == "all":
        results = [operand(a) for a in tensors]
        scalars = [a for a in node.args[1:] if not isinstance(a, fx.Node)]
        return bool(results) and all(full and z for full, z in results) and all(s == 0 for s in scalars
                                                                               if isinstance(s, (int, float)))
    if rule.zero_if == "numerator":
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
