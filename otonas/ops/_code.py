"""What a rule's export facets see and return: Python expressions as text, with the precedence
needed to parenthesize them (``code``), and the ``torch.nn`` layers a node stands for (``layer``)."""

from __future__ import annotations

import json
import keyword
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

__all__ = ["Expr", "Call", "ATOM", "POWER", "UNARY", "MUL", "ADD", "SHIFT", "BAND", "BXOR", "BOR", "CMP", "LOWEST",
           "literal", "binop", "is_identifier", "squash", "as_tuple", "fn", "method", "LayerSpec", "LayerCall",
           "torch_module_class", "run_layer"]

# Python operator precedence, higher binds tighter.
ATOM, POWER, UNARY, MUL, ADD, SHIFT, BAND, BXOR, BOR, CMP, LOWEST = 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 0


@dataclass(frozen=True)
class Expr:
    """Source text of one expression and how tightly it binds."""

    text: str
    prec: int = ATOM
    # A subscript made only of slices (``x[:, 2:5]``) keeps its parts so that a further
    # slice can join it (``x[:, 2:5, :4]``) instead of stacking brackets.
    base: str | None = None
    items: tuple[str, ...] = ()

    def paren(self, below: int) -> str:
        """The text, in parentheses when it binds less tightly than ``below``."""
        return f"({self.text})" if self.prec < below else self.text

    @property
    def recv(self) -> str:
        """The text as the receiver of a method call or subscript: ``(a + b).view(...)``."""
        return self.paren(ATOM)

    def __str__(self) -> str:
        return self.text


def is_identifier(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)


def _number(v: float) -> Expr:
    if math.isnan(v):
        return Expr('float("nan")')
    if math.isinf(v):
        return Expr('float("inf")' if v > 0 else '-float("inf")', UNARY if v < 0 else ATOM)
    text = repr(v)
    return Expr(text, UNARY if text.startswith("-") else ATOM)


def literal(v: Any) -> Expr:
    """A Python constant as source: numbers, strings, dtypes, memory formats, tuples of those."""
    if isinstance(v, str):
        return Expr(json.dumps(v))  # double quotes, as written by hand
    if v is None or isinstance(v, bool):
        return Expr(repr(v))
    if isinstance(v, int):
        return Expr(repr(v), UNARY if v < 0 else ATOM)
    if isinstance(v, float):
        return _number(v)
    if isinstance(v, torch.dtype):
        return Expr(str(v))  # "torch.float32"
    if isinstance(v, torch.memory_format):
        return Expr(str(v))  # "torch.channels_last"
    if isinstance(v, torch.layout):
        return Expr(str(v))
    if isinstance(v, torch.device):
        return Expr(f'torch.device("{v}")')
    if isinstance(v, (list, tuple)):
        inner = ", ".join(literal(x).text for x in v)
        return Expr(f"({inner},)" if isinstance(v, tuple) and len(v) == 1 else
                    f"({inner})" if isinstance(v, tuple) else f"[{inner}]")
    raise TypeError(f"no source form for constant {v!r} of type {type(v).__name__}")


def binop(a: Expr, op: str, b: Expr, prec: int, *, right_assoc: bool = False) -> Expr:
    left = a.paren(prec + 1) if right_assoc else a.paren(prec)
    right = b.paren(prec) if right_assoc else b.paren(prec + 1)
    return Expr(f"{left} {op} {right}", prec)


class Call:
    """What a code rule sees: one node's arguments by schema name, rendered on demand.

    ``call["dim"]`` is the raw argument (an ``fx.Node`` or a constant); ``call.e("input")``
    its source as an :class:`Expr`; ``call.t(...)`` the text; ``call.changed(...)`` the
    ``name=value`` pieces of the arguments that differ from the schema default.
    """

    def __init__(self, node: fx.Node, target: Any, values: dict[str, Any], defaults: dict[str, Any],
                 render: Callable[[Any], Expr], owner: Any) -> None:
        self.node = node
        self.target = target
        self.values = values
        self.defaults = defaults
        self._render = render
        self.owner = owner  # the code generator: layer lookup, gaps, names

    def __getitem__(self, name: str) -> Any:
        return self.values.get(name, self.defaults.get(name))

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def e(self, name_or_value: Any) -> Expr:
        v = self[name_or_value] if isinstance(name_or_value, str) and name_or_value in self.values else name_or_value
        return self._render(v)

    def t(self, name: str) -> str:
        return self.e(name).text

    def render(self, value: Any) -> Expr:
        return self._render(value)

    def is_default(self, name: str) -> bool:
        if name not in self.values:
            return True
        if name not in self.defaults:
            return False
        v, d = self.values[name], self.defaults[name]
        if isinstance(v, fx.Node) or isinstance(d, fx.Node):
            return False
        if isinstance(v, (list, tuple)) and isinstance(d, (list, tuple)):
            if len(d) == 1 and len(v) > 1:  # int[2] defaults are stored as one value
                return all(x == d[0] for x in v)
            return list(v) == list(d)
        if isinstance(v, (list, tuple)) and not isinstance(d, (list, tuple)):
            return all(x == d for x in v)
        return bool(v == d)

    def changed(self, *names: str, render: Callable[[str, Any], str] | None = None) -> list[str]:
        out = []
        for n in names:
            if not self.is_default(n):
                out.append(f"{n}={render(n, self[n]) if render else self.e(self[n]).text}")
        return out


def squash(v: Any) -> Any:
    """``[3, 3]`` -> ``3``: the form nn layers and F functions accept for equal sizes."""
    if isinstance(v, (list, tuple)) and v and all(not isinstance(x, fx.Node) and x == v[0] for x in v):
        return v[0]
    return v


def as_tuple(v: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(v)


def _text(a: Expr | str) -> str:
    return a.text if isinstance(a, Expr) else a


def fn(name: str, *args: Expr | str) -> Expr:
    return Expr(f"{name}({', '.join(_text(a) for a in args)})")


def method(recv: Expr, name: str, *args: Expr | str) -> Expr:
    return Expr(f"{recv.recv}.{name}({', '.join(_text(a) for a in args)})")


@dataclass(frozen=True)
class LayerSpec:
    """One ``torch.nn`` layer of the generated module."""

    path: str  # module path in the original network, e.g. "layer1.0.conv1"
    cls: str  # "Conv2d" (a class of torch.nn)
    args: tuple[str, ...]  # constructor arguments as source
    state: tuple[str, ...]  # tensors the layer owns: "weight", "bias", "running_mean", ...
    bound: tuple[tuple[str, str], ...]  # (node argument, state name): arguments that must read path.state
    input: str  # the node argument the layer is called with
    channels: tuple[tuple[str, int], ...]  # ("in", 64), ("out", 40) / ("features", 40)

    @property
    def ctor(self) -> str:
        return f"nn.{self.cls}({', '.join(self.args)})"


class LayerCall(Call):
    """A :class:`Call` for layer rules: constants render as literals, tensors are looked up."""

    def __init__(self, node: fx.Node, target: Any, values: dict[str, Any], defaults: dict[str, Any], *,
                 fqn: Callable[[Any], str | None], tensor: Callable[[Any], torch.Tensor | None],
                 module: Callable[[str], nn.Module | None], module_type: str | None, rank: int | None) -> None:
        super().__init__(node, target, values, defaults, self._literal, None)
        self._fqn = fqn
        self._tensor = tensor
        self.module = module  # the original nn.Module at a path, when the original model is known
        self.module_type = module_type  # e.g. "torch.nn.modules.batchnorm.BatchNorm2d"
        self.rank = rank  # rank of the node's first input, when known

    @staticmethod
    def _literal(v: Any) -> Expr:
        if isinstance(v, fx.Node):
            raise _NotALayer
        return literal(squash(v))

    def fqn(self, name: str) -> str | None:
        v = self[name]
        return self._fqn(v) if isinstance(v, fx.Node) else None

    def tensor(self, name: str) -> torch.Tensor | None:
        v = self[name]
        return self._tensor(v) if isinstance(v, fx.Node) else None

    def path_of(self, name: str, leaf: str) -> str | None:
        """The module path whose ``leaf`` tensor the argument ``name`` is, or None."""
        fqn = self.fqn(name)
        if fqn is None or "." not in fqn:
            return None
        path, last = fqn.rsplit(".", 1)
        return path if last == leaf else None

    def reads(self, name: str, path: str, leaf: str) -> bool:
        v = self[name]
        return v is None or self.fqn(name) == f"{path}.{leaf}"


class _NotALayer(Exception):
    pass


def torch_module_class(type_name: str | None) -> str | None:
    """``"torch.nn.modules.batchnorm.BatchNorm2d"`` -> ``"BatchNorm2d"``; None for other classes."""
    if not type_name or not type_name.startswith("torch.nn.modules."):
        return None
    return type_name.rsplit(".", 1)[1]


def run_layer(fn: Callable[[LayerCall], LayerSpec | None], call: LayerCall) -> LayerSpec | None:
    """``fn(call)``, or None when the call turned out not to be a plain layer call."""
    try:
        return fn(call)
    except _NotALayer:
        return None
