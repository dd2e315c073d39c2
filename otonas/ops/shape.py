"""Shape ops: view, reshape, flatten, squeeze, permute, transpose, expand, repeat.

A reshape maps ids through the shape change (a channel can become a block of features;
a split dim is coarsened to its outer axis); the builder rewrites the size arguments to
the kept sizes. These ops move positions without changing values (``structural``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import numpy as np
import torch
from torch import fx

from ._code import Call, Expr, method
from ._common import args_of, input_of, norm_dim, resized, size_args, track_param
from ._context import KV_HEADS_KEPT, BuildContext, Dims, FlowContext
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
    out_spans = _atom_spans(out_sizes, atoms)
    out_dim_of_atom = {k: j for j, (k, n) in zip(cj, out_spans) if n == 1}  # an atom that is a whole output dim
    node = ctx.node
    for i, (k, n) in zip(ci, _atom_spans(in_sizes, atoms)):

        def selector(axis: int, start: int = k) -> bool:
            j = out_dim_of_atom.get(start + axis)
            return j is None or node is None or selected_downstream(node, j)

        atom_ids.extend(split_ids(ctx, X[i], atoms[k:k + n], selector))
    for j, (k, n) in zip(cj, out_spans):
        out[j] = merge_ids(ctx, atom_ids[k:k + n], atoms[k:k + n])


def _atom_spans(sizes: list[int], atoms: list[int]) -> list[tuple[int, int]]:
    """For each dim of ``sizes`` in turn, (first atom, number of atoms) whose product it is."""
    spans, k = [], 0
    for size in sizes:
        n, prod = 0, 1
        while prod < size:
            prod *= atoms[k + n]
            n += 1
        spans.append((k, n))
        k += n
    return spans


SMALL_OUTER_AXIS = 3  # an outer axis this small is a selector (q/k/v of a packed projection), not a group


def split_ids(ctx: FlowContext, ids: np.ndarray, sizes: list[int],
              selector: Callable[[int], bool] | None = None) -> list[np.ndarray]:
    """Split one dim's ids into several axes.

    Ids that vary along one axis only stay with it. Ids that vary along several axes
    are coarsened: the outer axis (heads, conv groups, the key/value heads of grouped-query
    attention) carries them and each of its blocks becomes one unit — unless it is tiny and
    a selector (the q/k/v axis of a packed projection, which a later ``select``/``unbind``
    takes apart: ``selector(axis)`` tells), in which case the next varying axis carries them
    when there are three (q/k/v, heads, head dim), else the innermost one. Without
    ``selector`` every tiny outer axis counts as one. Other axes along which ids vary get
    fresh pinned ids (their positions are channels the carrier stands for); constant axes
    fresh ones.
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
        outer = varying[0]
        if sizes[outer] > SMALL_OUTER_AXIS or (selector is not None and not selector(outer)):
            carrier = outer
        elif selector is not None and len(varying) >= 3:
            carrier = varying[1]
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


_LAYOUT_OPS = ("aten.contiguous", "aten.clone", "aten.alias", "aten.detach", "aten._to_copy", "aten.to",
               "aten.expand", "aten.type_as")


def selected_downstream(node: fx.Node, dim: int, hops: int = 8) -> bool:
    """Whether dim ``dim`` of ``node``'s output is taken apart position by position further on
    (``select``, ``unbind``, ``split``/``chunk`` along it), following it through layout ops
    (transpose, permute, (un)squeeze, copies) for up to ``hops`` steps: the mark of a q/k/v
    selector axis, which a head axis never gets."""
    frontier = [(node, dim)]
    for _ in range(hops):
        nxt = []
        for n, d in frontier:
            rank = len(n.meta["val"].shape) if isinstance(n.meta.get("val"), torch.Tensor) else None
            if rank is None:
                continue
            for u in n.users:
                if not u.args or u.args[0] is not n:
                    continue
                name = op_key(u.target).packet if u.op == "call_function" else ""
                a: list[Any] = list(u.args[1:])
                if name in ("aten.select", "aten.unbind", "aten.split", "aten.split_with_sizes", "aten.chunk",
                            "aten.unsafe_split"):
                    at = 0 if name in ("aten.select", "aten.unbind") else 1  # where the dim argument sits
                    axis = int(cast(Any, u.kwargs.get("dim", a[at] if len(a) > at else 0))) % rank
                    if axis == d:
                        return True
                    if name == "aten.select":
                        nxt.append((u, d - (axis < d)))
                elif name == "aten.transpose":
                    x, y = int(a[0]) % rank, int(a[1]) % rank
                    nxt.append((u, y if d == x else x if d == y else d))
                elif name == "aten.permute":
                    perm = [int(p) % rank for p in a[0]]
                    nxt.append((u, perm.index(d)))
                elif name == "aten.unsqueeze":
                    k = int(a[0]) % (rank + 1)
                    nxt.append((u, d + (k <= d)))
                elif name == "aten.squeeze":
                    out = u.meta.get("val")
                    if isinstance(out, torch.Tensor) and len(out.shape) == rank:
                        nxt.append((u, d))
                    elif isinstance(out, torch.Tensor):
                        shape = n.meta["val"].shape
                        gone = [i for i in range(rank) if shape[i] == 1 and (not a or i in
                                [int(x) % rank for x in (a[0] if isinstance(a[0], (list, tuple)) else [a[0]])])]
                        nxt.append((u, d - sum(1 for i in gone if i < d)))
                elif name in _LAYOUT_OPS:
                    nxt.append((u, d))
        if not nxt:
            return False
        frontier = nxt
    return False


def merge_ids(ctx: FlowContext, parts: list[np.ndarray], sizes: list[int]) -> np.ndarray:
    """Merge several axes into one dim: the axis that carries channels gives its ids to
    every position (a channel becomes a block of features); a second channel axis is pinned.
    With ``gqa="query"`` an axis that ``expand`` broadcast (the query-head slots of
    ``repeat_kv``) carries the ids instead, and the channel axis (the key/value heads) is pinned."""
    if len(parts) == 1:
        return parts[0]
    channel = [a for a, p in enumerate(parts) if ctx.ids.is_channel(p).any()]
    replica = [a for a, p in enumerate(parts) if ctx.gqa == "query" and ctx.is_replica(p)] if channel else []
    if replica:
        # repeat_kv with gqa="query": each copy of a key/value head is one query-head slot; the
        # slot axis carries the ids (slot j of every group is one unit) and the heads stay
        carrier = replica[0]
        for a in channel:
            ctx.pin(parts[a], KV_HEADS_KEPT)
    elif channel:
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

    def code(self, c: Call) -> Expr | None:
        return method(c.e("self"), "t")


@register("aten.numpy_T")
class NumpyT(T):
    """``x.T``: every dim reversed (a weight's ``.T`` in ``input @ self.weight.T`` layers)."""

    def code(self, c: Call) -> Expr | None:
        return None  # written as torch.ops.aten.numpy_T: the generic form


@register("aten.mT", "aten.mH", "aten.adjoint")
class MatrixT(OpRule):
    """``x.mT`` / ``x.mH`` / ``x.adjoint()``: the last two dims swapped."""

    structural = True

    def flow(self, ctx: FlowContext, node: fx.Node) -> Dims:
        X = list(ctx.dims(node.args[0]) or [])
        track_param(ctx, node, node.args[0])
        if len(X) >= 2:
            X[-1], X[-2] = X[-2], X[-1]
        return X


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
            if j >= 0 and len(X[j]) == size:
                out.append(X[j])
                continue
            out.append(ctx.fresh(size))
            if ctx.gqa == "query" and j >= 1 and out[i - 1] is X[j - 1] and ctx.ids.is_channel(X[j - 1]).any():
                # copies of each position of the channel dim before it: repeat_kv's n_rep
                # query-head slots of every key/value head
                ctx.mark_replica(out[-1])
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
