"""Normalisations: batch, instance, group, layer and RMS norm.

Per-channel norms (batch, instance, group) tie their affine parameters and running
statistics to the input's channel dim; group norm removes whole groups; layer and RMS
norm normalise over their last dims, which are pinned (the statistics would change)."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import fx

from ._code import Call, Expr, LayerCall, LayerSpec, fn, literal, torch_module_class
from ._common import arg, args_of, changed_kw, nn_kw, scale_groups, unknown
from ._context import BuildContext, Dims, FlowContext
from ._rule import OpRule, op_key, register

__all__ = ["BatchNorm", "InstanceNorm", "NativeBatchNorm", "NativeBatchNormEval", "GroupNorm", "LayerNorm", "RmsNorm"]


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


def _norm_path(c: LayerCall) -> tuple[str, int, bool, bool] | None:
    """(path, features, affine, tracks running stats) of a batch/instance norm node."""
    w, rm = c.tensor("weight"), c.tensor("running_mean")
    ref = "weight" if c["weight"] is not None else "running_mean"
    path = c.path_of(ref, ref)
    if path is None:
        return None
    affine, track = c["weight"] is not None, c["running_mean"] is not None
    if affine != (c["bias"] is not None) or track != (c["running_var"] is not None):
        return None
    if not all(c.reads(k, path, k) for k in ("weight", "bias", "running_mean", "running_var")):
        return None
    t = w if w is not None else rm
    assert t is not None
    return path, int(t.shape[0]), affine, track


def _momentum(c: LayerCall, path: str) -> list[str]:
    orig = c.module(path)
    if orig is not None and hasattr(orig, "momentum"):
        m = orig.momentum  # the captured graph holds 0.0 where the module's momentum is None
        return [] if m == 0.1 else [f"momentum={m!r}"]
    return nn_kw(c, "momentum", 0.1)


def _schema_arg(node: fx.Node, name: str, default: Any = None) -> Any:
    """The argument ``name`` of ``node`` by its op's schema (positional or keyword)."""
    schema = getattr(node.target, "_schema", None)
    if schema is not None:
        for i, a in enumerate(schema.arguments):
            if a.name == name:
                return node.args[i] if i < len(node.args) else node.kwargs.get(name, default)
    return node.kwargs.get(name, default)


def _pin_statistics(ctx: FlowContext, node: fx.Node, X: Dims, dims: range | list[int]) -> None:
    """Statistics computed over ``dims`` (a mean and variance): channels that flow along them
    cannot be removed, since the statistics would change (e.g. a weight standardised with
    batch_norm over its flattened input channels). Batch and spatial dims carry no groups
    of their own, so this only ever pins channels that a reshape moved there."""
    for d in dims:
        if d < len(X):
            ctx.pin(X[d], f"normalized over by {node.target} (batch statistics over dim {d})")


def _batch_norm_flow(ctx: FlowContext, node: fx.Node) -> Dims:
    w, b = arg(node, 1, "weight"), arg(node, 2, "bias")
    X = _per_channel(ctx, node, node.args[0], [w, b, _schema_arg(node, "running_mean"),
                                               _schema_arg(node, "running_var")], w is not None and b is not None)
    name = op_key(node.target).packet
    stats = (bool(_schema_arg(node, "use_input_stats", True)) if name == "aten.instance_norm"
             else False if name == "aten._native_batch_norm_legit_no_training"
             else bool(_schema_arg(node, "training", False)) or _schema_arg(node, "running_mean") is None)
    if stats and isinstance(X, list) and len(X) >= 2:
        per_sample = name == "aten.instance_norm"
        _pin_statistics(ctx, node, X, [d for d in range(len(X)) if d != 1 and (d != 0 or not per_sample)])
    return X


@register("aten.batch_norm")
class BatchNorm(OpRule):
    affine_args = ((1, "weight"), (2, "bias"))

    def flow(self, ctx: FlowContext, node: fx.Node) -> Dims:
        return _batch_norm_flow(ctx, node)

    def zero_by_params(self, node: fx.Node, zero: set[str]) -> bool:
        return _affine_zero(self, node, zero)

    def code(self, c: Call) -> Expr:
        training = "True" if c["training"] or c["running_mean"] is None else "self.training"
        return fn("F.batch_norm", c.e("input"), c.e("running_mean"), c.e("running_var"), c.e("weight"), c.e("bias"),
                  training, c.e("momentum"), c.e("eps"))

    def layer(self, c: LayerCall) -> LayerSpec | None:
        found = _norm_path(c)
        if found is None:
            return None
        path, features, affine, track = found
        if track == bool(c["training"]):  # running stats tracked but batch stats used (or the reverse): not nn's rule
            return None
        cls = torch_module_class(c.module_type)
        if cls not in ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d"):
            cls = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}.get(c.rank or 0)
            if cls is None:
                return None
        args = [str(features)] + nn_kw(c, "eps", 1e-5) + _momentum(c, path)
        args += ([] if affine else ["affine=False"]) + ([] if track else ["track_running_stats=False"])
        state = (("weight", "bias") if affine else ()) + (("running_mean", "running_var", "num_batches_tracked")
                                                          if track else ())
        bound = tuple((k, k) for k in ("weight", "bias", "running_mean", "running_var"))
        return LayerSpec(path, cls, tuple(args), state, bound, "input", (("features", features),))


@register("aten.instance_norm")
class InstanceNorm(OpRule):
    affine_args = ((1, "weight"), (2, "bias"))

    def flow(self, ctx: FlowContext, node: fx.Node) -> Dims:
        return _batch_norm_flow(ctx, node)

    def zero_by_params(self, node: fx.Node, zero: set[str]) -> bool:
        return _affine_zero(self, node, zero)

    def code(self, c: Call) -> Expr:
        return fn("F.instance_norm", c.e("input"), c.e("running_mean"), c.e("running_var"), c.e("weight"),
                  c.e("bias"), c.e("use_input_stats"), c.e("momentum"), c.e("eps"))

    def layer(self, c: LayerCall) -> LayerSpec | None:
        found = _norm_path(c)
        if found is None:
            return None
        path, features, affine, track = found
        if bool(c["use_input_stats"]) == track:
            return None
        cls = torch_module_class(c.module_type)
        if cls not in ("InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"):
            cls = {3: "InstanceNorm1d", 4: "InstanceNorm2d", 5: "InstanceNorm3d"}.get(c.rank or 0)
            if cls is None:
                return None
        args = [str(features)] + nn_kw(c, "eps", 1e-5) + _momentum(c, path)
        args += (["affine=True"] if affine else []) + (["track_running_stats=True"] if track else [])
        state = (("weight", "bias") if affine else ()) + (("running_mean", "running_var", "num_batches_tracked")
                                                          if track else ())
        bound = tuple((k, k) for k in ("weight", "bias", "running_mean", "running_var"))
        return LayerSpec(path, cls, tuple(args), state, bound, "input", (("features", features),))


def _affine_zero(rule: OpRule, node: fx.Node, zero: set[str]) -> bool:
    """A norm's output is zero once its affine weight and bias (``rule.affine_args``) are."""
    ops = rule.affine_operands(node)
    return len(ops) == 2 and all(o.name in zero for o in ops)


@register("aten._native_batch_norm_legit_functional", "aten.native_batch_norm", "aten._native_batch_norm_legit")
class NativeBatchNorm(OpRule):
    affine_args = ((1, "weight"), (2, "bias"))

    def flow(self, ctx: FlowContext, node: fx.Node) -> Any:
        X = _batch_norm_flow(ctx, node)
        shapes = ctx.out_shapes(node)
        rest = [ctx.fresh_dims(s) if s is not None else None for s in shapes[1:]]
        for r in rest:
            if r is not None and len(r) == 1 and len(r[0]) == len(X[1]):
                ctx.union(r[0], X[1])
        return (X, *rest)


@register("aten._native_batch_norm_legit_no_training")
class NativeBatchNormEval(NativeBatchNorm):
    def zero_by_params(self, node: fx.Node, zero: set[str]) -> bool:
        return _affine_zero(self, node, zero)


@register("aten.group_norm")
class GroupNorm(OpRule):
    affine_args = ((2, "weight"), (3, "bias"))

    def flow(self, ctx: FlowContext, node: fx.Node) -> Dims:
        X = ctx.dims(node.args[0])
        assert X is not None
        groups = int(args_of(node)[1])
        channels = len(X[1])
        if groups != channels:
            # Removing a channel changes its group's statistics; removing a whole group does not.
            blocks = X[1].reshape(groups, -1)
            ctx.ids.union(blocks[:, 1:].ravel(), np.repeat(blocks[:, 0], blocks.shape[1] - 1))
        w, b = arg(node, 2, "weight"), arg(node, 3, "bias")
        out = _per_channel(ctx, node, node.args[0], [w, b], w is not None and b is not None)
        _pin_statistics(ctx, node, X, range(2, len(X)))
        return out

    def rewrite(self, ctx: BuildContext, node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
        args[1] = scale_groups(ctx, node, int(args[1]))
        return node.target, args, kwargs

    def zero_by_params(self, node: fx.Node, zero: set[str]) -> bool:
        return _affine_zero(self, node, zero)

    def code(self, c: Call) -> Expr:
        return fn("F.group_norm", c.e("input"), c.e("num_groups"), c.e("weight"), c.e("bias"), c.e("eps"))

    def layer(self, c: LayerCall) -> LayerSpec | None:
        w = c.tensor("weight")
        path = c.path_of("weight", "weight")
        if w is None or path is None or c["bias"] is None or not c.reads("bias", path, "bias"):
            return None
        args = [c.t("num_groups"), str(int(w.shape[0]))] + changed_kw(c, "eps")
        return LayerSpec(path, "GroupNorm", tuple(args), ("weight", "bias"), (("weight", "weight"), ("bias", "bias")),
                         "input", (("features", int(w.shape[0])),))


class _LastDimsNorm(OpRule):
    def flow(self, ctx: FlowContext, node: fx.Node) -> Dims:
        X = ctx.dims(node.args[0])
        assert X is not None
        k = len(args_of(node)[1])
        name = op_key(node.target).name
        for d in X[-k:]:
            ctx.pin(d, f"normalized over by {name} (removing a channel changes the statistics)")
        params = [arg(node, 2, "weight")] + ([arg(node, 3, "bias")] if name == "layer_norm" else [])
        for p in params:
            P = ctx.dims(p)
            if P is not None:
                for a, b in zip(P, X[-k:]):
                    ctx.union(a, b)
        return X


@register("aten.layer_norm")
class LayerNorm(_LastDimsNorm):
    affine_args = ((2, "weight"), (3, "bias"))

    def code(self, c: Call) -> Expr:
        return fn("F.layer_norm", c.e("input"), c.render(tuple(c["normalized_shape"])), c.e("weight"), c.e("bias"),
                  c.e("eps"))

    def layer(self, c: LayerCall) -> LayerSpec | None:
        w = c.tensor("weight")
        path = c.path_of("weight", "weight")
        if w is None or path is None or not c.reads("bias", path, "bias"):
            return None
        shape = list(c["normalized_shape"])
        if list(w.shape) != shape:
            return None
        args = [literal(shape[0] if len(shape) == 1 else tuple(shape)).text] + changed_kw(c, "eps")
        if c["bias"] is None:
            args.append("bias=False")
        state = ("weight",) + (("bias",) if c["bias"] is not None else ())
        return LayerSpec(path, "LayerNorm", tuple(args), state, (("weight", "weight"), ("bias", "bias")), "input",
                         (("features", int(w.numel())),))


@register("aten.rms_norm")
class RmsNorm(_LastDimsNorm):
    affine_args = ((2, "weight"),)
