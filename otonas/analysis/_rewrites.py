"""The rewrite check: every op the builder copies must accept the smaller tensors it is
given and give the smaller tensor the analysis expects, for any removal. A family for
which some op cannot is pinned here, with that op named, so that no build fails (or, worse,
computes something else) at run time.

The check propagates shapes on ``meta`` tensors (no memory, no arithmetic): each op of the
analysed graph gets inputs of the sizes the builder would give it, is rewritten by its rule
as the builder rewrites it, run, and its output shape compared with the analysis' kept
sizes. Inputs are made from the expected sizes, not from the upstream op's result, so a
failure is local to the op that fails. Two worst-case removals, every family at once — one
channel gone from each, and all but one gone — cover a size that shrinks a little and one
that shrinks a lot; only the ops that see a removed channel run. When an op fails, each
family it touches is tried alone there to find the culprit (all of them are pinned when
only their combination fails). It reads the search space and returns its findings; the
space applies them."""

from __future__ import annotations

import operator
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import fx

from ..ops import BuildContext, PinEvent, module_path, node_shape, rule_for

if TYPE_CHECKING:
    from ._space import SearchSpace

__all__ = ["unrewritable_families"]

_META = torch.device("meta")


def unrewritable_families(space: SearchSpace) -> dict[int, PinEvent]:
    """Families whose removal the builder cannot carry through some op: family index -> the
    pin that says which op and why (the first one found)."""
    if not space.num_prunable_groups:
        return {}
    family = np.asarray(space.group_family, dtype=np.int64)
    groups = [np.asarray(f.groups, dtype=np.int64) for f in space.families if f.groups]
    one = np.zeros(space.num_prunable_groups, dtype=bool)
    most = np.zeros(space.num_prunable_groups, dtype=bool)
    for g in groups:
        one[g[0]] = True
        most[g[1:]] = True
    bad: dict[int, PinEvent] = {}
    memo: dict[Any, Any] = {}
    for pattern in (one, most):
        if pattern.any():
            _Check(space, family, bad, memo).run(space.removable(pattern))
    return bad


class _Check:
    def __init__(self, space: SearchSpace, family: np.ndarray, bad: dict[int, PinEvent],
                 memo: dict[Any, Any]) -> None:
        self.space = space
        self.memo = memo  # (op, argument shapes and constants) -> its outputs' shapes, or the error
        self.family = family
        self.bad = bad
        self.dims = space._flow.dims
        self.nodes = list(space.capture.graph.nodes)
        self.scratch = fx.Graph()  # rewrites of symbolic sizes add nodes here; the static graph has none

    def run(self, removed: np.ndarray) -> None:
        removed_root = self.space._removed_root(removed)
        assert removed_root is not None
        ctx = BuildContext(self.space, removed_root, self.scratch, {})
        removed_family = np.full(len(removed_root), -1, dtype=np.int64)  # per root: its family if removed
        gid = self.space._gid_of_root
        hit = removed_root & (gid >= 0)
        removed_family[hit] = self.family[gid[hit]]
        for node in self.nodes:
            if node.op != "call_function" or node.target is operator.getitem or node.name not in self.dims:
                continue
            touched = self._touched(node, removed_family)
            if not touched or touched <= set(self.bad):
                continue
            err = self._try(node, ctx)
            if err is None:
                continue
            if self._try(node, BuildContext(self.space, None, self.scratch, {})) is not None:
                continue  # the op does not run on meta tensors even at full size: nothing to learn
            if self.bad and self._try(node, self._without(removed, set(self.bad))) is None:
                continue  # only families already pinned break it
            suspects = sorted(touched - set(self.bad))
            alone = [f for f in suspects if self._try(node, self._only(removed, f)) is not None]
            event = PinEvent(str(node.target), node.name, module_path(node),
                             f"the builder cannot rewrite this op for fewer channels ({err})")
            for f in alone or suspects:
                self.bad.setdefault(f, event)

    # --- removals -------------------------------------------------------------------------
    def _ctx(self, removed: np.ndarray) -> BuildContext:
        return BuildContext(self.space, self.space._removed_root(removed), self.scratch, {})

    def _only(self, removed: np.ndarray, f: int) -> BuildContext:
        return self._ctx(removed & (self.family == f))

    def _without(self, removed: np.ndarray, fams: set[int]) -> BuildContext:
        return self._ctx(removed & ~np.isin(self.family, sorted(fams)))

    def _touched(self, node: fx.Node, removed_family: np.ndarray) -> set[int]:
        """Families with a removed channel in an input or the output of ``node``."""
        arrays = [ids for n in (node, *node.all_input_nodes) for ids in _id_arrays(self.dims.get(n.name))]
        if not arrays:
            return set()
        f = removed_family[self.space._roots[np.concatenate(arrays)]]
        return set(np.unique(f[f >= 0]).tolist())

    # --- one op ---------------------------------------------------------------------------
    def _try(self, node: fx.Node, ctx: BuildContext) -> str | None:
        """None when the rewritten op runs on inputs of the kept sizes and gives the kept
        sizes; otherwise what went wrong, in one line."""
        try:
            env = {a: self._value(a, ctx) for a in node.all_input_nodes}
            args = list(fx.map_arg(node.args, lambda a: env[a]))
            kwargs = dict(fx.map_arg(node.kwargs, lambda a: env[a]))
            target, args, kwargs = rule_for(node.target).rewrite(ctx, node, args, kwargs)
            schema = getattr(target, "_schema", None)
            if schema is not None and any(a.name == "device" for a in schema.arguments):
                kwargs["device"] = _META  # a factory: make it on meta, not in memory
            key = (target, _frozen(args), _frozen(kwargs))
        except Exception as e:  # a rewrite that cannot take these sizes
            return _line(e)
        if key not in self.memo:  # repeated blocks ask the same question: ask torch once
            try:
                with torch.no_grad():
                    got = target(*args, **kwargs)
                self.memo[key] = [None if g is None else list(g.shape) for g in _tensors(got)]
            except Exception as e:  # whatever the op raises means it cannot take these sizes
                self.memo[key] = _line(e)
        shapes = self.memo[key]
        if isinstance(shapes, str):
            return shapes
        for w, g in zip(_expected(ctx.sizes(node)), shapes):
            if w is not None and g is not None and g != w:
                return f"it gives shape {g} where {w} is expected"
        return None

    def _value(self, node: fx.Node, ctx: BuildContext) -> Any:
        """A meta tensor of the size the builder gives ``node`` (its recorded value when it is
        not a tensor: a static size, a scalar)."""
        val = node.meta.get("val")
        if node.name in self.dims:
            sizes = ctx.sizes(node)
            if isinstance(val, torch.Tensor):
                return torch.empty(_first(sizes), dtype=val.dtype, device=_META)
            if isinstance(val, (list, tuple)):
                return type(val)(torch.empty(s, dtype=v.dtype, device=_META) if isinstance(v, torch.Tensor) and s
                                 is not None else v for v, s in zip(val, sizes))
        if isinstance(val, torch.Tensor):
            shape = node_shape(val)
            return torch.empty(shape or (), dtype=val.dtype, device=_META)
        if isinstance(val, (list, tuple)):
            return type(val)(torch.empty(node_shape(v) or (), dtype=v.dtype, device=_META)
                             if isinstance(v, torch.Tensor) else v for v in val)
        return val


def _first(sizes: Any) -> list[int]:
    return sizes if isinstance(sizes, list) and (not sizes or isinstance(sizes[0], int)) else sizes[0]


def _line(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def _tensors(got: Any) -> list[torch.Tensor | None]:
    items = got if isinstance(got, (list, tuple)) else (got,)
    return [g if isinstance(g, torch.Tensor) else None for g in items]


def _expected(want: Any) -> list[list[int] | None]:
    """The kept sizes of each output, in the order of :func:`_tensors`."""
    if isinstance(want, list) and (not want or isinstance(want[0], int)):
        return [want]
    return list(want)


def _frozen(x: Any) -> Any:
    """A hashable stand-in for an op's argument: a tensor by its shape and dtype."""
    if isinstance(x, torch.Tensor):
        return ("tensor", tuple(x.shape), x.dtype)
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, *(_frozen(v) for v in x))
    if isinstance(x, dict):
        return ("dict", *((k, _frozen(v)) for k, v in x.items()))
    try:
        hash(x)
    except TypeError:
        return ("object", id(x))
    return x


def _id_arrays(d: Any) -> Iterator[np.ndarray]:
    if d is None:
        return
    if isinstance(d, list) and (not d or isinstance(d[0], np.ndarray)):
        yield from d
        return
    for x in d:
        if x is not None:
            yield from x
