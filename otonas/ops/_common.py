"""Helpers that rules of several families share: reading node arguments, the two flow
fallbacks (broadcast, pin everything), and the size arithmetic of builder rewrites."""

from __future__ import annotations

from typing import Any, cast

import numpy as np
from torch import fx

from ._code import Call, LayerCall, literal, squash
from ._context import BuildContext, Dims, FlowContext

__all__ = ["args_of", "arg", "mutated_arg", "norm_dim", "track_param", "tensor_args", "unknown", "broadcast", "grouped_union",
           "input_of", "first", "kept_before", "scale_groups", "resized", "layer_zero", "size_args", "dims_arg",
           "changed_kw", "nn_kw"]


# --- reading a node -----------------------------------------------------------------------
def args_of(node: fx.Node) -> tuple[Any, ...]:
    """``node.args``, loosely typed: fx types each as any ``Argument``; the op's schema
    fixes what it is (an int, a list of ints, a tensor node, ...)."""
    return node.args


def arg(node: fx.Node, i: int, name: str, default: Any = None) -> Any:
    """Argument ``i`` of ``node``, or its keyword ``name``, or ``default``."""
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def norm_dim(d: int, n: int) -> int:
    return d + n if d < 0 else d


def tensor_args(node: fx.Node) -> list[fx.Node]:
    """Every node among ``node``'s arguments and keyword arguments (top level)."""
    return [a for a in list(node.args) + list(node.kwargs.values()) if isinstance(a, fx.Node)]


def mutated_arg(node: fx.Node) -> int | None:
    """Index of the argument an in-place op writes to; -1 when it writes to several or to one
    we cannot tell; None for ops that write nothing."""
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return None
    written = [i for i, a in enumerate(schema.arguments) if a.alias_info is not None and a.alias_info.is_write]
    if not written:
        return None
    return written[0] if len(written) == 1 else -1


# --- flow ---------------------------------------------------------------------------------
def track_param(ctx: FlowContext, node: fx.Node, src: Any) -> None:
    """``node`` is a view or copy of ``src``: if that is (derived from) a parameter, so is ``node``."""
    if isinstance(src, fx.Node) and src in ctx.param_derived:
        ctx.param_derived.add(node)


def unknown(ctx: FlowContext, node: fx.Node) -> Any:
    """The flow of an op without a rule: every channel it reads or writes is pinned."""
    reason = f"no channel rule for {node.target}"
    for a in node.all_input_nodes:
        d = ctx.result.dims.get(a.name)
        if isinstance(d, list) and d and isinstance(d[0], np.ndarray):
            ctx.pin_all(d, reason)
    shapes = ctx.out_shapes(node)
    outs = [ctx.fresh_dims(s, pin=reason) if s is not None else None for s in shapes]
    val = node.meta.get("val")
    return tuple(outs) if isinstance(val, (list, tuple)) else outs[0]


def broadcast(ctx: FlowContext, node: fx.Node, tensors: list[Any]) -> Dims:
    """The flow of an elementwise op: dims right-aligned (numpy broadcasting); operands that
    carry a dim at full size share its ids."""
    out_shape = ctx.shape(node)
    n = len(out_shape)
    ins = [d for d in (ctx.dims(t) for t in tensors) if d is not None]
    out: Dims = []
    for i, size in enumerate(out_shape):
        members = []
        for d in ins:
            j = len(d) - n + i
            if j >= 0 and len(d[j]) == size:
                members.append(d[j])
        if not members:
            out.append(ctx.fresh(size))
            continue
        for m in members[1:]:
            ctx.union(members[0], m)
        out.append(members[0])
    return out


def grouped_union(ctx: FlowContext, a: np.ndarray, b: np.ndarray, groups: int) -> None:
    """Unify each of ``groups`` blocks of ``a`` with the same block of ``b``, whole."""
    blocks = np.concatenate([a.reshape(groups, -1), b.reshape(groups, -1)], axis=1)
    ctx.ids.union(blocks[:, 1:].ravel(), np.repeat(blocks[:, 0], blocks.shape[1] - 1))


# --- rewrite ------------------------------------------------------------------------------
def input_of(node: fx.Node) -> fx.Node:
    """The tensor ``node`` operates on: its first argument (a node, by the op's schema)."""
    return cast(fx.Node, node.args[0])


def first(x: Any) -> Any:
    """The per-dim list of a single-output node (or of the first output of a multi-output one)."""
    return x if isinstance(x, list) and (not x or isinstance(x[0], (int, np.ndarray))) else x[0]


def kept_before(ctx: BuildContext, src: fx.Node, dim: int, index: int) -> int:
    return int(first(ctx.masks(src))[dim][:index].sum())


def scale_groups(ctx: BuildContext, node: fx.Node, groups: int) -> int:
    src = input_of(node)
    orig, new = ctx.orig(src)[1], first(ctx.sizes(src))[1]
    return groups * new // orig if orig else groups


# --- code ---------------------------------------------------------------------------------
def size_args(c: Call, name: str) -> list[str]:
    """A size list spelled as varargs: ``x.view(batch, 8, -1)``."""
    return [c.render(s).text for s in c[name]]


def dims_arg(c: Call, name: str) -> str:
    return c.render(squash(c[name]) if len(c[name]) == 1 else tuple(c[name])).text


def changed_kw(c: Call, *names: str) -> list[str]:
    """``name=value`` for each argument that differs from its schema default."""
    return c.changed(*names)


def nn_kw(c: LayerCall, name: str, default: Any, as_name: str | None = None) -> list[str]:
    """``eps=0.001`` where the value differs from the nn layer's default."""
    v = c[name]
    return [] if v == default else [f"{as_name or name}={literal(v).text}"]


def resized(ctx: BuildContext, node: fx.Node, args: list[Any], kwargs: dict[str, Any], i: int) -> Any:
    """The node with its size argument ``i`` (a list) rewritten to the kept sizes."""
    args[i] = ctx.size_list(list(args[i]), ctx.orig(node), ctx.sizes(node))
    return node.target, args, kwargs


def layer_zero(node: fx.Node, zero: set[str]) -> bool:
    """A layer (weight at 1, optional bias at 2) is zero once its weight and bias are."""
    w, b = node.args[1], (node.args[2] if len(node.args) > 2 else node.kwargs.get("bias"))
    return isinstance(w, fx.Node) and w.name in zero and (b is None or (isinstance(b, fx.Node) and b.name in zero))
