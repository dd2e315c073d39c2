"""Shape ops: view, reshape, flatten, squeeze, permute, transpose, expand, repeat.

A reshape maps ids through the shape change (a channel can become a block of features;
a split dim is coarsened to its outer axis); the builder rewrites the size arguments to
the kept sizes. These ops move positions without changing values (``structural``)."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import fx

from ._code import Call, Expr, method
from ._common import args_of, input_of, norm_dim, resized, size_args, track_param
from ._context import BuildContext, Dims, FlowContext
from ._rule import OpRule, op_key, register

__all__ = ["map_reshape", "split_ids", "merge_ids"]


class Reshape(OpRule):
    """view / reshape / flatten / unflatten / squeeze / unsqueeze and their ``_as`` forms."""

    structural = True

    def flow(self, ctx: FlowContext, node: fx.Node) -> Dims:
        X = ctx.dims(node.args[0])
        assert X is not None
        track_param(ctx, node, node.args[0])
        in_shape = tuple(len(d) for d in X)
        return map_reshape(ctx, X, in_shape, ctx.shape(node))


@register("aten.view")
class View(Reshape):
    identity_if_same_shape = True
    keeps_zero_tensor = True

    def rewrite(self, ctx: BuildContext, node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
        return resized(ctx, node, args, kwargs, 1)

    def code(self, c: Call) -> Expr | None:
        if op_key(c.target).overload not in ("default",):
            return None
        return method(c.e("self"), "view", *size_args(c, "size"))


class _ReshapeOp(Reshape):
    identity_if_same_shape = True

    def rewrite(self, ctx: BuildContext, node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
        return resized(ctx, node, args, kwargs, 1)

    def code(self, c: Call) -> Expr:
        return method(c.e("self"), "reshape", *size_args(c, "shape" if "shape" in c.values else "size"))


@register("aten.reshape")
class ReshapeOp(_ReshapeOp):
    keeps_zero_tensor = True


@register("aten._unsafe_view")
class UnsafeView(_ReshapeOp):
    pass


@register("aten.flatten")
class Flatten(Reshape):
    keeps_zero_tensor = True

    def code(self, c: Call) -> Expr | None:
        if op_key(c.target).overload not in ("using_ints",):
            return None
        args = []
        if not (c.is_default("start_dim") and c.is_default("end_dim")):
            args.append(c.e("start_dim"))
        if not c.is_default("end_dim"):
            args.append(c.e("end_dim"))
        return method(c.e("self"), "flatten", *args)


@register("aten.unflatten")
class Unflatten(Reshape):
    def rewrite(self, ctx: BuildContext, node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
        d = int(args[1]) % len(ctx.orig(input_of(node)))
        k = len(args[2])
        args[2] = ctx.size_list(list(args[2]), ctx.orig(node)[d:d + k], ctx.sizes(node)[d:d + k])
        return node.target, args, kwargs

    def code(self, c: Call) -> Expr | None:
        if op_key(c.target).overload not in ("int",):
            return None
        return method(c.e("self"), "unflatten", c.e("dim"), c.render(tuple(c["sizes"])))


@register("aten.squeeze", "aten.unsqueeze")
class Squeeze(Reshape):
    keeps_zero_tensor = True

    def code(self, c: Call) -> Expr:
        name = op_key(c.target).name
        if "dim" in c.values:
            return method(c.e("self"), name, c.e("dim"))
        if "dims" in c.values:
            return method(c.e("self"), name, c.render(tuple(c["dims"])))
        return method(c.e("self"), name)


@register("aten.view_as", "aten.reshape_as")
class ReshapeAs(Reshape):
    structural = False
    identity_if_same_shape = True


def map_reshape(ctx: FlowContext, X: Dims, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Dims:
    out: list[np.ndarray | None] = [None] * len(out_shape)
    for j, s in enumerate(out_shape):
        if s == 1:
            out[j] = ctx.fresh(1)
    ins = [i for i, s in enumerate(in_shape) if s != 1]
    outs = [j for j, s in enumerate(out_shape) if s != 1]
    if 0 in in_shape or 0 in out_shape:
        return [ctx.fresh(s) for s in out_shape]
    i = j = 0
    while i < len(ins) and j < len(outs):
        ci, cj = [ins[i]], [outs[j]]
        pi, pj = in_shape[ins[i]], out_shape[outs[j]]
        while pi != pj:
            if pi < pj:
                i += 1
                ci.append(ins[i])
                pi *= in_shape[ins[i]]
            else:
                j += 1
                cj.append(outs[j])
                pj *= out_shape[outs[j]]
        i += 1
        j += 1
        if len(ci) == 1 and len(cj) == 1:
            out[cj[0]] = X[ci[0]]
            continue
        _map_chunk(ctx, X, ci, cj, in_shape, out_shape, out)
    return [o if o is not None else ctx.fresh(s) for o, s in zip(out, out_shape)]


def _strides(sizes: list[int]) -> set[int]:
    acc, res = 1, {1}
    for s in reversed(sizes):
        acc *= s
        res.add(acc)
    return res


def _map_chunk(ctx: FlowContext, X: Dims, ci: list[int], cj: list[int], in_shape: tuple[int, ...],
               out_shape: tuple[int, ...], out: list[np.ndarray | None]) -> None:
    in_sizes = [in_shape[i] for i in ci]
    out_sizes = [out_shape[j] for j in cj]
    bounds = sorted(_strides(in_sizes) | _strides(out_sizes))
    if any(b % a for a, b in zip(bounds, bounds[1:])):
        reason = "reshape mixes dimensions that do not factor"
        for i in ci:
            ctx.pin(X[i], reason)
        for j, s in zip(cj, out_sizes):
            out[j] = ctx.fresh(s, pin=reason)
        return
    atoms_inner_first = [b // a for a, b in zip(bounds, bounds[1:])]
    atoms = atoms_inner_first[::-1]  # outer to inner
    atom_ids: list[np.ndarray] = []
    k = 0
    for i, size in zip(ci, in_sizes):
        n, prod = 0, 1
        while prod < size:
            prod *= atoms[k + n]
            n += 1
        atom_ids.extend(split_ids(ctx, X[i], atoms[k:k + n]))
        k += n
    k = 0
    for j, size in zip(cj, out_sizes):
        n, prod = 0, 1
        while prod < size:
            prod *= atoms[k + n]
            n += 1
        out[j] = merge_ids(ctx, atom_ids[k:k + n], atoms[k:k + n])
        k += n


SMALL_OUTER_AXIS = 3  # an outer axis this small is a selector (q/k/v of a packed projection), not a group


def split_ids(ctx: FlowContext, ids: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """Split one dim's ids into several axes.

    Ids that vary along one axis only stay with it. Ids that vary along several axes
    are coarsened: the outer axis (heads, conv groups) carries them and each of its
    blocks becomes one unit — unless it is tiny (a q/k/v selector), in which case the
    innermost varying axis carries them. Other axes along which ids vary get fresh pinned
    ids (their positions are channels the carrier stands for); constant axes fresh ones.
    """
    if len(sizes) == 1:
        return [ids]
    grid = ids.reshape(sizes)
    varying = [a for a in range(len(sizes)) if not (grid == grid.take([0], axis=a)).all()]
    if not varying:
        carrier = 0
    elif len(varying) == 1:
        carrier = varying[0]
    else:
        big = [a for a in varying if sizes[a] > SMALL_OUTER_AXIS]
        carrier = big[0] if big else varying[-1]
        rows = np.moveaxis(grid, carrier, 0).reshape(sizes[carrier], -1)
        ctx.ids.union(rows[:, 1:].ravel(), np.repeat(rows[:, 0], rows.shape[1] - 1))
    res = []
    for a, s in enumerate(sizes):
        if a == carrier:
            index = [0] * len(sizes)
            index[a] = slice(None)  # type: ignore[call-overload]
            res.append(np.ascontiguousarray(grid[tuple(index)]))
        elif a in varying:
            # its positions are different channels that the carrier axis stands for: removing
            # one along this axis alone would not match the producer's rows, so it is pinned
            res.append(ctx.fresh(s, pin="a reshape splits channels into blocks; this axis is not tracked"))
        else:
            res.append(ctx.fresh(s))
    return res


def merge_ids(ctx: FlowContext, parts: list[np.ndarray], sizes: list[int]) -> np.ndarray:
    """Merge several axes into one dim: the axis that carries channels gives its ids to
    every position (a channel becomes a block of features); a second channel axis is pinned."""
    if len(parts) == 1:
        return parts[0]
    channel = [a for a, p in enumerate(parts) if ctx.ids.is_channel(p).any()]
    if channel:
        carrier = channel[0]
        for a in channel[1:]:
            ctx.pin(parts[a], "reshape merges two channel dimensions into one")
    else:
        pinned = [a for a, p in enumerate(parts) if ctx.ids.is_pinned(p).any()]
        if not pinned:
            return ctx.fresh(int(np.prod(sizes)))
        carrier = pinned[0]
    shape = [1] * len(sizes)
    shape[carrier] = sizes[carrier]
    return np.broadcast_to(parts[carrier].reshape(shape), sizes).ravel().copy()


@register("aten.permute")
class Permute(OpRule):
    structural = True
    keeps_zero_tensor = True

    def flow(self, ctx: FlowContext, node: fx.Node) -> Dims:
        X = ctx.dims(node.args[0])
        assert X is not None
        track_param(ctx, node, node.args[0])
        return [X[norm_dim(d, len(X))] for d in args_of(node)[1]]

    def code(self, c: Call) -> Expr:
        return method(c.e("self"), "permute", *size_args(c, "dims"))


class _Transpose(OpRule):
    def flow(self, ctx: FlowContext, node: fx.Node) -> Dims:
        X = list(ctx.dims(node.args[0]) or [])
        track_param(ctx, node, node.args[0])
        a, b = (norm_dim(int(d), len(X)) for d in args_of(node)[1:3])
        X[a], X[b] = X[b], X[a]
        return X


@register("aten.transpose")
class Transpose(_Transpose):
    structural = True
    keeps_zero_tensor = True

    def code(self, c: Call) -> Expr | None:
        if op_key(c.target).overload not in ("int",):
            return None
        return method(c.e("self"), "transpose", c.e("dim0"), c.e("dim1"))


@register("aten.swapaxes", "aten.swapdims")
class SwapAxes(_Transpose):
    pass


@register("aten.t")
class T(OpRule):
    structural = True

    def flow(self, ctx: FlowContext, node: fx.Node) -> Dims:
        X = list(ctx.dims(node.args[0]) or [])
        track_param(ctx, node, node.args[0])
        return X[::-1]

    def code(self, c: Call) -> Expr:
        return method(c.e("self"), "t")


class _Expand(OpRule):
    def flow(self, ctx: FlowContext, node: fx.Node) -> Dims:
        X = ctx.dims(node.args[0])
        assert X is not None
        track_param(ctx, node, node.args[0])
        out_shape = ctx.shape(node)
        n = len(out_shape)
        out: Dims = []
        for i, size in enumerate(out_shape):
            j = len(X) - n + i
            out.append(X[j] if j >= 0 and len(X[j]) == size else ctx.fresh(size))
        return out


@register("aten.expand")
class Expand(_Expand):
    structural = True
    identity_if_same_shape = True

    def rewrite(self, ctx: BuildContext, node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
        return resized(ctx, node, args, kwargs, 1)

    def code(self, c: Call) -> Expr:
        return method(c.e("self"), "expand", *size_args(c, "size"))


@register("aten.expand_as")
class ExpandAs(_Expand):
    identity_if_same_shape = True


@register("aten.broadcast_to")
class BroadcastTo(_Expand):
    def rewrite(self, ctx: BuildContext, node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
        return resized(ctx, node, args, kwargs, 1)


@register("aten.repeat")
class Repeat(OpRule):
    structural = True

    def flow(self, ctx: FlowContext, node: fx.Node) -> Dims:
        X = ctx.dims(node.args[0])
        assert X is not None
        reps = list(args_of(node)[1])
        n = len(reps)
        out: Dims = []
        for i, r in enumerate(reps):
            j = len(X) - n + i
            out.append(np.tile(X[j], int(r)) if j >= 0 else ctx.fresh(int(r)))
        return out

    def code(self, c: Call) -> Expr:
        return method(c.e("self"), "repeat", *size_args(c, "repeats"))
