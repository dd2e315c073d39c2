"""The rule base class, the one registry of rules, and the one way to name an op.

A rule is everything otonas knows about one ATen op, or a family of ops that behave
alike: how channels flow through it, how the builder rewrites it for a smaller network,
how many multiply-accumulates it costs, how it reads in the generated ``model.py`` and
which ``torch.nn`` layer it stands for, plus flags that the graph passes read. Each
facet has a default (``flow``: pointwise ops broadcast, other ops pin what they touch;
the others: nothing to do), so a rule defines only what its op needs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, TypeVar

import torch
from torch import fx

if TYPE_CHECKING:
    from ._code import Call, Expr, LayerCall, LayerSpec
    from ._context import BuildContext, FlowContext

__all__ = ["OpRule", "OpKey", "op_key", "short_op", "functional_of", "register", "lookup", "rule_for", "registered"]


class OpKey(NamedTuple):
    """The names of an fx node target: ``('aten.add.Tensor', 'aten.add', 'Tensor')``."""

    full: str
    packet: str
    overload: str

    @property
    def name(self) -> str:
        """The op without namespace and overload: ``'add'``."""
        return self.packet.split(".", 1)[1] if "." in self.packet else self.packet


def op_key(target: Any) -> OpKey:
    """The names of an fx node target. A Python operator is ``operator.<name>``; an ATen
    overload ``aten.<op>.<overload>``, whose packet (``aten.<op>``) names every overload."""
    if getattr(target, "__module__", None) in ("_operator", "operator"):
        name = f"operator.{target.__name__}"
        return OpKey(name, name, "")
    name = str(target)
    if name.startswith("aten.") and name.count(".") >= 2:
        packet, overload = name.rsplit(".", 1)
        return OpKey(name, packet, overload)
    return OpKey(name, name, "")


def short_op(op: str) -> str:
    """The short name an op is shown by: 'aten.conv2d.default' -> 'conv2d';
    '<built-in function getitem>' -> 'getitem'; anything else as it is."""
    if op.startswith("<built-in function "):
        return op[len("<built-in function "):-1]
    parts = op.split(".")
    if parts[0] in ("aten", "prims", "quantized") and len(parts) >= 2:
        return parts[1]
    return op


def functional_of(target: Any) -> Any:
    """The functional twin of an in-place ATen overload (``aten.relu_.default`` ->
    ``aten.relu.default``), with the same arguments after the first; None for any other target."""
    name = getattr(target, "_schema", None) and target._schema.name.split("::")[1]
    if not name or not name.endswith("_") or name.endswith("__"):
        return None
    packet = getattr(torch.ops.aten, name[:-1], None)
    if packet is None:
        return None
    base = getattr(packet, target._overloadname, None)
    if base is None:
        return None
    # same arguments (the first may be called "self" in one and "input" in the other)
    if [(a.name, str(a.type)) for a in base._schema.arguments][1:] != \
            [(a.name, str(a.type)) for a in target._schema.arguments][1:]:
        return None
    return base


class OpRule:
    """Every facet of one op. Subclass it, override the facets your op needs, and register
    the class under the op's names with :func:`register`.

    The framework calls ``flow`` once per node during analysis (in graph order), ``rewrite``
    once per node the builder copies, ``flops`` when it counts costs (before and after
    removal), ``code`` when it writes ``model.py`` and ``layer`` when it looks for the
    ``torch.nn`` layers of the generated module. The flags are read by the graph passes.
    """

    #: the names this rule is registered under (filled in by :func:`register`)
    names: ClassVar[tuple[str, ...]] = ()
    #: f(0) == 0 elementwise on its one tensor input: a zero channel stays zero
    zero_preserving: ClassVar[bool] = False
    #: moves positions around without changing values (views, slices, pooling, concat)
    structural: ClassVar[bool] = False
    #: an all-zero input gives an all-zero output that operator erasure treats as gone with it
    #: (today a narrower set than ``zero_preserving or structural``: widening it adds erasing groups)
    keeps_zero_tensor: ClassVar[bool] = False
    #: the op is a join that can lose an input to operator erasure: "add" or "cat"
    join: ClassVar[str | None] = None
    #: how zeros in the operands make the result zero: "any" (mul), "all" (add, sub), "numerator" (div)
    zero_if: ClassVar[str | None] = None
    #: the op is the identity when its output has its input's shape (a full slice, a no-op view)
    identity_if_same_shape: ClassVar[bool] = False
    #: a runtime assert: the generated code leaves it out when nothing reads its result
    runtime_check: ClassVar[bool] = False
    #: reads a size off a tensor (``x.size(0)``): the generated code names it ``batch`` / ``size``
    size_query: ClassVar[bool] = False
    #: a normalization: the (position, name) of its scale and shift operands (γ, β), which the
    #: ``NormAffineScore`` reads through :meth:`affine_operands`
    affine_args: ClassVar[tuple[tuple[int, str], ...]] = ()

    def implements(self, facet: str) -> bool:
        """Whether this rule defines ``facet`` ("flow", "flops", "code", ...) itself."""
        return getattr(type(self), facet) is not getattr(OpRule, facet)

    def flow(self, ctx: FlowContext, node: fx.Node) -> Any:
        """Unify and pin the ids of ``node``'s inputs (``ctx.dims(arg)``) and return the id
        arrays of its output: a list with one array per dim, a tuple of such lists for ops
        with several outputs, or ``None`` when no tensor flows out."""
        from ._common import broadcast, tensor_args, unknown

        if _pointwise(node.target) or _pointwise(functional_of(node.target)):
            return broadcast(ctx, node, tensor_args(node))
        return unknown(ctx, node)

    def zero_by_params(self, node: fx.Node, zero: set[str]) -> bool:
        """Is the output exactly zero once the placeholders named in ``zero`` are (a layer
        whose weight and bias are)? Operator erasure asks it of the last op of a branch."""
        return False

    def affine_operands(self, node: fx.Node) -> tuple[fx.Node, ...]:
        """The nodes ``node`` takes as its normalization scale and shift (``affine_args``; none given: ())."""
        out = []
        for i, name in self.affine_args:
            a = node.args[i] if len(node.args) > i else node.kwargs.get(name)
            if isinstance(a, fx.Node):
                out.append(a)
        return tuple(out)

    def passes_input(self, node: fx.Node) -> fx.Node | None:
        """The argument this node returns unchanged (an alias, a full slice, dropout with
        ``p=0``), which the generated code uses instead; ``None``: the node computes something."""
        return None

    def num_outputs(self, node: fx.Node, val: Any) -> int | None:
        """How many tensors the node returns when its schema does not say (a list of them);
        ``val`` is its recorded example value. ``None``: unknown."""
        return None

    def rewrite(self, ctx: BuildContext, node: fx.Node, args: list[Any],
                kwargs: dict[str, Any]) -> tuple[Any, list[Any], dict[str, Any]]:
        """(target, args, kwargs) of the node in the smaller network: shape constants and
        group counts rewritten to the kept sizes (``ctx.sizes(node)``, ``ctx.masks(node)``)."""
        return node.target, args, kwargs

    def flops(self, node: fx.Node, out: list[int], ins: list[Any]) -> int | None:
        """Multiply-accumulates of the node (all samples), from the output's dim sizes and
        each argument's (``None`` for non-tensors); ``None``: the op is not counted."""
        return None

    def code(self, c: Call) -> Expr | None:
        """The node as a Python expression in ``model.py``; ``None``: the generic form
        (``torch.<op>(...)``, or ``torch.ops.aten...`` reported as a gap)."""
        return None

    def layer(self, c: LayerCall) -> LayerSpec | None:
        """The ``torch.nn`` layer this node is a call of, or ``None`` (written as a function)."""
        return None


def _pointwise(target: Any) -> bool:
    return isinstance(target, torch._ops.OpOverload) and torch.Tag.pointwise in target.tags


R = TypeVar("R", bound=type[OpRule])

_RULES: dict[str, OpRule] = {}
_DEFAULT = OpRule()


def register(*names: str) -> Callable[[R], R]:
    """Class decorator: one instance of the rule serves every name. A name is an ATen packet
    (``"aten.conv2d"``: every overload) or overload (``"aten.view.default"``), or
    ``"operator.<name>"``; registering a name twice warns and the later rule wins."""

    def deco(cls: R) -> R:
        inst = cls()
        cls.names = tuple(names)
        for name in names:
            if name in _RULES:
                warnings.warn(f"otonas: op rule for {name} ({type(_RULES[name]).__qualname__}) overwritten by "
                              f"{cls.__qualname__}", stacklevel=2)
            _RULES[name] = inst
        return cls

    return deco


def lookup(target: Any) -> OpRule | None:
    """The rule registered for an fx node target (its overload first, then its packet), or None.

    An in-place overload with no rule of its own (``aten.hardswish_.default``) takes its
    functional op's rule, less the facets that write code: ``model.py`` keeps the in-place
    call (``x.hardswish_()``), whose effect on ``x`` the functional form would lose."""
    full, packet, _ = op_key(target)
    rule = _RULES.get(full) or _RULES.get(packet)
    if rule is None:
        base = functional_of(target)
        found = lookup(base) if base is not None else None
        if found is not None:
            rule = _in_place(found)
    return rule


_IN_PLACE: dict[type[OpRule], OpRule] = {}


def _in_place(rule: OpRule) -> OpRule:
    """The rule of the in-place forms of ``rule``'s ops: every facet but ``code`` and ``layer``."""
    cls = type(rule)
    if cls not in _IN_PLACE:
        derived = type(f"{cls.__name__}InPlace", (cls,), {
            "code": OpRule.code, "layer": OpRule.layer,
            "__doc__": f"The in-place forms of {cls.__qualname__}'s ops (derived by the registry)."})
        _IN_PLACE[cls] = derived()
    return _IN_PLACE[cls]


def rule_for(target: Any) -> OpRule:
    """The rule for a target, or the default rule (every facet at its default)."""
    return lookup(target) or _DEFAULT


def registered() -> Iterator[tuple[str, OpRule]]:
    """Every (name, rule) in the registry."""
    yield from sorted(_RULES.items())

