"""Graph clean-ups before code generation. Each pass takes the graph and rewrites it in place
(the graph is the exporter's own copy, never the subnet's)."""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx

from ..ops import functional_of, mutated_arg, rule_for

__all__ = ["copy_graph", "drop_identities", "out_of_place", "mutated_arg", "is_random"]

def copy_graph(graph: fx.Graph) -> fx.Graph:
    new = fx.Graph()
    out = new.graph_copy(graph, {}, return_output_node=True)
    if isinstance(out, tuple):
        out = out[0]
    new.output(out)
    new._codegen = graph._codegen
    return new


def is_random(node: fx.Node) -> bool:
    tags = getattr(node.target, "tags", ())
    return torch.Tag.nondeterministic_seeded in tags


def _is_view(node: Any) -> bool:
    if not isinstance(node, fx.Node) or node.op != "call_function":
        return node.op in ("placeholder", "get_attr") if isinstance(node, fx.Node) else False
    if node.target is operator.getitem:
        return _is_view(node.args[0])
    return bool(getattr(node.target, "is_view", False))


def drop_identities(graph: fx.Graph) -> None:
    """Remove ops that return their input (an op's rule says which: aliases, full slices,
    dropout with p=0, which draws no random numbers either, copies of constants nobody
    writes to) and runtime asserts nothing reads."""
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        rule = rule_for(node.target)
        if rule.runtime_check and not node.users:
            graph.erase_node(node)
            continue
        keep = rule.passes_input(node)
        if keep is not None:
            node.replace_all_uses_with(keep)
            graph.erase_node(node)


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
        base = functional_of(node.target)
        if base is None:
            continue
        with graph.inserting_before(node):
            new = graph.call_function(base, node.args, node.kwargs)
        new.meta.update(node.meta)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        order[new] = order.pop(node)
