"""Linear layers and matrix products: ``linear``, ``embedding``, ``matmul``/``mm``/``bmm``,
``addmm``/``baddbmm`` and ``einsum``.

A product with a parameter mints the parameter's free side as channels; a product of two
activations sums channels without a parameter, which is exact only where one side is
zero once the group is (``ctx.require_zero``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from torch import fx

from ._code import MUL, Call, Expr, LayerCall, LayerSpec, binop, fn
from ._common import arg, args_of, changed_kw, layer_zero, unknown
from ._context import Dims, FlowContext
from ._rule import OpRule, register

__all__ = ["Linear", "Embedding", "MatMul", "Mm", "AddMm", "Einsum"]


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


@register("aten.linear")
class Linear(OpRule):
    def flow(self, ctx: FlowContext, node: fx.Node) -> Dims:
        X, W, B = ctx.dims(node.args[0]), ctx.dims(node.args[1]), ctx.dims(arg(node, 2, "bias"))
        assert X is not None and W is not None
        ctx.union(X[-1], W[1])
        out = ctx.mint(W[0])
        if B is not None:
            ctx.union(B[0], out)
        ctx.zero_out[node] = {len(X) - 1}
        return [*X[:-1], out]

    def zero_by_params(self, node: fx.Node, zero: set[str]) -> bool:
        return layer_zero(node, zero)

    def flops(self, node: fx.Node, out: list[int], ins: list[Any]) -> int:
        return math.prod(out) * ins[0][-1]

    def code(self, c: Call) -> Expr:
        return fn("F.linear", c.e("input"), c.e("weight"), *([c.e("bias")] if c["bias"] is not None else []))

    def layer(self, c: LayerCall) -> LayerSpec | None:
        w = c.tensor("weight")
        path = c.path_of("weight", "weight")
        if w is None or path is None or w.dim() != 2 or not c.reads("bias", path, "bias"):
            return None
        args = [str(int(w.shape[1])), str(int(w.shape[0]))] + (["bias=False"] if c["bias"] is None else [])
        state = ("weight",) + (("bias",) if c["bias"] is not None else ())
        return LayerSpec(path, "Linear", tuple(args), state, (("weight", "weight"), ("bias", "bias")), "input",
                         (("in", int(w.shape[1])), ("out", int(w.shape[0]))))


@register("aten.embedding")
class Embedding(OpRule):
    def flow(self, ctx: FlowContext, node: fx.Node) -> Dims:
        W, idx = ctx.dims(node.args[0]), ctx.dims(node.args[1])
        assert W is not None and idx is not None
        out = ctx.mint(W[1])
        ctx.zero_out[node] = {len(idx)}
        return [*idx, out]

    def code(self, c: Call) -> Expr:
        pad = [] if c["padding_idx"] in (None, -1) else [f"padding_idx={c.t('padding_idx')}"]
        return fn("F.embedding", c.e("indices"), c.e("weight"), *pad)

    def layer(self, c: LayerCall) -> LayerSpec | None:
        w = c.tensor("weight")
        path = c.path_of("weight", "weight")
        if w is None or path is None or w.dim() != 2:
            return None
        args = [str(int(w.shape[0])), str(int(w.shape[1]))]
        if c["padding_idx"] not in (None, -1):
            args.append(f"padding_idx={c.t('padding_idx')}")
        args += changed_kw(c, "scale_grad_by_freq", "sparse")
        return LayerSpec(path, "Embedding", tuple(args), ("weight",), (("weight", "weight"),), "indices",
                         (("features", int(w.shape[1])),))


class _Product(OpRule):
    def flow(self, ctx: FlowContext, node: fx.Node) -> Dims:
        args = args_of(node)
        return _matmul_dims(ctx, node, args[0], args[1])

    def flops(self, node: fx.Node, out: list[int], ins: list[Any]) -> int:
        return math.prod(out) * ins[0][-1]


@register("aten.matmul")
class MatMul(_Product):
    def code(self, c: Call) -> Expr | None:
        return binop(c.e("self"), "@", c.e("other"), MUL)


@register("aten.mm", "aten.bmm")
class Mm(_Product):
    def code(self, c: Call) -> Expr:
        return fn(f"torch.{str(c.target).split('.')[1]}", c.e("self"), c.e("mat2"))


@register("aten.addmm", "aten.baddbmm")
class AddMm(OpRule):
    def flow(self, ctx: FlowContext, node: fx.Node) -> Dims:
        args = args_of(node)
        return _matmul_dims(ctx, node, args[1], args[2], bias=args[0])

    def flops(self, node: fx.Node, out: list[int], ins: list[Any]) -> int:
        return math.prod(out) * ins[1][-1]


@register("aten.einsum")
class Einsum(OpRule):
    def flow(self, ctx: FlowContext, node: fx.Node) -> Dims:
        eq, operands = args_of(node)[0], list(args_of(node)[1])
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

    def flops(self, node: fx.Node, out: list[int], ins: list[Any]) -> int:
        eq = str(node.args[0]).replace(" ", "")
        sizes: dict[str, int] = {}
        for letters, shape in zip(eq.split("->")[0].split(","), ins[1]):
            for letter, s in zip(letters, shape or []):
                sizes[letter] = max(sizes.get(letter, 1), s)
        return math.prod(sizes.values())

    def code(self, c: Call) -> Expr:
        return fn("torch.einsum", c.e("equation"), *[c.render(t) for t in c["tensors"]])
