"""Convolutions: ``conv1d``/``2d``/``3d``, their transposes, and the generic ``convolution``.

A convolution mints its output channels and ties its input channels to the weight's
input columns (per group for a grouped or depthwise one, whole groups at a time); the
builder rescales ``groups``; FLOPs are output positions × weight size per output."""

from __future__ import annotations

import math
from typing import Any

from torch import fx

from ._code import Call, Expr, LayerCall, LayerSpec, fn, literal, squash
from ._common import arg, args_of, changed_kw, grouped_union, layer_zero, scale_groups, unknown
from ._context import BuildContext, Dims, FlowContext
from ._rule import OpRule, op_key, register

__all__ = ["Conv", "ConvTranspose", "Convolution"]


def _conv_flow(ctx: FlowContext, node: fx.Node, x: Any, w: Any, b: Any, groups: int, transposed: bool) -> Dims:
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
            grouped_union(ctx, X[1], W[0], groups)
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


def _conv_kw(c: Call, names: tuple[str, ...]) -> list[str]:
    return c.changed(*names, render=lambda n, v: c.render(squash(v)).text)


def _conv_common(c: LayerCall, n: int, transposed: bool) -> LayerSpec | None:
    w = c.tensor("weight")
    path = c.path_of("weight", "weight")
    if w is None or path is None or not c.reads("bias", path, "bias") or w.dim() != n + 2:
        return None
    groups = int(c["groups"])
    if transposed:
        cin, cout = int(w.shape[0]), int(w.shape[1]) * groups
    else:
        cin, cout = int(w.shape[1]) * groups, int(w.shape[0])
    args = [str(cin), str(cout), literal(squash(list(w.shape[2:]))).text]
    names = ("stride", "padding", "output_padding", "groups") if transposed else ("stride", "padding", "dilation",
                                                                                  "groups")
    args += changed_kw(c, *names)
    if c["bias"] is None:
        args.append("bias=False")
    if transposed:
        args += changed_kw(c, "dilation")
    state = ("weight",) + (("bias",) if c["bias"] is not None else ())
    cls = f"ConvTranspose{n}d" if transposed else f"Conv{n}d"
    return LayerSpec(path, cls, tuple(args), state, (("weight", "weight"), ("bias", "bias")), "input",
                     (("in", cin), ("out", cout)))


def _conv_flops(node: fx.Node, out: list[int], ins: list[Any]) -> int:
    return math.prod(out) * math.prod(ins[1][1:])


def _conv_transpose_flops(node: fx.Node, out: list[int], ins: list[Any]) -> int:
    return math.prod(ins[0]) * math.prod(ins[1][1:])


@register("aten.conv1d", "aten.conv2d", "aten.conv3d")
class Conv(OpRule):
    def flow(self, ctx: FlowContext, node: fx.Node) -> Dims:
        return _conv_flow(ctx, node, node.args[0], node.args[1], arg(node, 2, "bias"), int(arg(node, 6, "groups", 1)),
                          False)

    def zero_by_params(self, node: fx.Node, zero: set[str]) -> bool:
        return layer_zero(node, zero)

    def rewrite(self, ctx: BuildContext, node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
        groups = int(args[6]) if len(args) > 6 else int(kwargs.get("groups", 1))
        if groups != 1:
            if len(args) > 6:
                args[6] = scale_groups(ctx, node, groups)
            else:
                kwargs["groups"] = scale_groups(ctx, node, groups)
        return node.target, args, kwargs

    def flops(self, node: fx.Node, out: list[int], ins: list[Any]) -> int:
        return _conv_flops(node, out, ins)

    def code(self, c: Call) -> Expr:
        name = "F." + op_key(c.target).name
        bias = [c.e("bias")] if c["bias"] is not None else []
        return fn(name, c.e("input"), c.e("weight"), *bias, *_conv_kw(c, ("stride", "padding", "dilation", "groups")))

    def layer(self, c: LayerCall) -> LayerSpec | None:
        return _conv_common(c, int(op_key(c.target).name[4]), transposed=False)


@register("aten.conv_transpose1d", "aten.conv_transpose2d", "aten.conv_transpose3d")
class ConvTranspose(OpRule):
    def flow(self, ctx: FlowContext, node: fx.Node) -> Dims:
        return _conv_flow(ctx, node, node.args[0], node.args[1], arg(node, 2, "bias"), int(arg(node, 6, "groups", 1)),
                          True)

    def zero_by_params(self, node: fx.Node, zero: set[str]) -> bool:
        return layer_zero(node, zero)

    def flops(self, node: fx.Node, out: list[int], ins: list[Any]) -> int:
        return _conv_transpose_flops(node, out, ins)

    def code(self, c: Call) -> Expr:
        name = "F." + op_key(c.target).name
        bias = [c.e("bias")] if c["bias"] is not None else []
        return fn(name, c.e("input"), c.e("weight"), *bias,
                  *_conv_kw(c, ("stride", "padding", "output_padding", "groups", "dilation")))

    def layer(self, c: LayerCall) -> LayerSpec | None:
        return _conv_common(c, int(op_key(c.target).name[-2]), transposed=True)


@register("aten.convolution")
class Convolution(OpRule):
    def flow(self, ctx: FlowContext, node: fx.Node) -> Dims:
        args = args_of(node)
        return _conv_flow(ctx, node, args[0], args[1], args[2], int(args[8]), bool(args[6]))

    def rewrite(self, ctx: BuildContext, node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
        if int(args[8]) != 1:
            args[8] = scale_groups(ctx, node, int(args[8]))
        return node.target, args, kwargs

    def flops(self, node: fx.Node, out: list[int], ins: list[Any]) -> int:
        transposed = bool(node.args[6])
        return _conv_transpose_flops(node, out, ins) if transposed else _conv_flops(node, out, ins)

    def code(self, c: Call) -> Expr:
        n = len(c["stride"])
        bias = [f"bias={c.t('bias')}"] if c["bias"] is not None else []
        sq = lambda k: c.render(squash(c[k])).text  # noqa: E731
        if c["transposed"]:
            return fn(f"F.conv_transpose{n}d", c.e("input"), c.e("weight"), *bias, f"stride={sq('stride')}",
                      f"padding={sq('padding')}", f"output_padding={sq('output_padding')}", f"groups={c.t('groups')}",
                      f"dilation={sq('dilation')}")
        return fn(f"F.conv{n}d", c.e("input"), c.e("weight"), *bias, f"stride={sq('stride')}",
                  f"padding={sq('padding')}", f"dilation={sq('dilation')}", f"groups={c.t('groups')}")

    def layer(self, c: LayerCall) -> LayerSpec | None:
        n = len(c["stride"])
        if not c["transposed"] and any(int(p) != 0 for p in c["output_padding"]):
            return None
        return _conv_common(c, n, transposed=bool(c["transposed"]))
