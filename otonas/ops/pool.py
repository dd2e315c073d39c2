"""Pooling, resampling, padding and reordering over spatial dims.

Pooling and resampling keep channels and give the last k dims fresh ids; padding and
rolling pin the dims they change (removing a position would move the others)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from torch import fx

from ._code import Call, Expr, fn, method, squash
from ._common import arg, args_of, dims_arg, norm_dim, unknown
from ._context import Dims, FlowContext
from ._rule import OpRule, op_key, register


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


class Spatial(OpRule):
    """An op over the last k dims (k from its name: ``max_pool2d`` -> 2)."""

    def flow(self, ctx: FlowContext, node: fx.Node) -> Any:
        m = re.search(r"(\d)d", op_key(node.target).packet)
        assert m is not None  # every registered name spells its dims
        return _spatial_tail(ctx, node, int(m.group(1)))


def _pool_args(c: Call, names: tuple[str, ...]) -> list[str]:
    out = [c.render(squash(c["kernel_size"])).text]
    if c["stride"]:
        out.append(f"stride={c.render(squash(c['stride'])).text}")
    out += c.changed(*names, render=lambda n, v: c.render(squash(v)).text)
    return out


@register("aten.max_pool1d", "aten.max_pool2d", "aten.max_pool3d")
class MaxPool(Spatial):
    structural = True
    keeps_zero_tensor = True

    def code(self, c: Call) -> Expr:
        name = op_key(c.target).name.replace("_with_indices", "")
        extra = ["return_indices=True"] if "with_indices" in str(c.target) else []
        return fn(f"F.{name}", c.e("self"), *_pool_args(c, ("padding", "dilation", "ceil_mode")), *extra)


@register("aten.max_pool2d_with_indices", "aten.max_pool3d_with_indices")
class MaxPoolWithIndices(Spatial):
    def code(self, c: Call) -> Expr:
        name = op_key(c.target).name.replace("_with_indices", "")
        extra = ["return_indices=True"] if "with_indices" in str(c.target) else []
        return fn(f"F.{name}", c.e("self"), *_pool_args(c, ("padding", "dilation", "ceil_mode")), *extra)


@register("aten.avg_pool1d", "aten.avg_pool2d", "aten.avg_pool3d")
class AvgPool(Spatial):
    structural = True
    keeps_zero_tensor = True

    def code(self, c: Call) -> Expr:
        name = op_key(c.target).name
        names = ("padding", "ceil_mode", "count_include_pad") + (("divisor_override",) if "divisor_override" in
                                                                   c.defaults else ())
        return fn(f"F.{name}", c.e("self"), *_pool_args(c, names))


@register("aten.adaptive_avg_pool1d", "aten.adaptive_avg_pool2d", "aten.adaptive_avg_pool3d")
class AdaptiveAvgPool(Spatial):
    structural = True
    keeps_zero_tensor = True

    def code(self, c: Call) -> Expr:
        name = op_key(c.target).name.lstrip("_")
        return fn(f"F.{name}", c.e("self"), c.render(squash(c["output_size"])))


@register("aten._adaptive_avg_pool2d")
class AdaptiveAvgPoolPrivate(Spatial):
    def code(self, c: Call) -> Expr:
        name = op_key(c.target).name.lstrip("_")
        return fn(f"F.{name}", c.e("self"), c.render(squash(c["output_size"])))


@register("aten._adaptive_avg_pool3d")
class AdaptiveAvgPool3dPrivate(OpRule):
    def code(self, c: Call) -> Expr:
        name = op_key(c.target).name.lstrip("_")
        return fn(f"F.{name}", c.e("self"), c.render(squash(c["output_size"])))


@register("aten.adaptive_max_pool1d", "aten.adaptive_max_pool2d", "aten.adaptive_max_pool3d")
class AdaptiveMaxPool(Spatial):
    def code(self, c: Call) -> Expr:
        name = op_key(c.target).name
        return fn(f"F.{name}", c.e("self"), c.render(squash(c["output_size"])), "return_indices=True")


@register("aten.max_pool1d_with_indices", "aten.lp_pool1d", "aten.lp_pool2d", "aten.fractional_max_pool2d")
class OtherPool(Spatial):
    pass


_MODES = {"upsample_nearest": "nearest", "_upsample_nearest_exact": "nearest-exact", "upsample_linear": "linear",
          "upsample_bilinear": "bilinear", "upsample_trilinear": "trilinear", "upsample_bicubic": "bicubic",
          "_upsample_bilinear2d_aa": "bilinear", "_upsample_bicubic2d_aa": "bicubic"}


def _interpolate(c: Call) -> Expr:
    op = op_key(c.target).name
    mode = next(m for k, m in _MODES.items() if op.startswith(k))
    args: list[Expr | str] = [c.e("input")]
    if c["output_size"] is not None:
        args.append(f"size={c.render(squash(c['output_size'])).text}")
    if c["scale_factors"] is not None:
        args.append(f"scale_factor={c.render(squash(c['scale_factors'])).text}")
    args.append(f'mode="{mode}"')
    if "align_corners" in c.values:
        args.append(f"align_corners={c.t('align_corners')}")
    if op.endswith("_aa"):
        args.append("antialias=True")
    return fn("F.interpolate", *args)


def _interpolate_size(c: Call) -> Expr | None:
    if any(c[k] is not None for k in ("scales", "scales_d", "scales_h", "scales_w")):
        return None  # output size and scales both given: F.interpolate takes only one
    op = op_key(c.target).name
    mode = next(m for k, m in _MODES.items() if op.startswith(k))
    args: list[Expr | str] = [c.e("input" if "input" in c.values else "self"),
                              f"size={c.render(squash(c['output_size'])).text}", f'mode="{mode}"']
    if "align_corners" in c.values:
        args.append(f"align_corners={c.t('align_corners')}")
    return fn("F.interpolate", *args)


class _Upsample(Spatial):
    """``.vec`` overloads (sizes or scale factors) and ``.default`` ones (sizes) as ``F.interpolate``."""

    def code(self, c: Call) -> Expr | None:
        overload = op_key(c.target).overload
        if overload == "vec":
            return _interpolate(c)
        return _interpolate_size(c) if overload == "default" else None


@register("aten.upsample_nearest2d", "aten.upsample_bilinear2d")
class Upsample(_Upsample):
    structural = True
    keeps_zero_tensor = True


@register("aten.upsample_nearest1d", "aten.upsample_nearest3d", "aten.upsample_linear1d", "aten.upsample_trilinear3d",
          "aten.upsample_bicubic2d", "aten._upsample_nearest_exact1d", "aten._upsample_nearest_exact2d",
          "aten._upsample_nearest_exact3d")
class OtherUpsample(_Upsample):
    pass


@register("aten._upsample_bilinear2d_aa")
class UpsampleAntialias(Spatial):
    def code(self, c: Call) -> Expr | None:
        return _interpolate(c) if op_key(c.target).overload == "vec" else None


@register("aten._upsample_bicubic2d_aa")
class UpsampleBicubicAntialias(OpRule):
    def code(self, c: Call) -> Expr | None:
        return _interpolate(c) if op_key(c.target).overload == "vec" else None


class _Pad(OpRule):
    def flow(self, ctx: FlowContext, node: fx.Node) -> Dims:
        X = ctx.dims(node.args[0])
        assert X is not None
        pads = list(args_of(node)[1])
        out = list(X)
        out_shape = ctx.shape(node)
        for p in range(len(pads) // 2):
            d = len(X) - 1 - p
            if pads[2 * p] or pads[2 * p + 1]:
                ctx.pin(X[d], "padded")
                out[d] = ctx.fresh(out_shape[d])
        return out


@register("aten.pad")
class Pad(_Pad):
    structural = True
    keeps_zero_tensor = True

    def code(self, c: Call) -> Expr:
        kw = c.changed("mode")
        if c["value"] is not None:
            kw.append(f"value={c.t('value')}")
        return fn("F.pad", c.e("self"), c.render(tuple(c["pad"])), *kw)


@register("aten.constant_pad_nd")
class ConstantPad(_Pad):
    structural = True
    keeps_zero_tensor = True

    def code(self, c: Call) -> Expr:
        return fn("F.pad", c.e("self"), c.render(tuple(c["pad"])), *c.changed("value"))


@register("aten.reflection_pad1d", "aten.reflection_pad2d", "aten.reflection_pad3d", "aten.replication_pad1d",
          "aten.replication_pad2d", "aten.replication_pad3d")
class ModePad(_Pad):
    def code(self, c: Call) -> Expr:
        mode = "reflect" if "reflection" in str(c.target) else "replicate"
        return fn("F.pad", c.e("self"), c.render(tuple(c["padding"])), f'mode="{mode}"')


@register("aten.circular_pad2d")
class CircularPad(_Pad):
    pass


class _Roll(OpRule):
    def flow(self, ctx: FlowContext, node: fx.Node) -> Dims:
        X = ctx.dims(node.args[0])
        assert X is not None
        # torch.roll without dims rolls the flattened tensor: every dim is reordered (dims = []).
        dims = arg(node, 2, "dims", []) if str(node.target).startswith("aten.roll") else arg(node, 1, "dims")
        dims = [dims] if isinstance(dims, int) else list(dims)
        if not dims:
            dims = list(range(len(X)))
        out = list(X)
        for d in dims:
            d = norm_dim(int(d), len(X))
            ctx.pin(X[d], f"reordered by {node.target}")
            out[d] = ctx.fresh(len(X[d]))
        return out


@register("aten.roll")
class Roll(_Roll):
    def code(self, c: Call) -> Expr:
        return method(c.e("self"), "roll", dims_arg(c, "shifts"), *([dims_arg(c, "dims")] if c["dims"] else []))


@register("aten.flip")
class Flip(_Roll):
    def code(self, c: Call) -> Expr:
        return method(c.e("self"), "flip", dims_arg(c, "dims"))


@register("aten.pixel_shuffle", "aten.pixel_unshuffle")
class PixelShuffle(OpRule):
    """``pixel_shuffle(x, r)``: input channels ``c·r² … c·r² + r² − 1`` become output channel
    ``c``'s r×r sub-pixels, so they are one block, removed whole with it; ``pixel_unshuffle``
    the reverse: input channel ``c`` becomes the block of output channels ``c·r² …``. Spatial
    dims come out fresh (the ids of the input's spatial dims are pinned: they mix with
    sub-pixels). No shape constant to rewrite: the kept channels arrive in whole blocks."""

    def flow(self, ctx: FlowContext, node: fx.Node) -> Any:
        X = ctx.dims(node.args[0])
        shape = ctx.shape(node)
        if X is None or shape is None or len(X) < 3:
            return unknown(ctx, node)
        r2 = int(args_of(node)[1]) ** 2
        ch = len(X) - 3
        for d in (len(X) - 2, len(X) - 1):
            ctx.pin(X[d], f"{node.target} mixes this dim with sub-pixel channels")
        if op_key(node.target).name == "pixel_shuffle":
            blocks = X[ch].reshape(-1, r2)
            ctx.ids.union(blocks[:, 1:].ravel(), np.repeat(blocks[:, 0], r2 - 1))
            out_ch = np.ascontiguousarray(blocks[:, 0])
        else:
            out_ch = np.repeat(X[ch], r2)
        return [*X[:ch], out_ch, ctx.fresh(shape[-2]), ctx.fresh(shape[-1])]

    def code(self, c: Call) -> Expr:
        name = op_key(c.target).name
        factor = "upscale_factor" if name == "pixel_shuffle" else "downscale_factor"
        return fn(f"F.{name}", c.e("self"), c.e(factor))


@register("aten.channel_shuffle", "aten.native_channel_shuffle")
class ChannelShuffle(OpRule):
    def code(self, c: Call) -> Expr:
        return fn("F.channel_shuffle", c.e("self"), c.e("groups"))
