"""Channel-flow rules, one per ATen op (or family of ops).

A rule receives the flow context and the node, unifies and pins ids, and returns the
id arrays of the node's output (a list of arrays, one per dim; a tuple of such lists
for ops with several outputs). See ``_flow.FlowContext`` for the helpers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import fx

from ._flow import Dims, FlowContext
from ._registry import FLOW_RULES

rule = FLOW_RULES.register

_VIEWLIKE_OF_PARAM = {"aten.t", "aten.permute", "aten.transpose", "aten.view", "aten.reshape", "aten.expand",
                      "aten.unsqueeze", "aten.contiguous", "aten.clone", "aten.to", "aten._to_copy",
                      "aten.detach", "aten.alias", "aten.squeeze", "aten.type_as", "aten.flatten"}


def _args(node: fx.Node) -> tuple[Any, ...]:
    """``node.args``, loosely typed: fx types each as any ``Argument``; the op's schema
    fixes what it is (an int, a list of ints, a tensor node, ...)."""
    return node.args


def _arg(node: fx.Node, i: int, name: str, default: Any = None) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _norm_dim(d: int, n: int) -> int:
    return d + n if d < 0 else d


def _track_param(ctx: FlowContext, node: fx.Node, src: Any) -> None:
    if isinstance(src, fx.Node) and src in ctx.param_derived:
        ctx.param_derived.add(node)


# --- fallbacks ----------------------------------------------------------------------

@rule("unknown")
def unknown(ctx: FlowContext, node: fx.Node) -> Any:
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


@rule("pointwise", "aten.where", "aten.masked_fill", "aten.clamp", "aten.clamp_", "aten.hardtanh",
      "aten.hardtanh_", "aten.fill_", "aten.lerp", "aten.addcmul", "aten.addcdiv", "aten.copy_", "aten.copy",
      "aten.relu6", "aten.relu6_", "aten.rrelu", "aten.prelu", "aten.glu")
def pointwise(ctx: FlowContext, node: fx.Node) -> Dims:
    tensors = [a for a in list(node.args) + list(node.kwargs.values()) if isinstance(a, fx.Node)]
    if str(node.target).startswith("aten.glu"):
        return unknown(ctx, node)
    return broadcast(ctx, node, tensors)


@rule("aten.contiguous", "aten.clone", "aten.alias", "aten.detach", "aten.lift_fresh_copy", "aten._to_copy",
      "aten.to", "aten.type_as", "aten.dropout", "aten.dropout_", "aten.feature_dropout", "aten.alpha_dropout",
      "aten.feature_alpha_dropout", "aten.zeros_like", "aten.ones_like", "aten.full_like", "aten.empty_like",
      "aten.rand_like", "aten.randn_like", "aten.bernoulli", "aten.bernoulli_", "aten.clone.default")
def identity(ctx: FlowContext, node: fx.Node) -> Dims:
    src = node.args[0]
    _track_param(ctx, node, src)
    d = ctx.dims(src)
    return d if d is not None else ctx.fresh_dims(ctx.shape(node))


@rule("aten.native_dropout")
def native_dropout(ctx: FlowContext, node: fx.Node) -> Any:
    d = ctx.dims(node.args[0])
    return (d, d)


# --- layers -------------------------------------------------------------------------

def _grouped_union(ctx: FlowContext, a: np.ndarray, b: np.ndarray, groups: int) -> None:
    """Unify each of ``groups`` blocks of ``a`` with the same block of ``b``, whole."""
    blocks = np.concatenate([a.reshape(groups, -1), b.reshape(groups, -1)], axis=1)
    ctx.ids.union(blocks[:, 1:].ravel(), np.repeat(blocks[:, 0], blocks.shape[1] - 1))


def _conv(ctx: FlowContext, node: fx.Node, x: Any, w: Any, b: Any, groups: int, transposed: bool) -> Dims:
    X, W = ctx.dims(x), ctx.dims(w)
    out_shape = ctx.shape(node)
    if X is None or W is None or len(X) != len(W):
        return unknown(ctx, node)  # unbatched convolution
    spatial = [ctx.fresh(s) for s in out_shape[2:]]
    if not transposed:
        out_ch = ctx.mint(W[0])
        if groups == 1:
            ctx.union(X[1], W[1])
        else:
            _grouped_union(ctx, X[1], W[0], groups)
    else:
        if groups != 1:
            return unknown(ctx, node)
        ctx.union(X[1], W[0])
        out_ch = ctx.mint(W[1])
    B = ctx.dims(b)
    if B is not None:
        ctx.union(B[0], out_ch)
    ctx.zero_out[node] = {1}
    return [X[0], out_ch, *spatial]


@rule("aten.conv1d", "aten.conv2d", "aten.conv3d")
def conv(ctx: FlowContext, node: fx.Node) -> Dims:
    return _conv(ctx, node, node.args[0], node.args[1], _arg(node, 2, "bias"), int(_arg(node, 6, "groups", 1)), False)


@rule("aten.conv_transpose1d", "aten.conv_transpose2d", "aten.conv_transpose3d")
def conv_transpose(ctx: FlowContext, node: fx.Node) -> Dims:
    return _conv(ctx, node, node.args[0], node.args[1], _arg(node, 2, "bias"), int(_arg(node, 6, "groups", 1)), True)


@rule("aten.convolution")
def convolution(ctx: FlowContext, node: fx.Node) -> Dims:
    args = _args(node)
    return _conv(ctx, node, args[0], args[1], args[2], int(args[8]), bool(args[6]))


@rule("aten.linear")
def linear(ctx: FlowContext, node: fx.Node) -> Dims:
    X, W, B = ctx.dims(node.args[0]), ctx.dims(node.args[1]), ctx.dims(_arg(node, 2, "bias"))
    assert X is not None and W is not None
    ctx.union(X[-1], W[1])
    out = ctx.mint(W[0])
    if B is not None:
        ctx.union(B[0], out)
    ctx.zero_out[node] = {len(X) - 1}
    return [*X[:-1], out]


@rule("aten.embedding")
def embedding(ctx: FlowContext, node: fx.Node) -> Dims:
    W, idx = ctx.dims(node.args[0]), ctx.dims(node.args[1])
    assert W is not None and idx is not None
    out = ctx.mint(W[1])
    ctx.zero_out[node] = {len(idx)}
    return [*idx, out]


def _matmul_dims(ctx: FlowContext, node: fx.Node, a: fx.Node, b: fx.Node, bias: Any = None) -> Dims:
    A, B = ctx.dims(a), ctx.dims(b)
    if A is None or B is None or len(A) < 2 or len(B) < 2:
        return unknown(ctx, node)
    ctx.union(A[-1], B[-2])
    a_param, b_param = a in ctx.param_derived, b in ctx.param_derived
    if not (a_param or b_param):
        ctx.require_zero([(a, len(A) - 1), (b, len(B) - 2)], f"contracted by {node.target} between two activations")
    out_shape = ctx.shape(node)
    nb = len(out_shape) - 2
    batch: Dims = []
    for i in range(nb):
        members = []
        for D in (A, B):
            j = len(D) - 2 - nb + i
            if j >= 0 and len(D[j]) == out_shape[i]:
                members.append(D[j])
        if not members:
            batch.append(ctx.fresh(out_shape[i]))
            continue
        for m in members[1:]:
            ctx.union(members[0], m)
        batch.append(members[0])
    rows, cols = A[-2], B[-1]
    if b_param and not a_param:
        ctx.mint(cols)
        ctx.zero_out[node] = {len(out_shape) - 1}
    elif a_param and not b_param:
        ctx.mint(rows)
        ctx.zero_out[node] = {len(out_shape) - 2}
    if bias is not None:
        Bi = ctx.dims(bias)
        if Bi is not None and len(Bi[-1]) == len(cols):
            ctx.union(Bi[-1], cols)
    return [*batch, rows, cols]


@rule("aten.matmul", "aten.mm", "aten.bmm")
def matmul(ctx: FlowContext, node: fx.Node) -> Dims:
    args = _args(node)
    return _matmul_dims(ctx, node, args[0], args[1])


@rule("aten.addmm", "aten.baddbmm")
def addmm(ctx: FlowContext, node: fx.Node) -> Dims:
    args = _args(node)
    return _matmul_dims(ctx, node, args[1], args[2], bias=args[0])


@rule("aten.einsum")
def einsum(ctx: FlowContext, node: fx.Node) -> Dims:
    eq, operands = _args(node)[0], list(_args(node)[1])
    eq = eq.replace(" ", "")
    if "..." in eq or "->" not in eq:
        return unknown(ctx, node)
    lhs, out_letters = eq.split("->")
    in_letters = lhs.split(",")
    dims = [ctx.dims(o) for o in operands]
    if any(d is None for d in dims):
        return unknown(ctx, node)
    letter_ids: dict[str, np.ndarray] = {}
    owners: dict[str, list[tuple[fx.Node, int]]] = {}
    for op, letters, D in zip(operands, in_letters, dims):
        assert D is not None  # ruled out above
        for k, letter in enumerate(letters):
            ids = D[k]
            owners.setdefault(letter, []).append((op, k))
            if letter in letter_ids:
                if len(letter_ids[letter]) == len(ids):
                    ctx.union(letter_ids[letter], ids)
            else:
                letter_ids[letter] = ids
    any_param = any(o in ctx.param_derived for o in operands)
    for letter, own in owners.items():
        if letter not in out_letters and len(own) > 1 and not any_param:
            ctx.require_zero(own, f"contracted by einsum '{eq}' between activations")
    out: Dims = []
    for letter in out_letters:
        ids = letter_ids[letter]
        own = owners[letter]
        if len(own) == 1 and own[0][0] in ctx.param_derived:
            ctx.mint(ids)
        out.append(ids)
    return out


@rule("aten.scaled_dot_product_attention")
def sdpa(ctx: FlowContext, node: fx.Node) -> Dims:
    q, k, v = _args(node)[:3]
    Q, K, V = ctx.dims(q), ctx.dims(k), ctx.dims(v)
    assert Q is not None and K is not None and V is not None
    if not (len(Q) == len(K) == len(V)):
        return unknown(ctx, node)
    for i in range(len(Q) - 2):
        if len(Q[i]) == len(K[i]) == len(V[i]):
            ctx.union(Q[i], K[i])
            ctx.union(Q[i], V[i])
        else:  # grouped-query attention: heads of q and kv differ
            ctx.pin(Q[i], "grouped-query attention heads")
            ctx.pin(K[i], "grouped-query attention heads")
            ctx.pin(V[i], "grouped-query attention heads")
    ctx.union(Q[-1], K[-1])
    ctx.require_zero([(q, len(Q) - 1), (k, len(K) - 1)], "query·key contraction in attention")
    ctx.union(K[-2], V[-2])
    ctx.pin(K[-2], "softmax over attended positions")
    mask = ctx.dims(_arg(node, 3, "attn_mask"))
    if mask is not None:
        n = len(Q)
        full = [*Q[:-1], K[-2]]
        for j, m in enumerate(mask):
            i = n - len(mask) + j
            if i >= 0 and len(m) == len(full[i]):
                ctx.union(m, full[i])
    return [*Q[:-1], V[-1]]


# --- normalisation ------------------------------------------------------------------

def _per_channel(ctx: FlowContext, node: fx.Node, x: Any, params: list[Any], affine_zero: bool) -> Dims:
    X = ctx.dims(x)
    assert X is not None
    if len(X) < 2:
        return unknown(ctx, node)
    for p in params:
        P = ctx.dims(p)
        if P is not None:
            ctx.union(P[0], X[1])
    if affine_zero:
        ctx.zero_out[node] = {1}
    return X


@rule("aten.batch_norm", "aten.instance_norm")
def batch_norm(ctx: FlowContext, node: fx.Node) -> Dims:
    w, b = _arg(node, 1, "weight"), _arg(node, 2, "bias")
    return _per_channel(ctx, node, node.args[0], [w, b, _arg(node, 3, "running_mean"), _arg(node, 4, "running_var")],
                        w is not None and b is not None)


@rule("aten._native_batch_norm_legit_no_training", "aten._native_batch_norm_legit_functional",
      "aten.native_batch_norm", "aten._native_batch_norm_legit")
def native_batch_norm(ctx: FlowContext, node: fx.Node) -> Any:
    X = batch_norm(ctx, node)
    shapes = ctx.out_shapes(node)
    rest = [ctx.fresh_dims(s) if s is not None else None for s in shapes[1:]]
    for r in rest:
        if r is not None and len(r) == 1 and len(r[0]) == len(X[1]):
            ctx.union(r[0], X[1])
    return (X, *rest)


@rule("aten.group_norm")
def group_norm(ctx: FlowContext, node: fx.Node) -> Dims:
    X = ctx.dims(node.args[0])
    assert X is not None
    groups = int(_args(node)[1])
    channels = len(X[1])
    if groups != channels:
        # Removing a channel changes its group's statistics; removing a whole group does not.
        blocks = X[1].reshape(groups, -1)
        ctx.ids.union(blocks[:, 1:].ravel(), np.repeat(blocks[:, 0], blocks.shape[1] - 1))
    w, b = _arg(node, 2, "weight"), _arg(node, 3, "bias")
    return _per_channel(ctx, node, node.args[0], [w, b], w is not None and b is not None)


@rule("aten.layer_norm", "aten.rms_norm")
def layer_norm(ctx: FlowContext, node: fx.Node) -> Dims:
    X = ctx.dims(node.args[0])
    assert X is not None
    k = len(_args(node)[1])
    name = str(node.target).split(".")[1]
    for d in X[-k:]:
        ctx.pin(d, f"normalized over by {name} (removing a channel changes the statistics)")
    params = [_arg(node, 2, "weight")] + ([_arg(node, 3, "bias")] if name == "layer_norm" else [])
    for p in params:
        P = ctx.dims(p)
        if P is not None:
            for a, b in zip(P, X[-k:]):
                ctx.union(a, b)
    return X


# --- shape ops ----------------------------------------------------------------------

@rule("aten.permute")
def permute(ctx: FlowContext, node: fx.Node) -> Dims:
    X = ctx.dims(node.args[0])
    assert X is not None
    _track_param(ctx, node, node.args[0])
    return [X[_norm_dim(d, len(X))] for d in _args(node)[1]]


@rule("aten.transpose", "aten.swapaxes", "aten.swapdims")
def transpose(ctx: FlowContext, node: fx.Node) -> Dims:
    X = list(ctx.dims(node.args[0]) or [])
    _track_param(ctx, node, node.args[0])
    a, b = (_norm_dim(int(d), len(X)) for d in _args(node)[1:3])
    X[a], X[b] = X[b], X[a]
    return X


@rule("aten.t")
def t(ctx: FlowContext, node: fx.Node) -> Dims:
    X = list(ctx.dims(node.args[0]) or [])
    _track_param(ctx, node, node.args[0])
    return X[::-1]


@rule("aten.expand", "aten.expand_as", "aten.broadcast_to")
def expand(ctx: FlowContext, node: fx.Node) -> Dims:
    X = ctx.dims(node.args[0])
    assert X is not None
    _track_param(ctx, node, node.args[0])
    out_shape = ctx.shape(node)
    n = len(out_shape)
    out: Dims = []
    for i, size in enumerate(out_shape):
        j = len(X) - n + i
        out.append(X[j] if j >= 0 and len(X[j]) == size else ctx.fresh(size))
    return out


@rule("aten.repeat")
def repeat(ctx: FlowContext, node: fx.Node) -> Dims:
    X = ctx.dims(node.args[0])
    assert X is not None
    reps = list(_args(node)[1])
    n = len(reps)
    out: Dims = []
    for i, r in enumerate(reps):
        j = len(X) - n + i
        out.append(np.tile(X[j], int(r)) if j >= 0 else ctx.fresh(int(r)))
    return out


@rule("aten.view", "aten.reshape", "aten._unsafe_view", "aten.flatten", "aten.unflatten", "aten.squeeze",
      "aten.unsqueeze", "aten.view_as", "aten.reshape_as", "aten.squeeze_", "aten.unsqueeze_")
def reshape(ctx: FlowContext, node: fx.Node) -> Dims:
    X = ctx.dims(node.args[0])
    assert X is not None
    _track_param(ctx, node, node.args[0])
    in_shape = tuple(len(d) for d in X)
    return map_reshape(ctx, X, in_shape, ctx.shape(node))


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


@rule("aten.cat", "aten.concat", "aten.concatenate")
def cat(ctx: FlowContext, node: fx.Node) -> Dims:
    tensors = list(_args(node)[0])
    out_shape = ctx.shape(node)
    d = _norm_dim(int(_arg(node, 1, "dim", 0)), len(out_shape))
    dims = [D for D in (ctx.dims(t) for t in tensors) if D is not None and len(D) == len(out_shape)]
    out: Dims = []
    for i in range(len(out_shape)):
        if i == d:
            out.append(np.concatenate([D[i] for D in dims]))
        else:
            for D in dims[1:]:
                ctx.union(dims[0][i], D[i])
            out.append(dims[0][i])
    return out


@rule("aten.stack")
def stack(ctx: FlowContext, node: fx.Node) -> Dims:
    tensors = list(_args(node)[0])
    dims = [ctx.dims(t) for t in tensors]
    out_shape = ctx.shape(node)
    d = _norm_dim(int(_arg(node, 1, "dim", 0)), len(out_shape))
    base = dims[0]
    assert base is not None
    for D in dims[1:]:
        if D is not None:
            for a, b in zip(base, D):
                ctx.union(a, b)
    return [*base[:d], ctx.fresh(out_shape[d]), *base[d:]]


def _pieces(ctx: FlowContext, node: fx.Node, dim: int) -> tuple[Dims, int, list[tuple[int, ...] | None]]:
    X = ctx.dims(node.args[0])
    assert X is not None
    return X, _norm_dim(dim, len(X)), ctx.out_shapes(node)


@rule("aten.split", "aten.split_with_sizes", "aten.chunk", "aten.tensor_split", "aten.unsafe_split")
def split(ctx: FlowContext, node: fx.Node) -> tuple[Dims, ...]:
    X, d, shapes = _pieces(ctx, node, int(_arg(node, 2, "dim", 0)))
    outs, start = [], 0
    for s in shapes:
        assert s is not None
        n = s[d]
        outs.append([*X[:d], X[d][start:start + n], *X[d + 1:]])
        start += n
    return tuple(outs)


@rule("aten.unbind")
def unbind(ctx: FlowContext, node: fx.Node) -> tuple[Dims, ...]:
    X, d, shapes = _pieces(ctx, node, int(_arg(node, 1, "dim", 0)))
    ctx.pin(X[d], "unbound into separate tensors")
    return tuple([*X[:d], *X[d + 1:]] for _ in shapes)


@rule("aten.slice")
def slice_(ctx: FlowContext, node: fx.Node) -> Dims:
    X = ctx.dims(node.args[0])
    assert X is not None
    _track_param(ctx, node, node.args[0])
    d = _norm_dim(int(_arg(node, 1, "dim", 0)), len(X))
    start, end, step = _arg(node, 2, "start"), _arg(node, 3, "end"), _arg(node, 4, "step", 1)
    if step != 1:
        ctx.pin(X[d], "strided slice")
    n = len(X[d])
    s = slice(None if start is None else int(start), None if end is None else min(int(end), n), int(step))
    return [*X[:d], X[d][s], *X[d + 1:]]


@rule("aten.narrow")
def narrow(ctx: FlowContext, node: fx.Node) -> Dims:
    X = ctx.dims(node.args[0])
    assert X is not None
    d = _norm_dim(int(_args(node)[1]), len(X))
    start = int(_args(node)[2]) % max(len(X[d]), 1)
    return [*X[:d], X[d][start:start + int(_args(node)[3])], *X[d + 1:]]


@rule("aten.select")
def select(ctx: FlowContext, node: fx.Node) -> Dims:
    X = ctx.dims(node.args[0])
    assert X is not None
    _track_param(ctx, node, node.args[0])
    d = _norm_dim(int(_args(node)[1]), len(X))
    index = int(_args(node)[2]) % len(X[d])
    ctx.pin(X[d][index:index + 1], "selected by index")
    return [*X[:d], *X[d + 1:]]


@rule("aten.index")
def index(ctx: FlowContext, node: fx.Node) -> Dims:
    X = ctx.dims(node.args[0])
    assert X is not None
    indices = list(_args(node)[1])
    used = [i for i, ix in enumerate(indices) if ix is not None]
    for i in used:
        ctx.pin(X[i], "indexed by a tensor")
    out_shape = ctx.shape(node)
    if used == list(range(len(used))):
        rest = X[len(used):]
        lead = len(out_shape) - len(rest)
        return [*[ctx.fresh(s) for s in out_shape[:lead]], *rest]
    return unknown(ctx, node)


@rule("aten.index_select", "aten.gather", "aten.take_along_dim")
def index_select(ctx: FlowContext, node: fx.Node) -> Dims:
    X = ctx.dims(node.args[0])
    assert X is not None
    d = _norm_dim(int(_args(node)[1]), len(X))
    ctx.pin(X[d], f"indexed by {node.target}")
    out_shape = ctx.shape(node)
    if str(node.target).startswith("aten.index_select"):
        return [*X[:d], ctx.fresh(out_shape[d]), *X[d + 1:]]
    return unknown(ctx, node)


# --- pooling, resampling, padding ------------------------------------------------------

def _spatial_tail(ctx: FlowContext, node: fx.Node, k: int) -> Any:
    X = ctx.dims(node.args[0])
    assert X is not None
    shapes = ctx.out_shapes(node)
    out_shape = shapes[0]
    assert out_shape is not None
    first = [*X[: len(out_shape) - k], *[ctx.fresh(s) for s in out_shape[len(out_shape) - k:]]]
    if len(shapes) > 1:  # (values, indices)
        return tuple([first] + [first for _ in shapes[1:]])
    return first


for _k, _names in {
    1: ["max_pool1d", "avg_pool1d", "adaptive_avg_pool1d", "adaptive_max_pool1d", "max_pool1d_with_indices",
        "upsample_nearest1d", "upsample_linear1d", "_upsample_nearest_exact1d", "lp_pool1d"],
    2: ["max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "max_pool2d_with_indices",
        "upsample_nearest2d", "upsample_bilinear2d", "upsample_bicubic2d", "_upsample_nearest_exact2d",
        "_upsample_bilinear2d_aa", "_adaptive_avg_pool2d", "lp_pool2d", "fractional_max_pool2d"],
    3: ["max_pool3d", "avg_pool3d", "adaptive_avg_pool3d", "adaptive_max_pool3d", "max_pool3d_with_indices",
        "upsample_nearest3d", "upsample_trilinear3d", "_upsample_nearest_exact3d"],
}.items():
    def _make(k: int) -> Any:
        def pool(ctx: FlowContext, node: fx.Node) -> Any:
            return _spatial_tail(ctx, node, k)
        return pool
    rule(*[f"aten.{n}" for n in _names])(_make(_k))


@rule("aten.pad", "aten.constant_pad_nd", "aten.reflection_pad1d", "aten.reflection_pad2d", "aten.reflection_pad3d",
      "aten.replication_pad1d", "aten.replication_pad2d", "aten.replication_pad3d", "aten.circular_pad2d")
def pad(ctx: FlowContext, node: fx.Node) -> Dims:
    X = ctx.dims(node.args[0])
    assert X is not None
    pads = list(_args(node)[1])
    out = list(X)
    out_shape = ctx.shape(node)
    for p in range(len(pads) // 2):
        d = len(X) - 1 - p
        if pads[2 * p] or pads[2 * p + 1]:
            ctx.pin(X[d], "padded")
            out[d] = ctx.fresh(out_shape[d])
    return out


@rule("aten.roll", "aten.flip")
def roll(ctx: FlowContext, node: fx.Node) -> Dims:
    X = ctx.dims(node.args[0])
    assert X is not None
    # torch.roll without dims rolls the flattened tensor: every dim is reordered (dims = []).
    dims = _arg(node, 2, "dims", []) if str(node.target).startswith("aten.roll") else _arg(node, 1, "dims")
    dims = [dims] if isinstance(dims, int) else list(dims)
    if not dims:
        dims = list(range(len(X)))
    out = list(X)
    for d in dims:
        d = _norm_dim(int(d), len(X))
        ctx.pin(X[d], f"reordered by {node.target}")
        out[d] = ctx.fresh(len(X[d]))
    return out


# --- reductions ---------------------------------------------------------------------

def _reduced(ctx: FlowContext, node: fx.Node, dims: Any, keepdim: bool, exact_if_zero: bool) -> Any:
    X = ctx.dims(node.args[0])
    assert X is not None
    n = len(X)
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        red = list(range(n))
    else:
        red = [_norm_dim(int(d), n) for d in ([dims] if isinstance(dims, int) else dims)]
    for d in red:
        if exact_if_zero:
            ctx.require_zero([(_args(node)[0], d)], f"summed over by {node.target}")
        else:
            ctx.pin(X[d], f"reduced over by {node.target} (the result depends on how many channels there are)")
    out = [ctx.fresh(1) if i in red else X[i] for i in range(n)] if keepdim else \
        [X[i] for i in range(n) if i not in red]
    shapes = ctx.out_shapes(node)
    return tuple(out for _ in shapes) if len(shapes) > 1 else out


@rule("aten.sum", "aten.nansum")
def sum_(ctx: FlowContext, node: fx.Node) -> Any:
    return _reduced(ctx, node, _arg(node, 1, "dim"), bool(_arg(node, 2, "keepdim", False)), True)


@rule("aten.mean", "aten.amax", "aten.amin", "aten.logsumexp", "aten.prod", "aten.nanmean", "aten.norm",
      "aten.linalg_vector_norm")
def mean(ctx: FlowContext, node: fx.Node) -> Any:
    name = str(node.target)
    if name.startswith(("aten.norm", "aten.linalg_vector_norm")):
        return _reduced(ctx, node, _arg(node, 2, "dim"), bool(_arg(node, 3, "keepdim", False)), False)
    return _reduced(ctx, node, _arg(node, 1, "dim"), bool(_arg(node, 2, "keepdim", False)), False)


@rule("aten.var", "aten.std", "aten.var_mean", "aten.std_mean", "aten.max", "aten.min", "aten.argmax",
      "aten.argmin", "aten.median", "aten.mode")
def var(ctx: FlowContext, node: fx.Node) -> Any:
    dim = _arg(node, 1, "dim")
    keep = _arg(node, 3 if str(node.target).startswith(("aten.var", "aten.std")) else 2, "keepdim", False)
    if str(node.target).endswith(".default") and len(node.args) == 1 and not node.kwargs:
        dim = None
    return _reduced(ctx, node, dim, bool(keep), False)


@rule("aten.softmax", "aten.log_softmax", "aten._softmax", "aten._log_softmax", "aten.cumsum", "aten.cumprod",
      "aten.special_softmax", "aten.logcumsumexp")
def softmax(ctx: FlowContext, node: fx.Node) -> Dims:
    X = ctx.dims(node.args[0])
    assert X is not None
    d = _norm_dim(int(_args(node)[1]), len(X))
    ctx.pin(X[d], f"normalized over by {node.target}")
    return X


# --- creation -----------------------------------------------------------------------

@rule("aten.zeros", "aten.ones", "aten.empty", "aten.full", "aten.arange", "aten.rand", "aten.randn",
      "aten.new_zeros", "aten.new_ones", "aten.new_empty", "aten.new_full", "aten.scalar_tensor", "aten.linspace",
      "aten.eye", "aten.tensor", "aten.randint", "aten.empty_strided", "aten.new_empty_strided")
def creation(ctx: FlowContext, node: fx.Node) -> Dims:
    return ctx.fresh_dims(ctx.shape(node))


@rule("aten.topk", "aten.sort", "aten.argsort")
def topk(ctx: FlowContext, node: fx.Node) -> Any:
    X = ctx.dims(node.args[0])
    assert X is not None
    d = _norm_dim(int(_arg(node, 2 if str(node.target).startswith("aten.topk") else 1, "dim", -1)), len(X))
    ctx.pin(X[d], f"ordered by {node.target}")
    shapes = ctx.out_shapes(node)
    outs = []
    for s in shapes:
        assert s is not None
        outs.append([*X[:d], ctx.fresh(s[d]), *X[d + 1:]])
    return tuple(outs) if len(shapes) > 1 else outs[0]

