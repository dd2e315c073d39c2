"""New tensors: factories (``zeros``, ``full``, ``arange``, ``new_*``), ``*_like`` copies,
sizes and scalars read off tensors (``sym_size``, ``item``, ``one_hot``), runtime asserts.

A factory's dims carry fresh ids; the builder rewrites its size argument."""

from __future__ import annotations

from typing import Any

from torch import fx

from ._code import Call, Expr, fn, method
from ._common import resized
from ._context import BuildContext, Dims, FlowContext
from ._rule import OpRule, op_key, register
from .pointwise import Identity


class Creation(OpRule):
    def flow(self, ctx: FlowContext, node: fx.Node) -> Dims:
        return ctx.fresh_dims(ctx.shape(node))


class _Factory(Creation):
    def rewrite(self, ctx: BuildContext, node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
        return resized(ctx, node, args, kwargs, 0)


def _factory_kw(c: Call, *, like: bool) -> list[str]:
    out = []
    if "dtype" in c.values and c["dtype"] is not None:
        out.append(f"dtype={c.t('dtype')}")
    if not like:
        dev = c.owner.device_expr()
        if dev:
            out.append(f"device={dev}")
    return out


@register("aten.zeros", "aten.ones", "aten.rand", "aten.randn")
class Zeros(_Factory):
    def code(self, c: Call) -> Expr:
        name = op_key(c.target).name
        return fn(f"torch.{name}", c.render(tuple(c["size"])), *_factory_kw(c, like=False))


@register("aten.empty")
class Empty(_Factory):
    def code(self, c: Call) -> Expr | None:
        if op_key(c.target).overload not in ("memory_format",):
            return None
        name = op_key(c.target).name
        return fn(f"torch.{name}", c.render(tuple(c["size"])), *_factory_kw(c, like=False))


@register("aten.full")
class Full(_Factory):
    def code(self, c: Call) -> Expr:
        return fn("torch.full", c.render(tuple(c["size"])), c.e("fill_value"), *_factory_kw(c, like=False))


@register("aten.arange")
class Arange(Creation):
    def code(self, c: Call) -> Expr:
        args = [c.e(k) for k in ("start", "end", "step") if k in c.values]
        return fn("torch.arange", *args, *_factory_kw(c, like=False))


@register("aten.scalar_tensor")
class ScalarTensor(Creation):
    def code(self, c: Call) -> Expr:
        return fn("torch.tensor", c.e("s"), *_factory_kw(c, like=False))


@register("aten.linspace", "aten.eye", "aten.tensor", "aten.randint", "aten.empty_strided", "aten.new_empty_strided")
class OtherCreation(Creation):
    pass


class _New(Creation):
    def rewrite(self, ctx: BuildContext, node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
        return resized(ctx, node, args, kwargs, 1)


@register("aten.new_zeros", "aten.new_ones", "aten.new_empty")
class NewZeros(_New):
    def code(self, c: Call) -> Expr:
        name = op_key(c.target).name
        return method(c.e("self"), name, c.render(tuple(c["size"])), *_factory_kw(c, like=True))


@register("aten.new_full")
class NewFull(_New):
    def code(self, c: Call) -> Expr:
        return method(c.e("self"), "new_full", c.render(tuple(c["size"])), c.e("fill_value"), *_factory_kw(c, like=True))


@register("aten.zeros_like", "aten.ones_like", "aten.empty_like", "aten.rand_like", "aten.randn_like")
class ZerosLike(Identity):
    def code(self, c: Call) -> Expr:
        name = op_key(c.target).name
        return fn(f"torch.{name}", c.e("self"), *_factory_kw(c, like=True))


@register("aten.full_like")
class FullLike(Identity):
    def code(self, c: Call) -> Expr:
        return fn("torch.full_like", c.e("self"), c.e("fill_value"), *_factory_kw(c, like=True))


@register("aten._assert_async", "aten._assert_scalar", "aten._assert_tensor_metadata", "aten.sym_constrain_range",
          "aten.sym_constrain_range_for_size")
class RuntimeAssert(OpRule):
    runtime_check = True


@register("aten.sym_size")
class SymSize(OpRule):
    size_query = True

    def code(self, c: Call) -> Expr | None:
        if op_key(c.target).overload not in ("int",):
            return None
        return method(c.e("self"), "size", c.e("dim"))


@register("aten.sym_numel")
class SymNumel(OpRule):
    size_query = True

    def code(self, c: Call) -> Expr:
        return method(c.e("self"), "numel")


@register("aten.sym_stride")
class SymStride(OpRule):
    size_query = True

    def code(self, c: Call) -> Expr | None:
        if op_key(c.target).overload not in ("int",):
            return None
        return method(c.e("self"), "stride", c.e("dim"))


@register("aten.sym_storage_offset")
class SymStorageOffset(OpRule):
    size_query = True


@register("aten.item", "aten._local_scalar_dense")
class Item(OpRule):
    def code(self, c: Call) -> Expr:
        return method(c.e("self"), "item")


@register("aten.one_hot")
class OneHot(OpRule):
    def code(self, c: Call) -> Expr:
        return fn("F.one_hot", c.e("self"), *c.changed("num_classes"))
