"""``architecture.json``: what was kept, per layer, with parameters and FLOPs before and after."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import fx

from ..ops import LayerCall, LayerSpec, rule_for, run_layer
from ._codegen import Generated
from ..ops import module_stack, op_flops

__all__ = ["architecture", "node_flops", "original_layers", "record_shapes"]


class _ShapeRecorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.shapes: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            self.shapes[n.name] = list(out.shape)
        elif isinstance(out, (list, tuple)) and out and all(isinstance(o, torch.Tensor) for o in out):
            self.shapes[n.name] = [list(o.shape) for o in out]
        return out


def record_shapes(gm: fx.GraphModule, inputs: tuple[Any, ...]) -> tuple[Any, dict[str, Any]]:
    """Run the subnet once (no grad): its outputs, and every node's output shape."""
    rec = _ShapeRecorder(gm)
    with torch.no_grad():
        out = rec.run(*inputs)
    return out, rec.shapes


def node_flops(graph: fx.Graph, shape_of: Callable[[fx.Node], Any], batch: int) -> dict[str, int]:
    """Per-sample FLOPs (MACs) of every op, summed per module path, by otonas' FLOP rules
    (``otonas.ops.op_flops``, the counter ``SearchSpace.costs`` uses too)."""
    out: dict[str, int] = {}
    for node in graph.nodes:
        try:
            flops = op_flops(node, shape_of)
        except (TypeError, IndexError, ValueError):
            continue
        if flops is None:
            continue
        stack = module_stack(node)
        path = stack[-1][0] if stack else ""
        out[path] = out.get(path, 0) + flops // max(batch, 1)
    return out


def _val_shape(node: fx.Node) -> Any:
    val = node.meta.get("val")

    def one(v: Any) -> list[int] | None:
        if isinstance(v, torch.Tensor):
            try:
                return [int(s) for s in v.shape]
            except (TypeError, ValueError):
                return [int(s.node.hint) if hasattr(s, "node") else int(s) for s in v.shape]
        return None

    if isinstance(val, (list, tuple)):
        shapes = [one(v) for v in val]
        return shapes if all(s is not None for s in shapes) else None
    return one(val)


def original_layers(program: torch.export.ExportedProgram, tensors: dict[str, torch.Tensor]) -> dict[str, LayerSpec]:
    """The layers of the original network, read by the same rules as the subnet's."""
    sig = {s.arg.name: s.target for s in program.graph_signature.input_specs if hasattr(s.arg, "name")}
    found: dict[str, LayerSpec] = {}
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        rule = rule_for(node.target)
        if not rule.implements("layer"):
            continue
        schema = node.target._schema
        values = {a.name: (node.args[i] if i < len(node.args) else node.kwargs[a.name])
                  for i, a in enumerate(schema.arguments) if i < len(node.args) or a.name in node.kwargs}
        defaults = {a.name: a.default_value for a in schema.arguments if a.has_default_value()}
        stack = module_stack(node)
        first = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        rank = len(first.meta["val"].shape) if first is not None and isinstance(first.meta.get("val"),
                                                                                 torch.Tensor) else None
        call = LayerCall(node, node.target, values, defaults,
                         fqn=lambda v: sig.get(v.name) if v.op == "placeholder" else None,
                         tensor=lambda v: tensors.get(sig.get(v.name, "")) if v.op == "placeholder" else None,
                         module=lambda p: None, module_type=stack[-1][1] if stack else None, rank=rank)
        spec = run_layer(rule.layer, call)
        if spec is not None and spec.path not in found:
            found[spec.path] = spec
    return found


def architecture(gen: Generated, tensors: dict[str, torch.Tensor], *, types: dict[str, str],
                 before_tensors: dict[str, torch.Tensor] | None, before_layers: dict[str, LayerSpec],
                 flops_before: dict[str, int] | None, flops_after: dict[str, int] | None,
                 totals: dict[str, Any], header: dict[str, Any], params: set[str],
                 params_before: set[str], erased_ops: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON document: header facts, totals, then one entry per layer of ``model.py``.
    ``params`` / ``params_before``: names of the parameters (not buffers) after and before."""
    def numel(source: dict[str, torch.Tensor] | None, keys: list[str]) -> int | None:
        if source is None:
            return None
        names = params if source is tensors else params_before
        return sum(source[k].numel() for k in keys if k in source and k in names)

    entries: dict[str, dict[str, Any]] = {}
    for path, spec in gen.layers.items():
        keys = [f"{path}.{s}" for s in spec.state]
        before = before_layers.get(path)
        channels = {k: {"before": dict(before.channels).get(k) if before else None, "after": v}
                    for k, v in spec.channels}
        entries[path] = {"name": path, "type": spec.cls, "source_type": types.get(path),
                         "declaration": spec.ctor, "channels": channels,
                         "params": {"before": numel(before_tensors, keys), "after": numel(tensors, keys)}}
    raw_by_module: dict[str, list[str]] = {}
    for fqn in gen.raw:
        raw_by_module.setdefault(fqn.rsplit(".", 1)[0] if "." in fqn else "", []).append(fqn)
    for path, keys in raw_by_module.items():
        entry = entries.setdefault(path, {"name": path, "type": None, "source_type": types.get(path),
                                          "declaration": None, "channels": {},
                                          "params": {"before": 0, "after": 0}})
        tensors_entry = {}
        for k in keys:
            after = tensors[k]
            prior = before_tensors.get(k) if before_tensors is not None else None
            tensors_entry[k.rsplit(".", 1)[-1]] = {"before": list(prior.shape) if prior is not None else None,
                                                    "after": list(after.shape)}
        entry["tensors"] = tensors_entry
        if entry["type"] is None:
            entry["params"] = {"before": numel(before_tensors, keys), "after": numel(tensors, keys)}
    # layers of the original network that the subnet no longer has: erased with their operators
    for path, spec in before_layers.items():
        keys = [f"{path}.{s}" for s in spec.state]
        if path in entries or any(k in tensors for k in keys):
            continue
        entries[path] = {"name": path, "type": spec.cls, "source_type": types.get(path), "declaration": None,
                         "channels": {k: {"before": v, "after": 0} for k, v in spec.channels},
                         "params": {"before": numel(before_tensors, keys), "after": 0}, "erased": True}
    order = {p: i for i, p in enumerate(before_layers)}
    layers = []
    for path in sorted(entries, key=lambda p: (order.get(p, len(order)), _order(gen.state, p))):
        e = entries[path]
        e["flops"] = {"before": flops_before.get(path, 0) if flops_before is not None else None,
                      "after": 0 if e.get("erased") else flops_after.get(path, 0) if flops_after is not None else None}
        e["erased_operators"] = [op["operators"] for op in erased_ops
                                 if path == op["module"] or path.startswith(op["module"] + ".")]
        layers.append(e)
    gaps = list(gen.gaps) + [g for g in header.get("known_gaps", []) if g not in gen.gaps]
    return {**header, **totals, "layers": layers, "erased_operators": erased_ops, "known_gaps": gaps}


def _order(state: list[str], path: str) -> int:
    for i, k in enumerate(state):
        if k.startswith(path + ".") or (not path and "." not in k):
            return i
    return len(state)

