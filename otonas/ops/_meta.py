"""Node metadata, read and written in one place.

Every stage reads the same few facts off an ``fx.Node`` of a captured or built graph: the
shape of its value, the module path it came from (``nn_module_stack``, as ``torch.export``
records it), and — for a node of a built subnet — the node of the analysed program it was
copied from. These functions are the only code that knows the ``meta`` keys.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from ..errors import AnalysisError

__all__ = ["node_shape", "module_path", "module_stack", "source_node", "copy_meta", "SOURCE_NODE"]

SOURCE_NODE = "otonas_source_node"
"""The ``meta`` key of a built node: the name of the analysed node it was copied from."""

_COPIED = ("nn_module_stack", "stack_trace", "source_fn_stack")


def _hint(s: Any) -> int:
    if isinstance(s, torch.SymInt):
        hint = s.node.hint
        if hint is None:
            raise AnalysisError(f"symbolic size {s} has no example value")
        return int(hint)
    return int(s)


def node_shape(val: Any) -> tuple[int, ...] | None:
    """The concrete shape of a node's value (``node.meta["val"]``); symbolic sizes by their
    example value. None when the value is not a tensor."""
    if isinstance(val, torch.Tensor):
        return tuple(_hint(s) for s in val.shape)
    return None


def module_path(node: fx.Node) -> str:
    """The path of the innermost module the node was traced in ("" at the top level)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    return list(stack.values())[-1][0]


def module_stack(node: fx.Node, *, all_entries: bool = False) -> list[tuple[str, str]]:
    """``(module path, module type)`` from the outermost module to the innermost; without
    ``all_entries``, the placeholder entries ``torch.export`` adds for hooks (paths starting
    ``_empty``) and malformed ones are left out."""
    st = node.meta.get("nn_module_stack") or {}
    if all_entries:
        return list(st.values())
    return [v for v in st.values() if isinstance(v, tuple) and len(v) == 2 and not str(v[0]).startswith("_empty")]


def source_node(node: fx.Node) -> str | None:
    """For a node of a built subnet, the name of the analysed node it was copied from."""
    return node.meta.get(SOURCE_NODE)


def copy_meta(src: fx.Node, dst: fx.Node, *, source: str | None = None) -> None:
    """Give ``dst`` (a node of a graph being built) ``src``'s module stack and source trace,
    and, with ``source``, the name of the analysed node it stands for."""
    for key in _COPIED:
        if key in src.meta:
            dst.meta[key] = src.meta[key]
    if source is not None:
        dst.meta[SOURCE_NODE] = source
