"""How each ATen op reads in the generated ``model.py``: one rule per op.

A rule gets a :class:`~otonas.export._expr.Call` (the node's arguments by schema name)
and returns the expression as source, or ``None`` to let the generic form handle it
(``torch.<op>(...)`` where torch has a public function of that name, else
``torch.ops.aten.<op>.<overload>(...)``, which is reported as a known gap). Supporting a
new op readably is adding one rule here. Layers (``nn.Conv2d`` ...) are recognised
before these rules run, in ``_layers.py``.
"""

from __future__ import annotations

from collections.abc import Callable

from ..analysis import Registry
from ._expr import ADD, ATOM, BAND, BOR, BXOR, CMP, MUL, POWER, UNARY, Call, Expr, binop, squash

__all__ = ["CODE_RULES", "fn", "method"]

CODE_RULES: Registry[Callable[[Call], Expr | None]] = Registry("export code rule")
rule = CODE_RULES.register

INT_MAX = 2**62  # slice ends at or beyond this mean "to the end"


def _text(a: Expr | str) -> str:
    return a.text if isinstance(a, Expr) else a


def fn(name: str, *args: Expr | str) -> Expr:
    return Expr(f"{name}({', '.join(_text(a) for a in args)})")


def method(recv: Expr, name: str, *args: Expr | str) -> Expr:
    return Expr(f"{recv.recv}.{name}({', '.join(_text(a) for a in args)})")


def _sizes(c: Call, name: str) -> list[str]:
    """A size list spelled as varargs: ``x.view(batch, 8, -1)``."""
    return [c.render(s).text for s in c[name]]


def _dims(c: Call, name: str) -> str:
    return c.render(squash(c[name]) if len(c[name]) == 1 else tuple(c[name])).text


# --- activations ------------------------------------------------------------------------
def _unary_f(fname: str, *kw: str) -> Callable[[Call], Expr]:
    def emit(c: Call) -> Expr:
        return fn(fname, c.e("self"), *c.changed(*kw))
    return emit


for _op, _f, _kw in [("relu", "F.relu", ()), ("silu", "F.silu", ()), ("mish", "F.mish", ()),
                     ("hardswish", "F.hardswish", ()), ("hardsigmoid", "F.hardsigmoid", ()),
                     ("gelu", "F.gelu", ("approximate",)), ("leaky_relu", "F.leaky_relu", ("negative_slope",)),
                     ("softplus", "F.softplus", ("beta", "threshold")), ("log_sigmoid", "F.logsigmoid", ()),
                     ("glu", "F.glu", ("dim",)), ("selu", "F.selu", ()), ("celu", "F.celu", ("alpha",)),
                     ("sigmoid", "torch.sigmoid", ()), ("tanh", "torch.tanh", ()), ("relu6", "F.relu6", ()),
                     ("softshrink", "F.softshrink", ("lambd",)), ("hardshrink", "F.hardshrink", ("lambd",))]:
    rule(f"aten.{_op}")(_unary_f(_f, *_kw))


@rule("aten.elu")
def _elu(c: Call) -> Expr | None:
    if not (c.is_default("scale") and c.is_default("input_scale")):
        return None
    return fn("F.elu", c.e("self"), *c.changed("alpha"))


@rule("aten.hardtanh")
def _hardtanh(c: Call) -> Expr:
    if c["min_val"] == 0 and c["max_val"] == 6:
        return fn("F.relu6", c.e("self"))
    return fn("F.hardtanh", c.e("self"), c.e("min_val"), c.e("max_val"))


@rule("aten.prelu")
def _prelu(c: Call) -> Expr:
    return fn("F.prelu", c.e("self"), c.e("weight"))


@rule("aten.softmax.int", "aten._softmax", "aten.log_softmax.int", "aten._log_softmax")
def _softmax(c: Call) -> Expr:
    name = "F.log_softmax" if "log" in str(c.target) else "F.softmax"
    extra = [f"dtype={c.t('dtype')}"] if "dtype" in c.values and c["dtype"] is not None else []
    return fn(name, c.e("self"), f"dim={c.t('dim')}", *extra)


# --- arithmetic -------------------------------------------------------------------------
_BINOPS = {"add": ("+", ADD), "sub": ("-", ADD), "mul": ("*", MUL), "div": ("/", MUL), "matmul": ("@", MUL),
           "floor_divide": ("//", MUL), "remainder": ("%", MUL), "eq": ("==", CMP), "ne": ("!=", CMP),
           "lt": ("<", CMP), "le": ("<=", CMP), "gt": (">", CMP), "ge": (">=", CMP),
           "bitwise_and": ("&", BAND), "bitwise_or": ("|", BOR), "bitwise_xor": ("^", BXOR)}


def _binary(op: str, sym: str, prec: int) -> Callable[[Call], Expr | None]:
    def emit(c: Call) -> Expr | None:
        if "alpha" in c.values and not c.is_default("alpha"):
            return fn(f"torch.{op}", c.e("self"), c.e("other"), f"alpha={c.t('alpha')}")
        if str(c.target).endswith("Tensor_mode"):
            return fn("torch.div", c.e("self"), c.e("other"), f"rounding_mode={c.t('rounding_mode')}")
        return binop(c.e("self"), sym, c.e("other"), prec)
    return emit


for _op, (_sym, _prec) in _BINOPS.items():
    rule(f"aten.{_op}")(_binary(_op, _sym, _prec))


@rule("aten.rsub")
def _rsub(c: Call) -> Expr | None:
    if not c.is_default("alpha"):
        return None
    return binop(c.e("other"), "-", c.e("self"), ADD)


@rule("aten.pow")
def _pow(c: Call) -> Expr:
    return binop(c.e("self"), "**", c.e("exponent"), POWER, right_assoc=True)


@rule("aten.neg")
def _neg(c: Call) -> Expr:
    return Expr(f"-{c.e('self').paren(UNARY)}", UNARY)


@rule("aten.bitwise_not")
def _invert(c: Call) -> Expr:
    return Expr(f"~{c.e('self').paren(UNARY)}", UNARY)


# Python operators on sizes (batch * 49) and on tuples (getitem).
_PY = {"add": ("+", ADD), "sub": ("-", ADD), "mul": ("*", MUL), "floordiv": ("//", MUL), "truediv": ("/", MUL),
       "mod": ("%", MUL), "pow": ("**", POWER), "eq": ("==", CMP), "ne": ("!=", CMP), "lt": ("<", CMP),
       "le": ("<=", CMP), "gt": (">", CMP), "ge": (">=", CMP), "and_": ("&", BAND), "or_": ("|", BOR)}


def _py(sym: str, prec: int) -> Callable[[Call], Expr]:
    def emit(c: Call) -> Expr:
        return binop(c.e("a"), sym, c.e("b"), prec, right_assoc=sym == "**")
    return emit


for _op, (_sym, _prec) in _PY.items():
    rule(f"operator.{_op}")(_py(_sym, _prec))


@rule("operator.neg")
def _pyneg(c: Call) -> Expr:
    return Expr(f"-{c.e('a').paren(UNARY)}", UNARY)


@rule("operator.getitem")
def _getitem(c: Call) -> Expr:
    return Expr(f"{c.e('a').recv}[{c.t('b')}]")


# --- reductions ---------------------------------------------------------------------------
def _reduce(name: str) -> Callable[[Call], Expr]:
    def emit(c: Call) -> Expr:
        args: list[str] = []
        if "dim" in c.values and c["dim"] is not None and c["dim"] != []:
            d = c["dim"]
            args.append(_dims(c, "dim") if isinstance(d, (list, tuple)) else c.t("dim"))
        if c["keepdim"]:
            args.append("keepdim=True")
        for k in ("correction", "dtype"):
            if k in c.values and c[k] is not None:
                args.append(f"{k}={c.t(k)}")
        return method(c.e("self"), name, *args)
    return emit


for _op in ("mean", "sum", "amax", "amin", "max", "min", "argmax", "argmin", "prod", "var", "std", "logsumexp",
            "all", "any"):
    rule(f"aten.{_op}")(_reduce(_op))


@rule("aten.cumsum", "aten.cumprod")
def _cum(c: Call) -> Expr:
    name = str(c.target).split(".")[1]
    return method(c.e("self"), name, c.e("dim"))


@rule("aten.linalg_vector_norm")
def _vnorm(c: Call) -> Expr:
    return fn("torch.linalg.vector_norm", c.e("self"), *c.changed("ord", "dim", "keepdim", "dtype"))


# --- shapes ---------------------------------------------------------------------------------
@rule("aten.view.default")
def _view(c: Call) -> Expr:
    return method(c.e("self"), "view", *_sizes(c, "size"))


@rule("aten.reshape", "aten._unsafe_view")
def _reshape(c: Call) -> Expr:
    return method(c.e("self"), "reshape", *_sizes(c, "shape" if "shape" in c.values else "size"))


@rule("aten.expand")
def _expand(c: Call) -> Expr:
    return method(c.e("self"), "expand", *_sizes(c, "size"))


@rule("aten.repeat")
def _repeat(c: Call) -> Expr:
    return method(c.e("self"), "repeat", *_sizes(c, "repeats"))


@rule("aten.permute")
def _permute(c: Call) -> Expr:
    return method(c.e("self"), "permute", *_sizes(c, "dims"))


@rule("aten.transpose.int")
def _transpose(c: Call) -> Expr:
    return method(c.e("self"), "transpose", c.e("dim0"), c.e("dim1"))


@rule("aten.t")
def _t(c: Call) -> Expr:
    return method(c.e("self"), "t")


@rule("aten.flatten.using_ints")
def _flatten(c: Call) -> Expr:
    args = []
    if not (c.is_default("start_dim") and c.is_default("end_dim")):
        args.append(c.e("start_dim"))
    if not c.is_default("end_dim"):
        args.append(c.e("end_dim"))
    return method(c.e("self"), "flatten", *args)


@rule("aten.unflatten.int")
def _unflatten(c: Call) -> Expr:
    return method(c.e("self"), "unflatten", c.e("dim"), c.render(tuple(c["sizes"])))


@rule("aten.squeeze", "aten.unsqueeze")
def _squeeze(c: Call) -> Expr:
    name = str(c.target).split(".")[1]
    if "dim" in c.values:
        return method(c.e("self"), name, c.e("dim"))
    if "dims" in c.values:
        return method(c.e("self"), name, c.render(tuple(c["dims"])))
    return method(c.e("self"), name)


@rule("aten.contiguous")
def _contiguous(c: Call) -> Expr:
    return method(c.e("self"), "contiguous", *c.changed("memory_format"))


@rule("aten.clone")
def _clone(c: Call) -> Expr:
    return method(c.e("self"), "clone", *(["memory_format=" + c.t("memory_format")]
                                          if c["memory_format"] is not None else []))


@rule("aten.detach")
def _detach(c: Call) -> Expr:
    return method(c.e("self"), "detach")


@rule("aten.roll")
def _roll(c: Call) -> Expr:
    return method(c.e("self"), "roll", _dims(c, "shifts"), *([_dims(c, "dims")] if c["dims"] else []))


@rule("aten.flip")
def _flip(c: Call) -> Expr:
    return method(c.e("self"), "flip", _dims(c, "dims"))


@rule("aten.narrow")
def _narrow(c: Call) -> Expr:
    return method(c.e("self"), "narrow", c.e("dim"), c.e("start"), c.e("length"))


@rule("aten.split.Tensor", "aten.split_with_sizes", "aten.unsafe_split", "aten.unsafe_split_with_sizes")
def _split(c: Call) -> Expr:
    sizes = c["split_size"] if "split_size" in c.values else c["split_sizes"]
    dim = [] if c.is_default("dim") else [f"dim={c.t('dim')}"]
    return method(c.e("self"), "split", c.render(sizes), *dim)


@rule("aten.chunk")
def _chunk(c: Call) -> Expr:
    return method(c.e("self"), "chunk", c.e("chunks"), *([] if c.is_default("dim") else [f"dim={c.t('dim')}"]))


@rule("aten.unbind.int")
def _unbind(c: Call) -> Expr:
    return method(c.e("self"), "unbind", *([] if c.is_default("dim") else [c.e("dim")]))


@rule("aten.cat", "aten.stack")
def _cat(c: Call) -> Expr:
    name = "torch.cat" if "cat" in str(c.target) else "torch.stack"
    tensors = "[" + ", ".join(c.render(t).text for t in c["tensors"]) + "]"
    return fn(name, tensors, *([] if c.is_default("dim") else [f"dim={c.t('dim')}"]))


# --- indexing -------------------------------------------------------------------------------
def _subscript(c: Call, dim: int, item: str, merge: bool) -> Expr:
    src = c.e("self")
    if dim >= 0:
        if merge and src.base is not None and (dim >= len(src.items) or src.items[dim] == ":"):
            items = list(src.items) + [":"] * max(0, dim + 1 - len(src.items))
            items[dim] = item
            return Expr(f"{src.base}[{', '.join(items)}]", ATOM, src.base, tuple(items))
        items = [":"] * dim + [item]
        text = f"{src.recv}[{', '.join(items)}]"
        return Expr(text, ATOM, src.recv, tuple(items)) if merge else Expr(text)
    items = ["..."] + [item] + [":"] * (-dim - 1)
    return Expr(f"{src.recv}[{', '.join(items)}]")


def _bound(c: Call, v: object) -> str:
    return "" if v is None else c.render(v).text


@rule("aten.slice.Tensor")
def _slice(c: Call) -> Expr:
    start, end, step = c["start"], c["end"], c["step"]
    if start == 0:
        start = None
    if isinstance(end, int) and end >= INT_MAX:
        end = None
    item = f"{_bound(c, start)}:{_bound(c, end)}" + (f":{_bound(c, step)}" if step not in (1, None) else "")
    return _subscript(c, int(c["dim"]), item, merge=True)


@rule("aten.select.int")
def _select(c: Call) -> Expr:
    return _subscript(c, int(c["dim"]), c.t("index"), merge=False)


@rule("aten.index.Tensor")
def _index(c: Call) -> Expr:
    items = [":" if i is None else c.render(i).text for i in c["indices"]]
    return Expr(f"{c.e('self').recv}[{', '.join(items)}]")


@rule("aten.index_select")
def _index_select(c: Call) -> Expr:
    return method(c.e("self"), "index_select", c.e("dim"), c.e("index"))


@rule("aten.gather")
def _gather(c: Call) -> Expr:
    return method(c.e("self"), "gather", c.e("dim"), c.e("index"))


@rule("aten.masked_fill")
def _masked_fill(c: Call) -> Expr:
    return method(c.e("self"), "masked_fill", c.e("mask"), c.e("value"))


@rule("aten.where.self")
def _where(c: Call) -> Expr:
    return fn("torch.where", c.e("condition"), c.e("self"), c.e("other"))


# --- linear algebra -------------------------------------------------------------------------
@rule("aten.mm", "aten.bmm")
def _mm(c: Call) -> Expr:
    return fn(f"torch.{str(c.target).split('.')[1]}", c.e("self"), c.e("mat2"))


@rule("aten.einsum")
def _einsum(c: Call) -> Expr:
    return fn("torch.einsum", c.e("equation"), *[c.render(t) for t in c["tensors"]])


@rule("aten.linear")
def _linear(c: Call) -> Expr:
    return fn("F.linear", c.e("input"), c.e("weight"), *([c.e("bias")] if c["bias"] is not None else []))


@rule("aten.scaled_dot_product_attention")
def _sdpa(c: Call) -> Expr:
    kw = c.changed("attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    p = c.owner.attention_dropout(c.node)
    if p:
        kw = [k for k in kw if not k.startswith("dropout_p=")] + [f"dropout_p={p!r} if self.training else 0.0"]
    return fn("F.scaled_dot_product_attention", c.e("query"), c.e("key"), c.e("value"), *kw)


# --- functional forms of layers (used where no nn layer fits) -------------------------------
def _conv_kw(c: Call, names: tuple[str, ...]) -> list[str]:
    return c.changed(*names, render=lambda n, v: c.render(squash(v)).text)


@rule("aten.conv1d", "aten.conv2d", "aten.conv3d")
def _conv(c: Call) -> Expr:
    name = "F." + str(c.target).split(".")[1]
    bias = [c.e("bias")] if c["bias"] is not None else []
    return fn(name, c.e("input"), c.e("weight"), *bias, *_conv_kw(c, ("stride", "padding", "dilation", "groups")))


@rule("aten.conv_transpose1d", "aten.conv_transpose2d", "aten.conv_transpose3d")
def _conv_t(c: Call) -> Expr:
    name = "F." + str(c.target).split(".")[1]
    bias = [c.e("bias")] if c["bias"] is not None else []
    return fn(name, c.e("input"), c.e("weight"), *bias,
              *_conv_kw(c, ("stride", "padding", "output_padding", "groups", "dilation")))


@rule("aten.convolution")
def _convolution(c: Call) -> Expr:
    n = len(c["stride"])
    bias = [f"bias={c.t('bias')}"] if c["bias"] is not None else []
    sq = lambda k: c.render(squash(c[k])).text  # noqa: E731
    if c["transposed"]:
        return fn(f"F.conv_transpose{n}d", c.e("input"), c.e("weight"), *bias, f"stride={sq('stride')}",
                  f"padding={sq('padding')}", f"output_padding={sq('output_padding')}", f"groups={c.t('groups')}",
                  f"dilation={sq('dilation')}")
    return fn(f"F.conv{n}d", c.e("input"), c.e("weight"), *bias, f"stride={sq('stride')}",
              f"padding={sq('padding')}", f"dilation={sq('dilation')}", f"groups={c.t('groups')}")


@rule("aten.batch_norm")
def _batch_norm(c: Call) -> Expr:
    training = "True" if c["training"] or c["running_mean"] is None else "self.training"
    return fn("F.batch_norm", c.e("input"), c.e("running_mean"), c.e("running_var"), c.e("weight"), c.e("bias"),
              training, c.e("momentum"), c.e("eps"))


@rule("aten.instance_norm")
def _instance_norm(c: Call) -> Expr:
    return fn("F.instance_norm", c.e("input"), c.e("running_mean"), c.e("running_var"), c.e("weight"),
              c.e("bias"), c.e("use_input_stats"), c.e("momentum"), c.e("eps"))


@rule("aten.layer_norm")
def _layer_norm(c: Call) -> Expr:
    return fn("F.layer_norm", c.e("input"), c.render(tuple(c["normalized_shape"])), c.e("weight"), c.e("bias"),
              c.e("eps"))


@rule("aten.group_norm")
def _group_norm(c: Call) -> Expr:
    return fn("F.group_norm", c.e("input"), c.e("num_groups"), c.e("weight"), c.e("bias"), c.e("eps"))


@rule("aten.embedding")
def _embedding(c: Call) -> Expr:
    pad = [] if c["padding_idx"] in (None, -1) else [f"padding_idx={c.t('padding_idx')}"]
    return fn("F.embedding", c.e("indices"), c.e("weight"), *pad)


@rule("aten.dropout", "aten.feature_dropout", "aten.alpha_dropout", "aten.feature_alpha_dropout")
def _dropout(c: Call) -> Expr:
    name = {"dropout": "F.dropout", "alpha_dropout": "F.alpha_dropout", "feature_dropout": "torch.feature_dropout",
            "feature_alpha_dropout": "torch.feature_alpha_dropout"}[str(c.target).split(".")[1]]
    # captured in eval mode, so ``train`` reads False: the functional call follows the module's mode
    return fn(name, c.e("input"), c.e("p"), "True" if c["train"] else "self.training")


# --- pooling, padding, resizing ---------------------------------------------------------------
@rule("aten.adaptive_avg_pool1d", "aten.adaptive_avg_pool2d", "aten.adaptive_avg_pool3d",
      "aten._adaptive_avg_pool2d", "aten._adaptive_avg_pool3d")
def _adaptive_avg(c: Call) -> Expr:
    name = str(c.target).split(".")[1].lstrip("_")
    return fn(f"F.{name}", c.e("self"), c.render(squash(c["output_size"])))


@rule("aten.adaptive_max_pool1d", "aten.adaptive_max_pool2d", "aten.adaptive_max_pool3d")
def _adaptive_max(c: Call) -> Expr:
    name = str(c.target).split(".")[1]
    return fn(f"F.{name}", c.e("self"), c.render(squash(c["output_size"])), "return_indices=True")


def _pool_args(c: Call, names: tuple[str, ...]) -> list[str]:
    out = [c.render(squash(c["kernel_size"])).text]
    if c["stride"]:
        out.append(f"stride={c.render(squash(c['stride'])).text}")
    out += c.changed(*names, render=lambda n, v: c.render(squash(v)).text)
    return out


@rule("aten.max_pool1d", "aten.max_pool2d", "aten.max_pool3d", "aten.max_pool2d_with_indices",
      "aten.max_pool3d_with_indices")
def _max_pool(c: Call) -> Expr:
    name = str(c.target).split(".")[1].replace("_with_indices", "")
    extra = ["return_indices=True"] if "with_indices" in str(c.target) else []
    return fn(f"F.{name}", c.e("self"), *_pool_args(c, ("padding", "dilation", "ceil_mode")), *extra)


@rule("aten.avg_pool1d", "aten.avg_pool2d", "aten.avg_pool3d")
def _avg_pool(c: Call) -> Expr:
    name = str(c.target).split(".")[1]
    names = ("padding", "ceil_mode", "count_include_pad") + (("divisor_override",) if "divisor_override" in
                                                               c.defaults else ())
    return fn(f"F.{name}", c.e("self"), *_pool_args(c, names))


@rule("aten.pad")
def _pad(c: Call) -> Expr:
    kw = c.changed("mode")
    if c["value"] is not None:
        kw.append(f"value={c.t('value')}")
    return fn("F.pad", c.e("self"), c.render(tuple(c["pad"])), *kw)


@rule("aten.constant_pad_nd")
def _constant_pad(c: Call) -> Expr:
    return fn("F.pad", c.e("self"), c.render(tuple(c["pad"])), *c.changed("value"))


@rule("aten.reflection_pad1d", "aten.reflection_pad2d", "aten.reflection_pad3d", "aten.replication_pad1d",
      "aten.replication_pad2d", "aten.replication_pad3d")
def _mode_pad(c: Call) -> Expr:
    mode = "reflect" if "reflection" in str(c.target) else "replicate"
    return fn("F.pad", c.e("self"), c.render(tuple(c["padding"])), f'mode="{mode}"')


_MODES = {"upsample_nearest": "nearest", "_upsample_nearest_exact": "nearest-exact", "upsample_linear": "linear",
          "upsample_bilinear": "bilinear", "upsample_trilinear": "trilinear", "upsample_bicubic": "bicubic",
          "_upsample_bilinear2d_aa": "bilinear", "_upsample_bicubic2d_aa": "bicubic"}


@rule(*[f"aten.{k}{n}d.vec" for k in ("upsample_nearest", "_upsample_nearest_exact") for n in (1, 2, 3)],
      "aten.upsample_linear1d.vec", "aten.upsample_bilinear2d.vec", "aten.upsample_trilinear3d.vec",
      "aten.upsample_bicubic2d.vec", "aten._upsample_bilinear2d_aa.vec", "aten._upsample_bicubic2d_aa.vec")
def _interpolate(c: Call) -> Expr:
    op = str(c.target).split(".")[1]
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


@rule(*[f"aten.{k}{n}d.default" for k in ("upsample_nearest", "_upsample_nearest_exact") for n in (1, 2, 3)],
      "aten.upsample_linear1d.default", "aten.upsample_bilinear2d.default", "aten.upsample_trilinear3d.default",
      "aten.upsample_bicubic2d.default")
def _interpolate_size(c: Call) -> Expr | None:
    if any(c[k] is not None for k in ("scales", "scales_d", "scales_h", "scales_w")):
        return None  # output size and scales both given: F.interpolate takes only one
    op = str(c.target).split(".")[1]
    mode = next(m for k, m in _MODES.items() if op.startswith(k))
    args: list[Expr | str] = [c.e("input" if "input" in c.values else "self"),
                              f"size={c.render(squash(c['output_size'])).text}", f'mode="{mode}"']
    if "align_corners" in c.values:
        args.append(f"align_corners={c.t('align_corners')}")
    return fn("F.interpolate", *args)


@rule("aten.pixel_shuffle", "aten.pixel_unshuffle")
def _pixel_shuffle(c: Call) -> Expr:
    name = str(c.target).split(".")[1]
    factor = "upscale_factor" if name == "pixel_shuffle" else "downscale_factor"
    return fn(f"F.{name}", c.e("self"), c.e(factor))


@rule("aten.channel_shuffle", "aten.native_channel_shuffle")
def _channel_shuffle(c: Call) -> Expr:
    return fn("F.channel_shuffle", c.e("self"), c.e("groups"))


@rule("aten.one_hot")
def _one_hot(c: Call) -> Expr:
    return fn("F.one_hot", c.e("self"), *c.changed("num_classes"))


# --- sizes, dtypes, new tensors ---------------------------------------------------------------
@rule("aten.sym_size.int")
def _sym_size(c: Call) -> Expr:
    return method(c.e("self"), "size", c.e("dim"))


@rule("aten.sym_numel")
def _sym_numel(c: Call) -> Expr:
    return method(c.e("self"), "numel")


@rule("aten.sym_stride.int")
def _sym_stride(c: Call) -> Expr:
    return method(c.e("self"), "stride", c.e("dim"))


@rule("aten.item", "aten._local_scalar_dense")
def _item(c: Call) -> Expr:
    return method(c.e("self"), "item")


@rule("aten.to.dtype", "aten.to.dtype_layout", "aten._to_copy", "aten.to.device")
def _to(c: Call) -> Expr:
    kw = []
    if c["dtype"] is not None:
        kw.append(c.t("dtype") if str(c.target) == "aten.to.dtype" else f"dtype={c.t('dtype')}")
    if c["memory_format"] not in (None,) and not c.is_default("memory_format"):
        kw.append(f"memory_format={c.t('memory_format')}")
    if c["copy"] or str(c.target).startswith("aten._to_copy"):
        kw.append("copy=True")
    # a device baked in at capture is left out: the tensor stays where the model runs
    return method(c.e("self"), "to", *kw)


def _factory_kw(c: Call, *, like: bool) -> list[str]:
    out = []
    if "dtype" in c.values and c["dtype"] is not None:
        out.append(f"dtype={c.t('dtype')}")
    if not like:
        dev = c.owner.device_expr()
        if dev:
            out.append(f"device={dev}")
    return out


@rule("aten.zeros", "aten.ones", "aten.empty.memory_format", "aten.rand", "aten.randn")
def _factory(c: Call) -> Expr:
    name = str(c.target).split(".")[1]
    return fn(f"torch.{name}", c.render(tuple(c["size"])), *_factory_kw(c, like=False))


@rule("aten.full")
def _full(c: Call) -> Expr:
    return fn("torch.full", c.render(tuple(c["size"])), c.e("fill_value"), *_factory_kw(c, like=False))


@rule("aten.arange")
def _arange(c: Call) -> Expr:
    args = [c.e(k) for k in ("start", "end", "step") if k in c.values]
    return fn("torch.arange", *args, *_factory_kw(c, like=False))


@rule("aten.scalar_tensor")
def _scalar_tensor(c: Call) -> Expr:
    return fn("torch.tensor", c.e("s"), *_factory_kw(c, like=False))


@rule("aten.new_zeros", "aten.new_ones", "aten.new_empty")
def _new(c: Call) -> Expr:
    name = str(c.target).split(".")[1]
    return method(c.e("self"), name, c.render(tuple(c["size"])), *_factory_kw(c, like=True))


@rule("aten.new_full")
def _new_full(c: Call) -> Expr:
    return method(c.e("self"), "new_full", c.render(tuple(c["size"])), c.e("fill_value"), *_factory_kw(c, like=True))


@rule("aten.zeros_like", "aten.ones_like", "aten.empty_like", "aten.rand_like", "aten.randn_like")
def _like(c: Call) -> Expr:
    name = str(c.target).split(".")[1]
    return fn(f"torch.{name}", c.e("self"), *_factory_kw(c, like=True))


@rule("aten.full_like")
def _full_like(c: Call) -> Expr:
    return fn("torch.full_like", c.e("self"), c.e("fill_value"), *_factory_kw(c, like=True))


@rule("aten.clamp", "aten.clamp_min", "aten.clamp_max")
def _clamp(c: Call) -> Expr:
    kw = [f"{k}={c.t(k)}" for k in ("min", "max") if k in c.values and c[k] is not None]
    return method(c.e("self"), "clamp", *kw)

