"""Indexing and splitting: slice, narrow, select, index, index_select/gather, split,
chunk, unbind.

A slice or split takes a sub-range of the ids; the builder moves its bounds to the kept
positions. Indexing by a tensor or by position pins what it selects from."""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import fx

from ._code import ATOM, Call, Expr, method
from ._common import arg, args_of, first, input_of, kept_before, norm_dim, track_param, unknown
from ._context import BuildContext, Dims, FlowContext, node_shape
from ._rule import OpRule, op_key, register

INT_MAX = 2**62  # slice ends at or beyond this mean "to the end"


def _subscript(c: Call, dim: int, item: str, merge: bool) -> Expr:
    src = c.e("self")
    if dim >= 0:
        if merge and src.base is not None and (dim >= len(src.items) or src.items[dim] == ":"):
            items = list(src.items) + [":"] * max(0, dim + 1 - len(src.items))
            items[dim] = item
            return Expr(f"{src.base}[{', '.join(items)}]", ATOM, src.base, tuple(items))
        items = [":"] * dim + [item]
        text = f"{src.recv}[{', '.join(items)}]"
        return Expr(text, ATOM, src.recv, tuple(items)) if merge else Expr(text)
    items = ["..."] + [item] + [":"] * (-dim - 1)
    return Expr(f"{src.recv}[{', '.join(items)}]")


def _bound(c: Call, v: object) -> str:
    return "" if v is None else c.render(v).text


def _pieces(ctx: FlowContext, node: fx.Node, dim: int) -> tuple[Dims, int, list[tuple[int, ...] | None]]:
    X = ctx.dims(node.args[0])
    assert X is not None
    return X, norm_dim(dim, len(X)), ctx.out_shapes(node)


@register("aten.slice")
class Slice(OpRule):
    structural = True
    keeps_zero_tensor = True
    identity_if_same_shape = True

    def passes_input(self, node: fx.Node) -> fx.Node | None:
        if str(node.target) != "aten.slice.Tensor":
            return None
        start, end, step = arg(node, 2, "start"), arg(node, 3, "end"), arg(node, 4, "step", 1)
        if start in (None, 0) and (end is None or (isinstance(end, int) and end >= INT_MAX)) and step == 1:
            return cast(fx.Node, node.args[0])
        return None

    def flow(self, ctx: FlowContext, node: fx.Node) -> Dims:
        X = ctx.dims(node.args[0])
        assert X is not None
        track_param(ctx, node, node.args[0])
        d = norm_dim(int(arg(node, 1, "dim", 0)), len(X))
        start, end, step = arg(node, 2, "start"), arg(node, 3, "end"), arg(node, 4, "step", 1)
        if step != 1:
            ctx.pin(X[d], "strided slice")
        n = len(X[d])
        s = slice(None if start is None else int(start), None if end is None else min(int(end), n), int(step))
        return [*X[:d], X[d][s], *X[d + 1:]]

    def rewrite(self, ctx: BuildContext, node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
        src = input_of(node)
        n = len(ctx.orig(src))
        d = int(args[1]) % n if len(args) > 1 else 0
        length = ctx.orig(src)[d]
        if first(ctx.masks(src))[d].all():
            return node.target, args, kwargs  # nothing removed along this dim (it may be the free batch dim)
        for i in (2, 3):
            if len(args) > i and isinstance(args[i], int):
                v = args[i]
                v = max(0, min(v + length if v < 0 else v, length))
                if v < length:  # a bound at the end stays "to the end": the dim may also hold the free batch
                    args[i] = kept_before(ctx, src, d, v)
        return node.target, args, kwargs

    def code(self, c: Call) -> Expr | None:
        if op_key(c.target).overload not in ("Tensor",):
            return None
        start, end, step = c["start"], c["end"], c["step"]
        if start == 0:
            start = None
        if isinstance(end, int) and end >= INT_MAX:
            end = None
        item = f"{_bound(c, start)}:{_bound(c, end)}" + (f":{_bound(c, step)}" if step not in (1, None) else "")
        return _subscript(c, int(c["dim"]), item, merge=True)


@register("aten.narrow")
class Narrow(OpRule):
    structural = True
    identity_if_same_shape = True

    def flow(self, ctx: FlowContext, node: fx.Node) -> Dims:
        X = ctx.dims(node.args[0])
        assert X is not None
        d = norm_dim(int(args_of(node)[1]), len(X))
        start = int(args_of(node)[2]) % max(len(X[d]), 1)
        return [*X[:d], X[d][start:start + int(args_of(node)[3])], *X[d + 1:]]

    def rewrite(self, ctx: BuildContext, node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
        src = input_of(node)
        d = int(args[1]) % len(ctx.orig(src))
        start, length = int(args[2]) % ctx.orig(src)[d], int(args[3])
        keep = first(ctx.masks(src))[d]
        args[2], args[3] = int(keep[:start].sum()), int(keep[start:start + length].sum())
        return node.target, args, kwargs

    def code(self, c: Call) -> Expr:
        return method(c.e("self"), "narrow", c.e("dim"), c.e("start"), c.e("length"))


@register("aten.select")
class Select(OpRule):
    structural = True

    def flow(self, ctx: FlowContext, node: fx.Node) -> Dims:
        X = ctx.dims(node.args[0])
        assert X is not None
        track_param(ctx, node, node.args[0])
        d = norm_dim(int(args_of(node)[1]), len(X))
        index = int(args_of(node)[2]) % len(X[d])
        ctx.pin(X[d][index:index + 1], "selected by index")
        return [*X[:d], *X[d + 1:]]

    def rewrite(self, ctx: BuildContext, node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
        src = input_of(node)
        d = int(args[1]) % len(ctx.orig(src))
        idx = int(args[2]) % ctx.orig(src)[d]
        args[2] = kept_before(ctx, src, d, idx)
        return node.target, args, kwargs

    def code(self, c: Call) -> Expr | None:
        if op_key(c.target).overload not in ("int",):
            return None
        return _subscript(c, int(c["dim"]), c.t("index"), merge=False)


@register("aten.index")
class Index(OpRule):
    def flow(self, ctx: FlowContext, node: fx.Node) -> Dims:
        X = ctx.dims(node.args[0])
        assert X is not None
        track_param(ctx, node, node.args[0])  # rows of a parameter gathered by index (MoE experts) are its values
        indices = list(args_of(node)[1])
        used = [i for i, ix in enumerate(indices) if ix is not None]
        for i in used:
            ctx.pin(X[i], "indexed by a tensor")
        out_shape = ctx.shape(node)
        if used == list(range(len(used))):
            rest = X[len(used):]
            lead = len(out_shape) - len(rest)
            return [*[ctx.fresh(s) for s in out_shape[:lead]], *rest]
        return unknown(ctx, node)

    def code(self, c: Call) -> Expr | None:
        if op_key(c.target).overload not in ("Tensor",):
            return None
        items = [":" if i is None else c.render(i).text for i in c["indices"]]
        return Expr(f"{c.e('self').recv}[{', '.join(items)}]")


class _IndexAlong(OpRule):
    def flow(self, ctx: FlowContext, node: fx.Node) -> Dims:
        X = ctx.dims(node.args[0])
        assert X is not None
        d = norm_dim(int(args_of(node)[1]), len(X))
        ctx.pin(X[d], f"indexed by {node.target}")
        out_shape = ctx.shape(node)
        if str(node.target).startswith("aten.index_select"):
            return [*X[:d], ctx.fresh(out_shape[d]), *X[d + 1:]]
        return unknown(ctx, node)


@register("aten.index_select")
class IndexSelect(_IndexAlong):
    def code(self, c: Call) -> Expr:
        return method(c.e("self"), "index_select", c.e("dim"), c.e("index"))


@register("aten.gather")
class Gather(_IndexAlong):
    def code(self, c: Call) -> Expr:
        return method(c.e("self"), "gather", c.e("dim"), c.e("index"))


@register("aten.take_along_dim")
class TakeAlongDim(_IndexAlong):
    pass


class _Split(OpRule):
    def flow(self, ctx: FlowContext, node: fx.Node) -> tuple[Dims, ...]:
        X, d, shapes = _pieces(ctx, node, int(arg(node, 2, "dim", 0)))
        outs, start = [], 0
        for s in shapes:
            assert s is not None
            n = s[d]
            outs.append([*X[:d], X[d][start:start + n], *X[d + 1:]])
            start += n
        return tuple(outs)


def _count_sizes(node: fx.Node) -> int | None:
    sizes = node.args[1] if len(node.args) > 1 else node.kwargs.get("split_sizes")
    return len(sizes) if isinstance(sizes, (list, tuple)) else None


def _count_val(val: Any) -> int | None:
    return len(val) if isinstance(val, (list, tuple)) else None


class _SplitRewrite(_Split):
    def rewrite(self, ctx: BuildContext, node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
        src = input_of(node)
        ndim = len(ctx.orig(src))
        d = int(args[2] if len(args) > 2 else kwargs.pop("dim", 0)) % ndim
        pieces = [s[d] for s in ctx.sizes(node)]
        orig = [node_shape(v)[d] for v in node.meta["val"]]  # type: ignore[index]
        if pieces == orig:
            return node.target, args, kwargs
        return torch.ops.aten.split_with_sizes.default, [args[0], pieces, d], {}


def _split_code(c: Call) -> Expr:
    """``x.split(sizes[, dim=d])``, the code of every split overload."""
    sizes = c["split_size"] if "split_size" in c.values else c["split_sizes"]
    dim = [] if c.is_default("dim") else [f"dim={c.t('dim')}"]
    return method(c.e("self"), "split", c.render(sizes), *dim)


@register("aten.split")
class Split(_SplitRewrite):
    structural = True

    def num_outputs(self, node: fx.Node, val: Any) -> int | None:
        return _count_val(val)

    def code(self, c: Call) -> Expr | None:
        if op_key(c.target).overload not in ("Tensor",):
            return None
        return _split_code(c)


@register("aten.split_with_sizes")
class SplitWithSizes(_SplitRewrite):
    structural = True

    def num_outputs(self, node: fx.Node, val: Any) -> int | None:
        return _count_sizes(node)

    def code(self, c: Call) -> Expr:
        return _split_code(c)


@register("aten.unsafe_split")
class UnsafeSplit(_SplitRewrite):
    def code(self, c: Call) -> Expr:
        return _split_code(c)


@register("aten.unsafe_split_with_sizes")
class UnsafeSplitWithSizes(OpRule):
    def num_outputs(self, node: fx.Node, val: Any) -> int | None:
        return _count_sizes(node)

    def code(self, c: Call) -> Expr:
        return _split_code(c)


@register("aten.chunk")
class Chunk(_SplitRewrite):
    structural = True

    def num_outputs(self, node: fx.Node, val: Any) -> int | None:
        return _count_val(val)

    def code(self, c: Call) -> Expr:
        return method(c.e("self"), "chunk", c.e("chunks"), *([] if c.is_default("dim") else [f"dim={c.t('dim')}"]))


@register("aten.tensor_split")
class TensorSplit(_Split):
    pass


@register("aten.unbind")
class Unbind(OpRule):
    structural = True

    def num_outputs(self, node: fx.Node, val: Any) -> int | None:
        return _count_val(val)

    def flow(self, ctx: FlowContext, node: fx.Node) -> tuple[Dims, ...]:
        X, d, shapes = _pieces(ctx, node, int(arg(node, 1, "dim", 0)))
        ctx.pin(X[d], "unbound into separate tensors")
        return tuple([*X[:d], *X[d + 1:]] for _ in shapes)

    def code(self, c: Call) -> Expr | None:
        if op_key(c.target).overload not in ("int",):
            return None
        return method(c.e("self"), "unbind", *([] if c.is_default("dim") else [c.e("dim")]))
