"""Graph clean-ups before code generation. Each pass takes the graph and rewrites it in place
(the graph is the exporter's own copy, never the subnet's)."""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx

from ..ops import op_key

__all__ = ["copy_graph", "drop_identities", "out_of_place", "mutated_arg", "is_random"]

_INT_MAX = 2**62
_ASSERTS = ("aten._assert_async", "aten._assert_scalar", "aten._assert_tensor_metadata", "aten.sym_constrain_range",
            "aten.sym_constrain_range_for_size", "aten._assert_tensor_metadata")
_DROPOUTS = ("aten.dropout", "aten.dropout_", "aten.feature_dropout", "aten.feature_dropout_", "aten.alpha_dropout",
             "aten.alpha_dropout_", "aten.feature_alpha_dropout", "aten.feature_alpha_dropout_")


def copy_graph(graph: fx.Graph) -> fx.Graph:
    new = fx.Graph()
    out = new.graph_copy(graph, {}, return_output_node=True)
    if isinstance(out, tuple):
        out = out[0]
    new.output(out)
    new._codegen = graph._codegen
    return new


def mutated_arg(node: fx.Node) -> int | None:
    """Index of the argument an in-place op writes to; -1 when it writes to several or to one
    we cannot tell; None for ops that write nothing."""
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return None
    written = [i for i, a in enumerate(schema.arguments) if a.alias_info is not None and a.alias_info.is_write]
    if not written:
        return None
    return written[0] if len(written) == 1 else -1


def is_random(node: fx.Node) -> bool:
    tags = getattr(node.target, "tags", ())
    return torch.Tag.nondeterministic_seeded in tags


def _is_view(node: Any) -> bool:
    if not isinstance(node, fx.Node) or node.op != "call_function":
        return node.op in ("placeholder", "get_attr") if isinstance(node, fx.Node) else False
    if node.target is operator.getitem:
        return _is_view(node.args[0])
    return bool(getattr(node.target, "is_view", False))


def _arg(node: fx.Node, i: int, name: str, default: Any = None) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def drop_identities(graph: fx.Graph) -> None:
    """Remove ops that return their input: aliases, full slices, dropout with p=0 (which draws
    no random numbers either), copies of constants nobody writes to, and runtime asserts."""
    outputs = {a for n in graph.nodes if n.op == "output" for a in _flat_nodes(n.args)}
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        p = op_key(node.target).packet
        keep: Any = None
        if p in _ASSERTS and not node.users:
            graph.erase_node(node)
            continue
        if p == "aten.alias":
            keep = node.args[0]
        elif p == "aten.slice" and str(node.target) == "aten.slice.Tensor":
            start, end, step = _arg(node, 2, "start"), _arg(node, 3, "end"), _arg(node, 4, "step", 1)
            if start in (None, 0) and (end is None or (isinstance(end, int) and end >= _INT_MAX)) and step == 1:
                keep = node.args[0]
        elif p in _DROPOUTS:
            if _arg(node, 1, "p") == 0:
                keep = node.args[0]
        elif p == "aten.lift_fresh_copy":
            written = any(mutated_arg(u) == 0 and u.args and u.args[0] is node for u in node.users)
            if not written and node not in outputs:
                keep = node.args[0]
        if keep is not None:
            node.replace_all_uses_with(keep)
            graph.erase_node(node)


def _flat_nodes(args: Any) -> list[fx.Node]:
    out: list[fx.Node] = []

    def add(a: fx.Node) -> fx.Node:
        out.append(a)
        return a

    fx.node.map_arg(args, add)
    return out


def out_of_place(graph: fx.Graph) -> None:
    """``relu_(x)`` -> ``relu(x)`` where nothing can observe the difference: x is a fresh
    tensor (not an input, parameter or view) that nothing reads afterwards."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        if node.op != "call_function" or mutated_arg(node) != 0:
            continue
        src = node.args[0] if node.args else None
        if not isinstance(src, fx.Node) or _is_view(src):
            continue
        others = [u for u in src.users if u is not node]
        if any(order[u] > order[node] or _is_view(u) for u in others):
            continue
        base = _functional(node.target)
        if base is None:
            continue
        with graph.inserting_before(node):
            new = graph.call_function(base, node.args, node.kwargs)
        new.meta.update(node.meta)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        order[new] = order.pop(node)


def _functional(target: Any) -> Any:
    name = getattr(target, "_schema", None) and target._schema.name.split("::")[1]
    if not name or not name.endswith("_") or name.endswith("__"):
        return None
    packet_ = getattr(torch.ops.aten, name[:-1], None)
    if packet_ is None:
        return None
    base = getattr(packet_, target._overloadname, None)
    if base is None:
        return None
    # same arguments (the first may be called "self" in one and "input" in the other)
    if [(a.name, str(a.type)) for a in base._schema.arguments][1:] != \
            [(a.name, str(a.type)) for a in target._schema.arguments][1:]:
        return None
    return base
