"""Reductions and normalising scans: sum, mean, var, max/min, norms, softmax, cumsum, sort.

A sum over a channel dim is exact once the group is zero (``ctx.require_zero``); any
other reduction over channels depends on how many there are, so they are pinned."""

from __future__ import annotations

from typing import Any

from torch import fx

from ._code import Call, Expr, fn, method
from ._common import arg, args_of, dims_arg, norm_dim
from ._context import Dims, FlowContext
from ._rule import OpRule, op_key, register


def _reduced(ctx: FlowContext, node: fx.Node, dims: Any, keepdim: bool, exact_if_zero: bool) -> Any:
    X = ctx.dims(node.args[0])
    assert X is not None
    n = len(X)
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        red = list(range(n))
    else:
        red = [norm_dim(int(d), n) for d in ([dims] if isinstance(dims, int) else dims)]
    for d in red:
        if exact_if_zero:
            ctx.require_zero([(args_of(node)[0], d)], f"summed over by {node.target}")
        else:
            ctx.pin(X[d], f"reduced over by {node.target} (the result depends on how many channels there are)")
    out = [ctx.fresh(1) if i in red else X[i] for i in range(n)] if keepdim else \
        [X[i] for i in range(n) if i not in red]
    shapes = ctx.out_shapes(node)
    return tuple(out for _ in shapes) if len(shapes) > 1 else out


class Reduce(OpRule):
    """Written as the tensor method of the same name: ``x.mean((2, 3), keepdim=True)``."""

    def code(self, c: Call) -> Expr | None:
        args: list[str] = []
        if "dim" in c.values and c["dim"] is not None and c["dim"] != []:
            d = c["dim"]
            args.append(dims_arg(c, "dim") if isinstance(d, (list, tuple)) else c.t("dim"))
        if c["keepdim"]:
            args.append("keepdim=True")
        for k in ("correction", "dtype"):
            if k in c.values and c[k] is not None:
                args.append(f"{k}={c.t(k)}")
        return method(c.e("self"), op_key(c.target).name, *args)


@register("aten.sum")
class Sum(Reduce):
    def flow(self, ctx: FlowContext, node: fx.Node) -> Any:
        return _reduced(ctx, node, arg(node, 1, "dim"), bool(arg(node, 2, "keepdim", False)), True)


@register("aten.nansum")
class NanSum(OpRule):
    def flow(self, ctx: FlowContext, node: fx.Node) -> Any:
        return _reduced(ctx, node, arg(node, 1, "dim"), bool(arg(node, 2, "keepdim", False)), True)


class _Mean(Reduce):
    def flow(self, ctx: FlowContext, node: fx.Node) -> Any:
        name = str(node.target)
        if name.startswith(("aten.norm", "aten.linalg_vector_norm")):
            return _reduced(ctx, node, arg(node, 2, "dim"), bool(arg(node, 3, "keepdim", False)), False)
        return _reduced(ctx, node, arg(node, 1, "dim"), bool(arg(node, 2, "keepdim", False)), False)


@register("aten.mean", "aten.amax", "aten.amin", "aten.logsumexp", "aten.prod")
class Mean(_Mean):
    pass


@register("aten.nanmean", "aten.norm")
class NanMean(_Mean):
    code = OpRule.code  # written in the generic form


@register("aten.linalg_vector_norm")
class VectorNorm(_Mean):
    def code(self, c: Call) -> Expr:
        return fn("torch.linalg.vector_norm", c.e("self"), *c.changed("ord", "dim", "keepdim", "dtype"))


class _Var(Reduce):
    def flow(self, ctx: FlowContext, node: fx.Node) -> Any:
        dim = arg(node, 1, "dim")
        keep = arg(node, 3 if str(node.target).startswith(("aten.var", "aten.std")) else 2, "keepdim", False)
        if str(node.target).endswith(".default") and len(node.args) == 1 and not node.kwargs:
            dim = None
        return _reduced(ctx, node, dim, bool(keep), False)


@register("aten.var", "aten.std", "aten.max", "aten.min", "aten.argmax", "aten.argmin")
class Var(_Var):
    pass


@register("aten.var_mean", "aten.std_mean", "aten.median", "aten.mode")
class VarMean(_Var):
    code = OpRule.code  # written in the generic form


@register("aten.all", "aten.any")
class AllAny(Reduce):
    pass


class _Softmax(OpRule):
    def flow(self, ctx: FlowContext, node: fx.Node) -> Dims:
        X = ctx.dims(node.args[0])
        assert X is not None
        d = norm_dim(int(args_of(node)[1]), len(X))
        ctx.pin(X[d], f"normalized over by {node.target}")
        return X


@register("aten.softmax", "aten.log_softmax", "aten._softmax", "aten._log_softmax")
class Softmax(_Softmax):
    def code(self, c: Call) -> Expr | None:
        key = op_key(c.target)
        if not key.packet.startswith("aten._") and key.overload != "int":
            return None
        name = "F.log_softmax" if "log" in str(c.target) else "F.softmax"
        extra = [f"dtype={c.t('dtype')}"] if "dtype" in c.values and c["dtype"] is not None else []
        return fn(name, c.e("self"), f"dim={c.t('dim')}", *extra)


@register("aten.cumsum", "aten.cumprod")
class CumSum(_Softmax):
    def code(self, c: Call) -> Expr:
        name = op_key(c.target).name
        dtype = [f"dtype={c.t('dtype')}"] if "dtype" in c.values and c["dtype"] is not None else []
        return method(c.e("self"), name, c.e("dim"), *dtype)


@register("aten.special_softmax", "aten.logcumsumexp")
class OtherSoftmax(_Softmax):
    pass


@register("aten.topk", "aten.sort", "aten.argsort")
class TopK(OpRule):
    def flow(self, ctx: FlowContext, node: fx.Node) -> Any:
        X = ctx.dims(node.args[0])
        assert X is not None
        d = norm_dim(int(arg(node, 2 if str(node.target).startswith("aten.topk") else 1, "dim", -1)), len(X))
        ctx.pin(X[d], f"ordered by {node.target}")
        shapes = ctx.out_shapes(node)
        outs = []
        for s in shapes:
            assert s is not None
            outs.append([*X[:d], ctx.fresh(s[d]), *X[d + 1:]])
        return tuple(outs) if len(shapes) > 1 else outs[0]
