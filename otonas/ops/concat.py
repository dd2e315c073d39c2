"""Concatenation and stacking. ``cat`` concatenates the id vectors along its dim and is a
join that operator erasure can drop an input of (its channels go with it)."""

from __future__ import annotations

import numpy as np
from torch import fx

from ._code import Call, Expr, fn
from ._common import arg, args_of, norm_dim
from ._context import Dims, FlowContext
from ._rule import OpRule, register


class _Cat(OpRule):
    join = "cat"

    def flow(self, ctx: FlowContext, node: fx.Node) -> Dims:
        tensors = list(args_of(node)[0])
        out_shape = ctx.shape(node)
        d = norm_dim(int(arg(node, 1, "dim", 0)), len(out_shape))
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


@register("aten.cat")
class Cat(_Cat):
    structural = True

    def code(self, c: Call) -> Expr:
        name = "torch.cat" if "cat" in str(c.target) else "torch.stack"
        tensors = "[" + ", ".join(c.render(t).text for t in c["tensors"]) + "]"
        return fn(name, tensors, *([] if c.is_default("dim") else [f"dim={c.t('dim')}"]))


@register("aten.concat", "aten.concatenate")
class Concat(_Cat):
    pass


@register("aten.stack")
class Stack(OpRule):
    def flow(self, ctx: FlowContext, node: fx.Node) -> Dims:
        tensors = list(args_of(node)[0])
        dims = [ctx.dims(t) for t in tensors]
        out_shape = ctx.shape(node)
        d = norm_dim(int(arg(node, 1, "dim", 0)), len(out_shape))
        base = dims[0]
        assert base is not None
        for D in dims[1:]:
            if D is not None:
                for a, b in zip(base, D):
                    ctx.union(a, b)
        return [*base[:d], ctx.fresh(out_shape[d]), *base[d:]]

    def code(self, c: Call) -> Expr:
        name = "torch.cat" if "cat" in str(c.target) else "torch.stack"
        tensors = "[" + ", ".join(c.render(t).text for t in c["tensors"]) + "]"
        return fn(name, tensors, *([] if c.is_default("dim") else [f"dim={c.t('dim')}"]))
