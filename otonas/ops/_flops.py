"""FLOPs of one op by its rule: the one counter that analysis (costs before and after removal)
and export (per-layer FLOPs of architecture.json) both use."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import fx

from ._rule import rule_for

__all__ = ["op_flops"]


def _tensor_list(a: Any) -> bool:
    """A list argument of tensors (einsum's operands): its shapes go to the FLOP rule as a list."""
    return isinstance(a, (list, tuple)) and bool(a) and all(isinstance(t, fx.Node) for t in a)


def op_flops(node: fx.Node, shape_of: Callable[[fx.Node], Any]) -> int | None:
    """FLOPs (multiply-accumulates) of ``node`` over its whole batch, by its rule's ``flops``;
    ``None`` where the node calls nothing, its rule counts nothing or its output size is unknown.

    ``shape_of(n)``: the sizes of ``n``'s output — a list of ints; for an op with several outputs a
    list or tuple of them, of which the first is the op's; ``None`` when unknown. An input whose
    sizes are not one list (unknown, or several outputs) reaches the rule as ``None``.
    """
    if node.op != "call_function":
        return None
    rule = rule_for(node.target)
    if not rule.implements("flops"):
        return None
    out = shape_of(node)
    if out is None:
        return None
    if not isinstance(out, list) or (out and not isinstance(out[0], int)):
        out = out[0]

    def one(a: Any) -> Any:
        s = shape_of(a)
        return s if isinstance(s, list) else None

    ins: list[Any] = []
    for a in node.args:
        seq: Any = a
        ins.append([one(t) for t in seq] if _tensor_list(a) else one(a) if isinstance(a, fx.Node) else None)
    return int(rule.flops(node, out, ins) or 0)
