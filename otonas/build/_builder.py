"""Build the smaller network: slice every parameter and buffer by the groups that
survive and rewrite the shape constants of the captured graph. The result is a
``torch.fx.GraphModule`` whose outputs equal the original model's.

The graph copied is the free-batch export of :meth:`Capture.build_program`; every
question about channels goes to the node of the analysed (static) export that computes
the same tensor (``BuildContext.source``). How each op is rewritten is its rule's ``rewrite``
(:mod:`otonas.ops`)."""

from __future__ import annotations

import copy
from typing import Any, Literal, overload

import numpy as np
import torch
from torch import fx, nn
from torch.export.graph_signature import InputKind, OutputKind

from ..errors import BuildError, UsageError
from ..analysis import Plan, SearchSpace
from ..ops import BuildContext, copy_meta, module_path, rule_for

__all__ = ["build", "BuildContext"]


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


@overload
def build(space: SearchSpace, plan: Plan | None = ..., *, removed: np.ndarray | None = ...,
          erased: np.ndarray | None = ..., inplace: Literal[False] = ..., model: nn.Module | None = ...,
          _unchecked: bool = ...) -> fx.GraphModule: ...


@overload
def build(space: SearchSpace, plan: Plan | None = ..., *, removed: np.ndarray | None = ...,
          erased: np.ndarray | None = ..., inplace: Literal[True], model: nn.Module | None = ...,
          _unchecked: bool = ...) -> nn.Module: ...


def build(space: SearchSpace, plan: Plan | None = None, *, removed: np.ndarray | None = None,
          erased: np.ndarray | None = None, inplace: bool = False, model: nn.Module | None = None,
          _unchecked: bool = False) -> fx.GraphModule | nn.Module:
    """Return the network without the groups whose parameters are all exactly zero.

    What goes is ``plan`` (:meth:`SearchSpace.plan`), made here from the weights when it is not
    given: erasing groups whose parameters are all zero are removed whole (the largest valid
    set of them, outer groups first: see :meth:`SearchSpace.erasable`), with the joins
    they fed: an ``add`` left with one input becomes that input, a ``cat`` drops the
    input and its consumers' columns. Pruning groups whose parameters are all zero are
    sliced away; no tensor dimension loses its last channel (:meth:`SearchSpace.removable`).
    ``removed`` / ``erased`` (boolean masks) override what is read from the model, as in
    ``space.plan(removed=..., erased=...)``. Outputs equal the model's outputs in eval mode.

    With ``inplace`` the same groups are sliced out of ``space.model`` itself: its modules keep
    their classes and methods (a transformers model still ``generate()``s) and get their size
    attributes updated (``in_features``, ``num_heads``, …). The result is checked against the
    graph build on the example inputs; a module whose attributes cannot be made consistent is a
    :class:`BuildError` that names it, and the model is then left unchanged. Returns the model.
    Erasing operators in place is not supported yet (an error says which are all zero).

    ``model``: the weights (and buffers) come from this network of the analysed architecture
    instead of ``space.model`` — a trained copy, one loaded from a checkpoint, the real network of a
    space analysed on the meta device — and, without ``plan``, so does the removal decision
    (``space.plan(model=model)``); with ``inplace`` it is this model that is sliced.
    """
    if plan is None:
        if erased is not None and space.num_erasing_groups and not _unchecked:
            # _unchecked: tests build invalid sets to show they break
            why = space.check_erasure(np.asarray(erased, dtype=bool))
            if why:
                raise BuildError(f"the erasure set is not valid: {why}")
        plan = space.plan(removed, erased, model=model, _unchecked=True)  # a given erasure is checked above
    elif removed is not None or erased is not None:
        raise UsageError("build takes a plan or removed=/erased=, not both: make the plan with "
                         "space.plan(removed=..., erased=...)")
    if inplace:
        from ._inplace import build_inplace

        def reference(inputs: tuple[Any, ...]) -> Any:
            gm = _build_graph(space, plan, model)
            with torch.no_grad():
                return gm(*inputs)

        return build_inplace(space, plan, reference, model=model)
    return _build_graph(space, plan, model)


def _build_graph(space: SearchSpace, plan: Plan, model: nn.Module | None = None) -> fx.GraphModule:
    copied = space.capture.build_program()
    program, source = copied.program, copied.source
    sig = program.graph_signature
    specs = {s.arg.name: s for s in sig.input_specs if hasattr(s.arg, "name")}
    params = space.weights_of(model)
    buffers = space.buffers_of(model)
    g = fx.Graph()
    dead = plan.dead
    ctx = BuildContext(space, plan.removed_root, g, source)
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
                        masks = ctx.masks(node) if space.has_channels(source.get(node.name, "")) else []
                        _set_attr(root, fqn, _slice_tensor(value, masks), is_param)
                        done_attrs.add(fqn)
                    env[node] = g.get_attr(fqn)
            elif node.op == "get_attr":
                # a higher-order op's region (torch.autocast's wrap_with_autocast, ...): its graph
                # module is copied as it is; the analysis pins every channel it touches (no rule)
                region = getattr(program.graph_module, str(node.target), None)
                if not isinstance(region, nn.Module):
                    raise BuildError(f"node {node.name} reads {node.target!r} of the captured program, which otonas "
                                     "cannot carry into the built network")
                if not hasattr(root, str(node.target)):
                    root.add_module(str(node.target), copy.deepcopy(region))
                env[node] = g.get_attr(str(node.target))
            elif node.op == "call_function":
                name = source.get(node.name)  # None: symbolic sizes and asserts, which the analysis skips
                if name in dead or (name is None and not all(a in env for a in node.all_input_nodes)):
                    continue
                live = [a for a in node.all_input_nodes if a in env]  # the others were erased
                if len(live) < len(node.all_input_nodes):  # a join that lost inputs to erasure
                    if rule_for(node.target).join == "add":
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
                if name is not None and space.has_channels(name):
                    target, args, kwargs = rule_for(target).rewrite(ctx, node, args, kwargs)
                new = g.call_function(target, tuple(args), kwargs)
                copy_meta(node, new, source=name)  # export reads the analysed node's facts
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
    gm = fx.GraphModule(root, g, class_name=f"Built{type(model or space.model).__name__}")
    _pytree_io(gm, program, model or space.model)
    gm.recompile()
    return gm


def _pytree_io(gm: fx.GraphModule, program: torch.export.ExportedProgram, model: nn.Module) -> None:
    """Accept and return the same (nested) structures as the original forward: its positional
    arguments by their own names (a list or dict argument stays one argument), then its keyword
    arguments by theirs."""
    from torch.fx.graph import _PyTreeCodeGen, _PyTreeInfo

    spec = program.call_spec
    names = _argument_names(spec.in_spec, model)
    if names is None:  # a flat signature of tensors: the placeholders are the arguments
        names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    gm.graph._codegen = _PyTreeCodeGen(_PyTreeInfo(names, spec.in_spec, spec.out_spec))


def _argument_names(in_spec: Any, model: nn.Module) -> list[str] | None:
    """The names of the forward's top-level arguments as ``in_spec`` (``(args, kwargs)``) holds
    them: positional ones from the forward's signature (``arg<i>`` where it has none), then the
    keyword names; None when every argument is a single tensor (the placeholders serve)."""
    import inspect

    if in_spec is None or in_spec.type is not tuple or in_spec.num_children != 2:
        return None
    args, kwargs = in_spec.child(0), in_spec.child(1)
    if all(args.child(i).is_leaf() for i in range(args.num_children)) and kwargs.num_children == 0:
        return None
    try:
        params = [q for q in inspect.signature(model.forward).parameters.values()
                  if q.kind in (q.POSITIONAL_ONLY, q.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    kw = [str(k) for k in (kwargs.context or [])]
    names = []
    for i in range(args.num_children):
        name = params[i].name if i < len(params) else f"arg{i}"
        names.append(name if name not in kw and name not in names else f"arg{i}")
    return names + kw
