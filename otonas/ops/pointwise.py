"""Elementwise ops: activations, arithmetic, copies, casts and dropout.

Their channels flow straight through, broadcast right-aligned (the default flow of an op
tagged pointwise; the rules below name the ones torch does not tag). The flags say how
zeros pass: ``zero_preserving`` (f(0) == 0) and ``zero_if`` (mul: any zero operand; add and
sub: all of them; div: the numerator)."""

from __future__ import annotations

from typing import Any, cast

from torch import fx

from ._code import ADD, BAND, BOR, BXOR, CMP, MUL, POWER, UNARY, Call, Expr, LayerCall, LayerSpec, binop, fn, method
from ._code import torch_module_class
from ._common import arg, broadcast, mutated_arg, tensor_args, track_param, unknown
from ._context import Dims, FlowContext
from ._meta import module_path
from ._rule import OpRule, op_key, register


class Pointwise(OpRule):
    """An elementwise op: operands broadcast right-aligned, dims of full size share ids."""

    def flow(self, ctx: FlowContext, node: fx.Node) -> Any:
        return broadcast(ctx, node, tensor_args(node))


# --- activations ------------------------------------------------------------------------
_ACTIVATIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "aten.relu": ("F.relu", ()), "aten.silu": ("F.silu", ()), "aten.mish": ("F.mish", ()),
    "aten.hardswish": ("F.hardswish", ()), "aten.hardsigmoid": ("F.hardsigmoid", ()),
    "aten.gelu": ("F.gelu", ("approximate",)), "aten.leaky_relu": ("F.leaky_relu", ("negative_slope",)),
    "aten.softplus": ("F.softplus", ("beta", "threshold")), "aten.log_sigmoid": ("F.logsigmoid", ()),
    "aten.glu": ("F.glu", ("dim",)), "aten.selu": ("F.selu", ()), "aten.celu": ("F.celu", ("alpha",)),
    "aten.sigmoid": ("torch.sigmoid", ()), "aten.tanh": ("torch.tanh", ()), "aten.relu6": ("F.relu6", ()),
    "aten.softshrink": ("F.softshrink", ("lambd",)), "aten.hardshrink": ("F.hardshrink", ("lambd",)),
}


class Activation(Pointwise):
    """An activation, elementwise whether or not torch tags it pointwise (``hardswish`` and
    ``log_sigmoid`` are not), written as its ``torch.nn.functional`` call."""

    def code(self, c: Call) -> Expr | None:
        fname, kw = _ACTIVATIONS[op_key(c.target).packet]
        return fn(fname, c.e("self"), *c.changed(*kw))


@register("aten.relu", "aten.silu", "aten.mish", "aten.hardswish", "aten.gelu", "aten.leaky_relu", "aten.tanh")
class ZeroActivation(Activation):
    zero_preserving = True
    keeps_zero_tensor = True


@register("aten.selu", "aten.celu", "aten.softshrink", "aten.hardshrink")
class ZeroActivationNotErased(Activation):
    zero_preserving = True


@register("aten.hardsigmoid", "aten.softplus", "aten.log_sigmoid", "aten.sigmoid")
class NonzeroActivation(Activation):
    pass


@register("aten.relu6")
class Relu6(Activation):
    zero_preserving = True
    keeps_zero_tensor = True


@register("aten.glu")
class Glu(Activation):
    def flow(self, ctx: FlowContext, node: fx.Node) -> Any:
        return unknown(ctx, node)  # halves a dim: not tracked


@register("aten.sin", "aten.abs", "aten.square")
class ZeroPreserving(OpRule):
    zero_preserving = True


@register("aten.elu")
class Elu(Pointwise):
    zero_preserving = True
    keeps_zero_tensor = True

    def code(self, c: Call) -> Expr | None:
        if not (c.is_default("scale") and c.is_default("input_scale")):
            return None
        return fn("F.elu", c.e("self"), *c.changed("alpha"))


@register("aten.hardtanh")
class Hardtanh(Pointwise):
    zero_preserving = True
    keeps_zero_tensor = True

    def code(self, c: Call) -> Expr:
        if c["min_val"] == 0 and c["max_val"] == 6:
            return fn("F.relu6", c.e("self"))
        return fn("F.hardtanh", c.e("self"), c.e("min_val"), c.e("max_val"))


@register("aten.fill_", "aten.lerp", "aten.addcmul", "aten.addcdiv", "aten.copy_", "aten.copy",
          "aten.rrelu")
class PointwiseUntagged(Pointwise):
    """Elementwise ops torch does not tag pointwise."""


@register("aten.prelu")
class PRelu(OpRule):
    """``F.prelu(x, weight)``: one slope per channel of dim 1 (or one for all channels).

    Not a broadcast: a ``(C,)`` weight belongs to dim 1 of ``x``, whatever the rank, so its
    slope c is removed with channel c. ``prelu(0) == 0`` for any slope."""

    zero_preserving = True
    keeps_zero_tensor = True

    def flow(self, ctx: FlowContext, node: fx.Node) -> Any:
        X, W = ctx.dims(node.args[0]), ctx.dims(node.args[1])
        if X is None or W is None or len(W) != 1:
            return unknown(ctx, node)
        if len(W[0]) > 1:  # per channel (a single slope is shared by all: nothing to tie)
            if len(X) < 2 or len(X[1]) != len(W[0]):
                return unknown(ctx, node)
            ctx.union(W[0], X[1])
        return X

    def code(self, c: Call) -> Expr | None:
        return fn("F.prelu", c.e("self"), c.e("weight"))

    def layer(self, c: LayerCall) -> LayerSpec | None:
        w = c.tensor("weight")
        path = c.path_of("weight", "weight")
        if w is None or path is None or w.dim() != 1:
            return None
        args = [] if w.numel() == 1 else [str(int(w.numel()))]
        return LayerSpec(path, "PReLU", tuple(args), ("weight",), (("weight", "weight"),), "self",
                         (("features", int(w.numel())),))


@register("aten.where")
class Where(Pointwise):
    def code(self, c: Call) -> Expr | None:
        if op_key(c.target).overload not in ("self",):
            return None
        return fn("torch.where", c.e("condition"), c.e("self"), c.e("other"))


@register("aten.masked_fill")
class MaskedFill(Pointwise):
    def code(self, c: Call) -> Expr:
        return method(c.e("self"), "masked_fill", c.e("mask"), c.e("value"))


@register("aten.clamp")
class Clamp(Pointwise):
    def code(self, c: Call) -> Expr:
        kw = [f"{k}={c.t(k)}" for k in ("min", "max") if k in c.values and c[k] is not None]
        return method(c.e("self"), "clamp", *kw)


@register("aten.clamp_min", "aten.clamp_max")
class ClampBound(OpRule):
    def code(self, c: Call) -> Expr:
        kw = [f"{k}={c.t(k)}" for k in ("min", "max") if k in c.values and c[k] is not None]
        return method(c.e("self"), "clamp", *kw)


# --- arithmetic -------------------------------------------------------------------------
_BINOPS = {"add": ("+", ADD), "sub": ("-", ADD), "mul": ("*", MUL), "div": ("/", MUL),
           "floor_divide": ("//", MUL), "remainder": ("%", MUL), "eq": ("==", CMP), "ne": ("!=", CMP),
           "lt": ("<", CMP), "le": ("<=", CMP), "gt": (">", CMP), "ge": (">=", CMP),
           "bitwise_and": ("&", BAND), "bitwise_or": ("|", BOR), "bitwise_xor": ("^", BXOR)}


class Binary(OpRule):
    """A binary operator written as Python's (``a + b``), or ``torch.add(a, b, alpha=2)``."""

    def code(self, c: Call) -> Expr | None:
        op = op_key(c.target).name
        sym, prec = _BINOPS[op]
        if "alpha" in c.values and not c.is_default("alpha"):
            return fn(f"torch.{op}", c.e("self"), c.e("other"), f"alpha={c.t('alpha')}")
        if str(c.target).endswith("Tensor_mode"):
            return fn("torch.div", c.e("self"), c.e("other"), f"rounding_mode={c.t('rounding_mode')}")
        return binop(c.e("self"), sym, c.e("other"), prec)


@register("aten.add")
class Add(Binary):
    join = "add"
    zero_if = "all"


@register("aten.sub")
class Sub(Binary):
    zero_if = "all"


@register("aten.mul")
class Mul(Binary):
    zero_if = "any"


@register("aten.div")
class Div(Binary):
    zero_if = "numerator"


@register(*[f"aten.{op}" for op in _BINOPS if op not in ("add", "sub", "mul", "div")])
class OtherBinary(Binary):
    pass


@register("aten.max.other", "aten.min.other", "aten.maximum", "aten.minimum", "aten.fmax", "aten.fmin")
class ElementwiseMinMax(OpRule):
    """``torch.max(a, b)`` / ``torch.min(a, b)`` (the ``.other`` overloads; the packets
    ``aten.max`` / ``aten.min`` are the reductions of reduce.py) and ``maximum`` / ``minimum`` /
    ``fmax`` / ``fmin``: elementwise, so channels broadcast like any binary op (the default flow
    of a pointwise-tagged op); registered by overload so that the reduction rule never sees them."""

    def code(self, c: Call) -> Expr:
        name = {"max": "maximum", "min": "minimum"}.get(op_key(c.target).name, op_key(c.target).name)
        return fn(f"torch.{name}", c.e("self"), c.e("other"))


@register("aten.rsub")
class Rsub(OpRule):
    def code(self, c: Call) -> Expr | None:
        if not c.is_default("alpha"):
            return None
        return binop(c.e("other"), "-", c.e("self"), ADD)


@register("aten.pow")
class Pow(OpRule):
    def code(self, c: Call) -> Expr:
        return binop(c.e("self"), "**", c.e("exponent"), POWER, right_assoc=True)


@register("aten.neg")
class Neg(OpRule):
    zero_preserving = True
    keeps_zero_tensor = True

    def code(self, c: Call) -> Expr:
        return Expr(f"-{c.e('self').paren(UNARY)}", UNARY)


@register("aten.bitwise_not")
class BitwiseNot(OpRule):
    def code(self, c: Call) -> Expr:
        return Expr(f"~{c.e('self').paren(UNARY)}", UNARY)


# --- copies, casts, dropout: the identity on channels -------------------------------------
class Identity(OpRule):
    """Returns (a copy of) its input: the same ids, and a parameter's copy is still one."""

    def flow(self, ctx: FlowContext, node: fx.Node) -> Dims:
        src = node.args[0]
        track_param(ctx, node, src)
        d = ctx.dims(src)
        return d if d is not None else ctx.fresh_dims(ctx.shape(node))


@register("aten.alias")
class Alias(Identity):
    zero_preserving = True
    keeps_zero_tensor = True
    identity_if_same_shape = True

    def passes_input(self, node: fx.Node) -> fx.Node | None:
        return cast(fx.Node, node.args[0])


@register("aten.type_as", "aten.bernoulli", "aten.bernoulli_")
class PlainIdentity(Identity):
    pass


@register("aten.lift_fresh_copy")
class LiftFreshCopy(Identity):
    def passes_input(self, node: fx.Node) -> fx.Node | None:
        """A copy of a constant is the constant itself while nothing writes to the copy."""
        written = any(mutated_arg(u) == 0 and u.args and u.args[0] is node for u in node.users)
        if written or any(u.op == "output" for u in node.users):
            return None
        return cast(fx.Node, node.args[0])


@register("aten.contiguous")
class Contiguous(Identity):
    zero_preserving = True
    keeps_zero_tensor = True
    identity_if_same_shape = True

    def code(self, c: Call) -> Expr:
        return method(c.e("self"), "contiguous", *c.changed("memory_format"))


@register("aten.clone")
class Clone(Identity):
    zero_preserving = True
    keeps_zero_tensor = True
    identity_if_same_shape = True

    def code(self, c: Call) -> Expr:
        return method(c.e("self"), "clone", *(["memory_format=" + c.t("memory_format")]
                                              if c["memory_format"] is not None else []))


@register("aten.detach")
class Detach(Identity):
    zero_preserving = True
    identity_if_same_shape = True

    def code(self, c: Call) -> Expr:
        return method(c.e("self"), "detach")


def _to_code(c: Call) -> Expr:
    """``x.to(dtype, memory_format=..., copy=True)`` for ``aten.to`` and ``aten._to_copy``; a
    device baked in at capture is left out: the tensor stays where the model runs."""
    kw = []
    if c["dtype"] is not None:
        kw.append(c.t("dtype") if str(c.target) == "aten.to.dtype" else f"dtype={c.t('dtype')}")
    if c["memory_format"] not in (None,) and not c.is_default("memory_format"):
        kw.append(f"memory_format={c.t('memory_format')}")
    if c["copy"] or str(c.target).startswith("aten._to_copy"):
        kw.append("copy=True")
    return method(c.e("self"), "to", *kw)


@register("aten._to_copy")
class ToCopy(Identity):
    zero_preserving = True
    keeps_zero_tensor = True

    def code(self, c: Call) -> Expr:
        return _to_code(c)


@register("aten.to")
class To(Identity):
    zero_preserving = True

    def code(self, c: Call) -> Expr | None:
        if op_key(c.target).overload not in ("dtype", "dtype_layout", "device"):
            return None
        return _to_code(c)


_DROPOUTS = {"aten.dropout": ("Dropout",), "aten.feature_dropout": ("Dropout1d", "Dropout2d", "Dropout3d"),
             "aten.alpha_dropout": ("AlphaDropout",), "aten.feature_alpha_dropout": ("FeatureAlphaDropout",)}


def _no_dropout(node: fx.Node) -> fx.Node | None:
    """Dropout with p=0 is its input (and draws no random numbers either)."""
    return cast(fx.Node, node.args[0]) if arg(node, 1, "p") == 0 else None


class Dropout(Identity):
    """In eval the graph holds ``dropout(x, p, False)``: the layer (or ``self.training``)
    brings train mode back."""

    def passes_input(self, node: fx.Node) -> fx.Node | None:
        return _no_dropout(node)

    def code(self, c: Call) -> Expr:
        name = {"dropout": "F.dropout", "alpha_dropout": "F.alpha_dropout", "feature_dropout": "torch.feature_dropout",
                "feature_alpha_dropout": "torch.feature_alpha_dropout"}[op_key(c.target).name]
        # captured in eval mode, so ``train`` reads False: the functional call follows the module's mode
        return fn(name, c.e("input"), c.e("p"), "True" if c["train"] else "self.training")

    def layer(self, c: LayerCall) -> LayerSpec | None:
        """nn.Dropout modules: in eval the graph holds ``dropout(x, p, False)``; the layer brings train mode back."""
        cls = torch_module_class(c.module_type)
        packet = op_key(c.target).packet
        if cls not in _DROPOUTS.get(packet, ()) or bool(c["train"]):
            return None
        path = module_path(c.node)
        if not path:
            return None
        return LayerSpec(path, cls, (c.t("p"),), (), (), "input", ())


@register("aten.dropout")
class ZeroDropout(Dropout):
    zero_preserving = True
    keeps_zero_tensor = True


@register("aten.feature_dropout")
class FeatureDropout(Dropout):
    zero_preserving = True


@register("aten.alpha_dropout", "aten.feature_alpha_dropout")
class AlphaDropout(Dropout):
    pass


@register("aten.native_dropout")
class NativeDropout(OpRule):
    def flow(self, ctx: FlowContext, node: fx.Node) -> Any:
        d = ctx.dims(node.args[0])
        return (d, d)
