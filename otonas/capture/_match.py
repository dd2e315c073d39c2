"""Match the nodes of two exports of one model: the static-shape one analysis reads and the
free-batch one the builder copies."""

from __future__ import annotations

import operator
from collections import defaultdict
from typing import Any

import torch
from torch import fx
from torch.export.graph_signature import InputKind

from ..ops import rule_for

__all__ = ["match_nodes"]

def _shape(val: Any) -> Any:
    if isinstance(val, torch.Tensor):
        return tuple(int(s.node.hint) if isinstance(s, torch.SymInt) else int(s) for s in val.shape)
    if isinstance(val, (list, tuple)) and val and any(isinstance(v, torch.Tensor) for v in val):
        return tuple(_shape(v) for v in val)
    return None


def _tensor_valued(node: fx.Node) -> bool:
    return _shape(node.meta.get("val")) is not None


def _tensor_inputs(node: fx.Node) -> list[fx.Node]:
    return [a for a in node.all_input_nodes if _tensor_valued(a)]


def _is_identity(node: fx.Node) -> bool:
    """A no-op here (its output has its input's shape) that the other export may hold as
    another no-op or not at all: a static export folds a full slice of the batch into
    ``alias`` or drops it, the free-batch export keeps a ``slice``."""
    ins = _tensor_inputs(node)
    return (rule_for(node.target).identity_if_same_shape and len(ins) == 1
            and _shape(node.meta.get("val")) == _shape(ins[0].meta.get("val")))


def _placeholder_keys(program: torch.export.ExportedProgram) -> dict[str, Any]:
    """Placeholder name -> what it is: the parameter/buffer/constant it holds, or the user input's position."""
    keys: dict[str, Any] = {}
    position = 0
    for spec in program.graph_signature.input_specs:
        name = getattr(spec.arg, "name", None)
        if name is None:
            continue
        if spec.kind == InputKind.USER_INPUT:
            keys[name] = ("input", position)
            position += 1
        else:
            keys[name] = (str(spec.kind), spec.target)
    return keys


def match_nodes(analysed: torch.export.ExportedProgram, built: torch.export.ExportedProgram) -> dict[str, str] | None:
    """For every tensor-valued node of ``built``, the node of ``analysed`` that computes the same
    tensor (for a no-op that only one export has, the node it passes on); None when the graphs
    differ in any other way.

    Nodes are matched by op and (matched) inputs, in graph order, with equal example shapes.
    Nodes of ``built`` that hold no tensor (symbolic sizes, asserts) are not matched.
    """
    by_key = {k: n for n, k in _placeholder_keys(analysed).items()}
    nodes = {n.name: n for n in analysed.graph.nodes}
    canon: dict[fx.Node, fx.Node] = {}  # analysed node -> the node whose tensor it is (no-ops skipped)
    pending: dict[Any, list[fx.Node]] = defaultdict(list)
    for n in analysed.graph.nodes:
        if n.op == "placeholder":
            canon[n] = n
        elif n.op == "call_function" and _tensor_valued(n):
            ins = tuple(canon[a] for a in _tensor_inputs(n))
            canon[n] = ins[0] if _is_identity(n) else n
            pending[_key(n, ins)].append(n)
    out: dict[str, str] = {}
    keys = _placeholder_keys(built)
    for n in built.graph.nodes:
        if n.op == "placeholder":
            src = by_key.get(keys.get(n.name))
            if src is None:
                return None
            out[n.name] = src
        elif n.op == "call_function" and _tensor_valued(n):
            args = _tensor_inputs(n)
            if any(a.name not in out for a in args):
                return None
            ins = tuple(canon[nodes[out[a.name]]] for a in args)
            shape = _shape(n.meta.get("val"))
            queue = pending.get(_key(n, ins), [])
            i = next((i for i, c in enumerate(queue) if _shape(c.meta.get("val")) == shape), None)
            if i is not None:
                out[n.name] = queue.pop(i).name
            elif _is_identity(n):
                out[n.name] = out[args[0].name]
            else:
                return None
    return out


def _key(node: fx.Node, ins: tuple[fx.Node, ...]) -> tuple[Any, ...]:
    # which output of a multi-output op: the index is the same in both exports
    index = node.args[1] if node.target is operator.getitem else None
    return (str(node.target), tuple(a.name for a in ins), index)
