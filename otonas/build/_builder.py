"""Build the smaller network: slice every parameter and buffer by the groups that
survive and rewrite the shape constants of the captured graph. The result is a
``torch.fx.GraphModule`` whose outputs equal the original model's.

The graph copied is the free-batch export of :meth:`Capture.build_program`; every
question about channels goes to the node of the analysed (static) export that computes
the same tensor (``BuildContext.source``)."""

from __future__ import annotations

import math
import operator
from typing import Any, cast

import numpy as np
import torch
from torch import fx, nn
from torch.export.graph_signature import InputKind, OutputKind

from .._errors import BuildError
from ..analysis import BUILD_RULES, SearchSpace
from ..analysis._flow import module_path, node_shape

__all__ = ["build", "BuildContext"]

rule = BUILD_RULES.register


class BuildContext:
    """What a rewrite rule sees: original and reduced sizes, and the graph being written."""

    def __init__(self, space: SearchSpace, removed_root: np.ndarray | None, graph: fx.Graph,
                 source: dict[str, str]) -> None:
        self.space = space
        self.removed_root = removed_root
        self.graph = graph
        self.source = source  # node of the copied program -> node of the analysed one
        self._masks: dict[str, Any] = {}

    def masks(self, node: fx.Node) -> Any:
        """Keep-mask of every position of every dim of ``node``'s output(s)."""
        name = self.source.get(node.name, node.name)
        if name not in self._masks:
            self._masks[name] = self.space.keep_masks(name, self.removed_root)
        return self._masks[name]

    def sizes(self, node: fx.Node) -> Any:
        m = self.masks(node)
        if isinstance(m, list) and (not m or isinstance(m[0], np.ndarray)):
            return [int(k.sum()) for k in m]
        return type(m)(None if x is None else [int(k.sum()) for k in x] for x in m)

    def orig(self, node: fx.Node) -> list[int]:
        shape = node_shape(node.meta.get("val"))
        assert shape is not None
        return list(shape)

    def size_list(self, sizes: Any, orig: list[int], new: list[int]) -> list[Any]:
        """Rewrite a size argument (ints, -1, or symbolic nodes for the batch) to new sizes."""
        out = []
        for a, o, n in zip(sizes, orig, new):
            if n == o or (isinstance(a, int) and a == -1):
                out.append(a)
            elif isinstance(a, fx.Node):
                # A symbolic size that contains the batch: scale it (s·c·n/o == s·c' exactly).
                out.append(self.graph.call_function(operator.floordiv,
                                                    (self.graph.call_function(operator.mul, (a, n)), o)))
            else:
                out.append(n)
        return out


def _input(node: fx.Node) -> fx.Node:
    """The tensor ``node`` operates on: its first argument (a node, by the op's schema)."""
    return cast(fx.Node, node.args[0])


def _first(x: Any) -> Any:
    """The per-dim list of a single-output node (or of the first output of a multi-output one)."""
    return x if isinstance(x, list) and (not x or isinstance(x[0], (int, np.ndarray))) else x[0]


@rule("aten.view", "aten.reshape", "aten._unsafe_view", "aten.expand", "aten.new_zeros", "aten.new_ones",
      "aten.new_empty", "aten.new_full", "aten.broadcast_to")
def _size_arg1(ctx: BuildContext, node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
    args[1] = ctx.size_list(list(args[1]), ctx.orig(node), ctx.sizes(node))
    return node.target, args, kwargs


@rule("aten.zeros", "aten.ones", "aten.empty", "aten.full", "aten.rand", "aten.randn")
def _size_arg0(ctx: BuildContext, node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
    args[0] = ctx.size_list(list(args[0]), ctx.orig(node), ctx.sizes(node))
    return node.target, args, kwargs


@rule("aten.unflatten")
def _unflatten(ctx: BuildContext, node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
    d = int(args[1]) % len(ctx.orig(_input(node)))
    k = len(args[2])
    args[2] = ctx.size_list(list(args[2]), ctx.orig(node)[d:d + k], ctx.sizes(node)[d:d + k])
    return node.target, args, kwargs


@rule("aten.split", "aten.split_with_sizes", "aten.chunk", "aten.unsafe_split")
def _split(ctx: BuildContext, node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
    src = _input(node)
    ndim = len(ctx.orig(src))
    d = int(args[2] if len(args) > 2 else kwargs.pop("dim", 0)) % ndim
    pieces = [s[d] for s in ctx.sizes(node)]
    orig = [node_shape(v)[d] for v in node.meta["val"]]  # type: ignore[index]
    if pieces == orig:
        return node.target, args, kwargs
    return torch.ops.aten.split_with_sizes.default, [args[0], pieces, d], {}


def _kept_before(ctx: BuildContext, src: fx.Node, dim: int, index: int) -> int:
    return int(_first(ctx.masks(src))[dim][:index].sum())


@rule("aten.slice")
def _slice(ctx: BuildContext, node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
    src = _input(node)
    n = len(ctx.orig(src))
    d = int(args[1]) % n if len(args) > 1 else 0
    length = ctx.orig(src)[d]
    if _first(ctx.masks(src))[d].all():
        return node.target, args, kwargs  # nothing removed along this dim (it may be the free batch dim)
    for i in (2, 3):
        if len(args) > i and isinstance(args[i], int):
            v = args[i]
            v = max(0, min(v + length if v < 0 else v, length))
            args[i] = _kept_before(ctx, src, d, v)
    return node.target, args, kwargs


@rule("aten.select")
def _select(ctx: BuildContext, node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
    src = _input(node)
    d = int(args[1]) % len(ctx.orig(src))
    idx = int(args[2]) % ctx.orig(src)[d]
    args[2] = _kept_before(ctx, src, d, idx)
    return node.target, args, kwargs


@rule("aten.narrow")
def _narrow(ctx: BuildContext, node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
    src = _input(node)
    d = int(args[1]) % len(ctx.orig(src))
    start, length = int(args[2]) % ctx.orig(src)[d], int(args[3])
    keep = _first(ctx.masks(src))[d]
    args[2], args[3] = int(keep[:start].sum()), int(keep[start:start + length].sum())
    return node.target, args, kwargs


def _scale_groups(ctx: BuildContext, node: fx.Node, groups: int) -> int:
    src = _input(node)
    orig, new = ctx.orig(src)[1], _first(ctx.sizes(src))[1]
    return groups * new // orig if orig else groups


@rule("aten.conv1d", "aten.conv2d", "aten.conv3d")
def _conv(ctx: BuildContext, node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
    groups = int(args[6]) if len(args) > 6 else int(kwargs.get("groups", 1))
    if groups != 1:
        if len(args) > 6:
            args[6] = _scale_groups(ctx, node, groups)
        else:
            kwargs["groups"] = _scale_groups(ctx, node, groups)
    return node.target, args, kwargs


@rule("aten.convolution")
def _convolution(ctx: BuildContext, node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
    if int(args[8]) != 1:
        args[8] = _scale_groups(ctx, node, int(args[8]))
    return node.target, args, kwargs


@rule("aten.group_norm")
def _group_norm(ctx: BuildContext, node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
    args[1] = _scale_groups(ctx, node, int(args[1]))
    return node.target, args, kwargs


@rule("aten.scaled_dot_product_attention")
def _sdpa(ctx: BuildContext, node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
    q = _input(node)
    e_orig, e_new = ctx.orig(q)[-1], _first(ctx.sizes(q))[-1]
    scale = args[6] if len(args) > 6 else kwargs.get("scale")
    if e_orig != e_new and scale is None:
        # the default scale is 1/sqrt(head dim): keep the original one
        if len(args) > 6:
            args[6] = 1.0 / math.sqrt(e_orig)
        else:
            kwargs["scale"] = 1.0 / math.sqrt(e_orig)
    return node.target, args, kwargs


def _set_attr(root: nn.Module, fqn: str, value: torch.Tensor, param: bool) -> None:
    *path, name = fqn.split(".")
    mod = root
    for p in path:
        if not hasattr(mod, p):
            mod.add_module(p, nn.Module())
        mod = getattr(mod, p)
    if param:
        mod.register_parameter(name, nn.Parameter(value, requires_grad=value.is_floating_point()))
    else:
        mod.register_buffer(name, value)


def _slice_tensor(t: torch.Tensor, masks: list[np.ndarray]) -> torch.Tensor:
    for d, keep in enumerate(masks):
        if not keep.all():
            t = t.index_select(d, torch.from_numpy(np.nonzero(keep)[0]).to(t.device))
    return t.detach().clone()


def build(space: SearchSpace, *, removed: np.ndarray | None = None, erased: np.ndarray | None = None,
          _unchecked: bool = False) -> fx.GraphModule:
    """Return the network without the groups whose parameters are all exactly zero.

    Erasing groups whose parameters are all zero are removed whole (the largest valid
    set of them, outer groups first: see :meth:`SearchSpace.erasable`), with the joins
    they fed: an ``add`` left with one input becomes that input, a ``cat`` drops the
    input and its consumers' columns. Pruning groups whose parameters are all zero are
    sliced away; no tensor dimension loses its last channel (:meth:`SearchSpace.removable`).
    ``removed`` / ``erased`` (boolean masks) override what is read from the model.
    Outputs equal the model's outputs in eval mode.
    """
    removed = space.removable(space.zero_groups() if removed is None else np.asarray(removed, dtype=bool))
    if space.num_erasing_groups:
        erased = space.erasable(space.zero_erasing_groups()) if erased is None else np.asarray(erased, dtype=bool)
        dead, why = space.segments.dead_nodes(erased)
        if why and not _unchecked:  # _unchecked: tests build invalid sets to show they break
            raise BuildError(f"the erasure set is not valid: {why}")
    else:
        dead = set()
    copied = space.capture.build_program()
    program, source = copied.program, copied.source
    sig = program.graph_signature
    specs = {s.arg.name: s for s in sig.input_specs if hasattr(s.arg, "name")}
    params = dict(space.model.named_parameters(remove_duplicate=False))
    buffers = dict(space.model.named_buffers(remove_duplicate=False))
    g = fx.Graph()
    ctx = BuildContext(space, space._removed_root(removed, dead), g, source)
    root = nn.Module()
    env: dict[fx.Node, Any] = {}
    done_attrs: set[str] = set()
    for node in program.graph.nodes:
        try:
            if node.op == "placeholder":
                spec = specs.get(node.name)
                if spec is None or spec.kind == InputKind.USER_INPUT:
                    env[node] = g.placeholder(node.name)
                else:
                    fqn = spec.target
                    if node.users and all(source.get(u.name) in dead for u in node.users):
                        continue  # only erased operators read it
                    if fqn not in done_attrs:
                        value: torch.Tensor
                        if spec.kind == InputKind.PARAMETER:
                            value, is_param = params[fqn], True
                        elif spec.kind == InputKind.BUFFER and fqn in buffers:
                            value, is_param = buffers[fqn], False
                        else:
                            value, is_param = program.constants[fqn], False
                        if value.is_meta:
                            raise BuildError("the model is on the meta device: load real weights before building")
                        masks = ctx.masks(node) if source.get(node.name) in space._flow.dims else []
                        _set_attr(root, fqn, _slice_tensor(value, masks), is_param)
                        done_attrs.add(fqn)
                    env[node] = g.get_attr(fqn)
            elif node.op == "call_function":
                name = source.get(node.name)  # None: symbolic sizes and asserts, which the analysis skips
                if name in dead or (name is None and not all(a in env for a in node.all_input_nodes)):
                    continue
                live = [a for a in node.all_input_nodes if a in env]  # the others were erased
                if len(live) < len(node.all_input_nodes):  # a join that lost inputs to erasure
                    if str(node.target).startswith("aten.add"):
                        env[node] = env[live[0]]
                        continue
                    # a concatenation: drop the erased inputs (their channels are gone downstream too)
                    node_args = list(node.args)
                    node_args[0] = [a for a in node_args[0] if not isinstance(a, fx.Node) or a in env]
                    args = list(fx.map_arg(tuple(node_args), lambda a: env[a]))
                    env[node] = g.call_function(node.target, tuple(args), dict(node.kwargs))
                    continue
                args = list(fx.map_arg(node.args, lambda a: env[a]))
                kwargs = dict(fx.map_arg(node.kwargs, lambda a: env[a]))
                target = node.target
                fn = BUILD_RULES.lookup(target) if name in space._flow.dims else None
                if fn is not None:
                    target, args, kwargs = fn(ctx, node, args, kwargs)
                new = g.call_function(target, tuple(args), kwargs)
                for key in ("nn_module_stack", "stack_trace", "source_fn_stack"):
                    if key in node.meta:
                        new.meta[key] = node.meta[key]
                if name is not None:
                    new.meta["otonas_source_node"] = name  # export reads the analysed node's facts
                env[node] = new
            elif node.op == "output":
                outs = node.args[0]
                user = [fx.map_arg(a, lambda x: env[x]) for a, s in zip(outs, sig.output_specs)
                        if s.kind == OutputKind.USER_OUTPUT]
                g.output(tuple(user))
        except BuildError:
            raise
        except Exception as e:
            path = module_path(node)
            raise BuildError(f"building failed at node {node.name} ({node.target})"
                             + (f" in module '{path}'" if path else "") + f": {type(e).__name__}: {e}") from e
    g.eliminate_dead_code()
    gm = fx.GraphModule(root, g, class_name=f"Built{type(space.model).__name__}")
    _pytree_io(gm, program)
    gm.recompile()
    return gm


def _pytree_io(gm: fx.GraphModule, program: torch.export.ExportedProgram) -> None:
    """Accept and return the same (nested) structures as the original forward."""
    from torch.fx.graph import _PyTreeCodeGen, _PyTreeInfo

    spec = program.call_spec
    names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    gm.graph._codegen = _PyTreeCodeGen(_PyTreeInfo(names, spec.in_spec, spec.out_spec))
