"""Python operators in the graph: arithmetic on symbolic sizes (``batch * 49``) and
``getitem`` of multi-output ops. They carry no channels; these rules write them."""

from __future__ import annotations

from ._code import ADD, BAND, BOR, CMP, MUL, POWER, UNARY, Call, Expr, binop
from ._rule import OpRule, op_key, register

_PY = {"add": ("+", ADD), "sub": ("-", ADD), "mul": ("*", MUL), "floordiv": ("//", MUL), "truediv": ("/", MUL),
       "mod": ("%", MUL), "pow": ("**", POWER), "eq": ("==", CMP), "ne": ("!=", CMP), "lt": ("<", CMP),
       "le": ("<=", CMP), "gt": (">", CMP), "ge": (">=", CMP), "and_": ("&", BAND), "or_": ("|", BOR)}


@register(*[f"operator.{op}" for op in _PY])
class PyBinary(OpRule):
    def code(self, c: Call) -> Expr | None:
        sym, prec = _PY[op_key(c.target).name]
        return binop(c.e("a"), sym, c.e("b"), prec, right_assoc=sym == "**")


@register("operator.neg")
class PyNeg(OpRule):
    def code(self, c: Call) -> Expr:
        return Expr(f"-{c.e('a').paren(UNARY)}", UNARY)


@register("operator.getitem")
class GetItem(OpRule):
    def code(self, c: Call) -> Expr:
        return Expr(f"{c.e('a').recv}[{c.t('b')}]")
