"""The OpGraph: a networkx view of the captured ATen graph, for people and for passes
that reason about structure (segments, connectivity)."""

from __future__ import annotations

import networkx as nx
import torch

from ..ops import module_path, node_shape

__all__ = ["build_opgraph"]


def build_opgraph(program: torch.export.ExportedProgram) -> nx.DiGraph:
    """One graph node per tensor-producing op or user input; parameters are attributes.

    Node attributes: ``op`` (ATen overload or 'input'/'output'), ``shape``, ``dtype``,
    ``params`` (FQNs of the parameters and buffers it reads), ``module`` (the
    ``nn_module_stack`` path it came from).
    """
    sig = program.graph_signature
    roles = {**sig.inputs_to_parameters, **sig.inputs_to_buffers, **sig.inputs_to_lifted_tensor_constants}
    g = nx.DiGraph()
    for node in program.graph.nodes:
        if node.op == "placeholder":
            if node.name in roles:
                continue
            val = node.meta.get("val")
            g.add_node(node.name, op="input", shape=node_shape(val), dtype=getattr(val, "dtype", None),
                       params=(), module="")
        elif node.op == "call_function":
            val = node.meta.get("val")
            if isinstance(val, (list, tuple)):
                val = next((v for v in val if isinstance(v, torch.Tensor)), None)
            params = tuple(roles[a.name] for a in node.all_input_nodes if a.name in roles)
            g.add_node(node.name, op=str(node.target), shape=node_shape(val), dtype=getattr(val, "dtype", None),
                       params=params, module=module_path(node))
            for a in node.all_input_nodes:
                if a.name in g:
                    g.add_edge(a.name, node.name)
        elif node.op == "output":
            g.add_node("output", op="output", shape=None, dtype=None, params=(), module="")
            for a in node.all_input_nodes:
                if a.name in g:
                    g.add_edge(a.name, "output")
    return g
