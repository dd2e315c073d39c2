"""Reading the built graph: arguments by schema name, module stacks, source names."""

from __future__ import annotations

import os
import re
from typing import Any

import torch
from torch import fx

from ..errors import ExportError, OtonasError

__all__ = ["ExportError", "BLOCK_TYPES", "PLAIN", "FRAME", "TORCH_DIR", "arg_values",
           "source_names", "fetch", "supported", "flat_args"]

BLOCK_TYPES = {"MultiheadAttention", "TransformerEncoderLayer", "TransformerDecoderLayer", "TransformerEncoder",
               "TransformerDecoder", "Transformer"}  # torch.nn modules whose insides are worth a comment
PLAIN = {"Sequential", "ModuleList", "ModuleDict", "Module"}  # containers without a forward of their own


def arg_values(node: fx.Node, target: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Arguments of a node by schema name, and the schema defaults."""
    schema = getattr(target, "_schema", None)
    if schema is None:
        names = ["a", "b", "c"]
        return {names[i]: a for i, a in enumerate(node.args)} | dict(node.kwargs), {}
    values: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    for i, a in enumerate(schema.arguments):
        if a.has_default_value():
            defaults[a.name] = a.default_value
        if not a.kwarg_only and i < len(node.args):
            values[a.name] = node.args[i]
        elif a.name in node.kwargs:
            values[a.name] = node.kwargs[a.name]
    return values, defaults


FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)\n(.*)')
_LHS = re.compile(r"^\s*([A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*)\s*,?\s*(?::[^=]+)?(?:[-+*/@%|&^]|//)?=(?!=)")
TORCH_DIR = os.path.dirname(torch.__file__) + os.sep


def source_names(node: fx.Node, cache: dict[tuple[str, bool], tuple[str, ...]], *, inside_torch: bool = False
                  ) -> tuple[str, ...]:
    """Variable names the user's own code assigned this value to, from the captured stack
    (``inside_torch``: the names in torch's own code, for the insides of torch's blocks)."""
    trace = node.meta.get("stack_trace")
    if not trace:
        return ()
    if (trace, inside_torch) not in cache:
        names: tuple[str, ...] = ()
        frames = FRAME.findall(trace)
        for file, _, _, code in reversed(frames):
            if file.startswith(TORCH_DIR) and not inside_torch:
                continue
            m = _LHS.match(code)
            if m:
                names = tuple(n.strip() for n in m.group(1).split(","))
            break
        cache[(trace, inside_torch)] = names
    return cache[(trace, inside_torch)]


def fetch(gm: fx.GraphModule, target: str) -> torch.Tensor:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def supported(target: Any) -> bool:
    return isinstance(target, torch._ops.OpOverload) or getattr(target, "__module__", None) in ("_operator",
                                                                                             "operator")


def flat_args(args: Any, kwargs: Any) -> list[Any]:
    out: list[Any] = []

    def add(a: fx.Node) -> fx.Node:
        out.append(a)
        return a

    fx.node.map_arg((args, kwargs), add)
    return out
