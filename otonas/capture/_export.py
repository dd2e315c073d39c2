"""Capture: ``torch.export`` a model into an ATen graph with parameter roles."""

from __future__ import annotations

import contextlib
import io
import itertools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import CaptureError
from ._match import match_nodes

__all__ = ["BuildProgram", "Capture", "capture", "shorter_inputs", "without_cache"]


@dataclass(frozen=True)
class BuildProgram:
    """The export the builder copies, and for each of its tensor nodes the node of the
    analysed program that computes the same tensor."""

    program: torch.export.ExportedProgram
    source: dict[str, str]
    dynamic_batch: bool
    free_dims: tuple[tuple[int, ...], ...] = ()
    """For each flattened tensor input of ``program``, the dims that are symbolic (any size)."""


@dataclass(frozen=True)
class Capture:
    """What ``torch.export`` gave us, plus how it was obtained.

    ``program`` has static shapes and no stack traces: the channel analysis needs
    neither a symbolic batch nor source lines, and both cost export time. The builder
    needs both (a network that takes any batch size; source lines name the variables
    of the exported ``model.py``): it copies a second export, made on first use
    (:meth:`build_program`).
    """

    program: torch.export.ExportedProgram
    strict: bool
    example_inputs: tuple[Any, ...]
    model: nn.Module = field(repr=False, compare=False)
    want_dynamic_batch: bool = True
    dynamic_shapes: Any = None
    _cache: dict[str, BuildProgram] = field(default_factory=dict, repr=False, compare=False)

    @property
    def graph(self) -> torch.fx.Graph:
        return self.program.graph

    @property
    def dynamic_batch(self) -> bool:
        """Whether the built network runs at any batch size (exports the model once to find out)."""
        return self.build_program().dynamic_batch

    @property
    def free_dims(self) -> tuple[tuple[int, ...], ...]:
        """For each tensor input (flattened, in order), the dims the built network takes at any size."""
        return self.build_program().free_dims

    def build_program(self) -> BuildProgram:
        """The model exported again with its free dims symbolic, its nodes matched to
        ``program``'s. The free dims are those of ``dynamic_shapes`` (torch.export's own
        terms) where the user gave them; otherwise dim 0 of every tensor input and, for
        token ids (an integer tensor of at least two dims), dim 1, the sequence — each as
        ``Dim.AUTO``, so torch keeps static whatever the model fixes. Where that export fails
        or its graph differs from the analysed one beyond no-ops, the batch alone is freed;
        failing that, a static export: the built network then needs the example's shapes.
        A dim of size 1 in the example stays static (torch specialises it)."""
        if "build" not in self._cache:
            built = None
            specs = self._specs()
            for i, spec in enumerate(specs):
                built = self._export_again(spec)
                if built is not None:
                    if i:
                        warnings.warn(f"otonas: the export of {type(self.model).__name__} with its sequence dims "
                                      f"free {_describe(specs[0])} differs from the analysed one; the built network "
                                      "takes the example's sequence length only", stacklevel=3)
                    break
            if built is None:
                if specs:
                    warnings.warn(f"otonas: the free-batch export of {type(self.model).__name__} differs from the "
                                  "analysed one; the built network takes the example's batch size only", stacklevel=3)
                built = self._export_again(None) or BuildProgram(
                    self.program, {n.name: n.name for n in self.program.graph.nodes}, False)
            self._cache["build"] = built
        return self._cache["build"]

    def _specs(self) -> list[Any]:
        """The dynamic-shape specs to try, most free first."""
        if self.dynamic_shapes is not None:
            return [self.dynamic_shapes]
        if not self.want_dynamic_batch:
            return []
        specs = []
        full, batch = (_fit_signature(self.model, _dynamic_spec(self.example_inputs, seq=s)) for s in (True, False))
        for spec in (full, batch):
            if spec not in specs and any(s for s in spec):
                specs.append(spec)
        return specs

    def _export_again(self, spec: Any) -> BuildProgram | None:
        device = next((t.device for t in itertools.chain(self.model.parameters(), self.model.buffers())), None)
        inputs = tuple(x.to(device) if isinstance(x, torch.Tensor) and device is not None else x
                       for x in self.example_inputs)  # the model may have moved since analysis (to CUDA, back)
        try:
            with _exporting(self.model), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ep = torch.export.export(self.model, inputs, strict=self.strict, dynamic_shapes=spec)
        except Exception as e:  # torch raises many kinds; all mean "not this way"
            if spec is not None and spec is self.dynamic_shapes:
                raise CaptureError(f"torch.export could not export {type(self.model).__name__} with the given "
                                   f"dynamic_shapes: {type(e).__name__}: {str(e).strip()[:400]}. Fix: mark only "
                                   "dims the model takes at any size (torch.export.Dim.AUTO lets torch decide).") from e
            return None
        source = match_nodes(self.program, ep)
        if source is None:
            return None
        free = _symbolic_dims(ep)
        return BuildProgram(ep, source, bool(free) and any(0 in f for f in free if f), free)


def _dynamic_spec(inputs: Sequence[Any], *, seq: bool) -> tuple[Any, ...]:
    """Dim 0 of every tensor input free; with ``seq`` also dim 1 of token ids (integer tensors
    of two or more dims: ``input_ids``, ``attention_mask``)."""
    auto = torch.export.Dim.AUTO

    def one(x: Any) -> Any:
        if not isinstance(x, torch.Tensor) or x.dim() == 0:
            return None
        if seq and x.dim() >= 2 and not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool:
            return {0: auto, 1: auto}
        return {0: auto}

    return tuple(one(x) for x in inputs)


def _fit_signature(model: nn.Module, spec: tuple[Any, ...]) -> tuple[Any, ...]:
    """``spec`` (one entry per positional input) nested the way torch.export matches it to the
    forward's signature: the inputs that land in a ``*args`` parameter form one tuple there (a
    wrapper such as peft's ``PeftModel.forward(*args, **kwargs)``)."""
    import inspect

    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return spec
    k = next((i for i, q in enumerate(params) if q.kind is q.VAR_POSITIONAL), None)
    if k is None or k > len(spec):
        return spec
    return (*spec[:k], tuple(spec[k:]))


def _describe(spec: Any) -> str:
    if isinstance(spec, (tuple, list)):
        return "(" + ", ".join(_describe(s) for s in spec) + ")"
    if isinstance(spec, dict):
        return "{" + ", ".join(str(k) for k in spec) + "}"
    return "-"


def _symbolic_dims(ep: torch.export.ExportedProgram) -> tuple[tuple[int, ...], ...]:
    from torch.export.graph_signature import InputKind

    user = {s.arg.name for s in ep.graph_signature.input_specs
            if s.kind == InputKind.USER_INPUT and hasattr(s.arg, "name")}
    out = []
    for n in ep.graph.nodes:
        if n.op == "placeholder" and n.name in user:
            val = n.meta.get("val")
            if isinstance(val, torch.Tensor):
                out.append(tuple(i for i, s in enumerate(val.shape) if isinstance(s, torch.SymInt)
                                 and not isinstance(s.node.maybe_as_int(), int)))
    return tuple(out)


def shorter_inputs(inputs: Sequence[Any], free_dims: Sequence[Sequence[int]]) -> tuple[Any, ...] | None:
    """``inputs`` cut shorter along every free dim but the batch (dim 0) — the first three
    quarters of a sequence, at least 2 — for checking a built network at another length than
    the example's; None when no such dim is free. Cutting keeps token ids valid and a mask
    consistent with its ids."""
    from torch.utils import _pytree as pytree

    leaves, spec = pytree.tree_flatten(tuple(inputs))
    dims = iter(free_dims)
    changed = False
    out = []
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            for d in next(dims, ()):
                if d > 0 and d < leaf.dim() and leaf.shape[d] > 2:
                    leaf = leaf.narrow(d, 0, max(2, leaf.shape[d] * 3 // 4))
                    changed = True
        out.append(leaf)
    return tuple(pytree.tree_unflatten(out, spec)) if changed else None


def _hf_configs(model: nn.Module) -> list[Any]:
    """The distinct HuggingFace configs ``model``'s modules hold, with their text / decoder /
    encoder sub-configs (an encoder-decoder's decoder holds a copy of its own)."""
    seen: dict[int, Any] = {}
    for m in model.modules():
        config = getattr(m, "config", None)
        if config is None or not hasattr(config, "to_dict"):
            continue
        for c in (config, *[getattr(config, k, None) for k in ("text_config", "decoder", "encoder")]):
            if c is not None and id(c) not in seen:
                seen[id(c)] = c
    return list(seen.values())


@contextlib.contextmanager
def _overriding(changes: list[tuple[Any, str, Any]]):
    """Set ``obj.name = value`` for each change while the block runs, then restore the old values."""
    old = [(obj, name, getattr(obj, name)) for obj, name, _ in changes]
    try:
        for obj, name, value in changes:
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in reversed(old):
            setattr(obj, name, value)


def without_cache(model: nn.Module) -> contextlib.AbstractContextManager[None]:
    """Run a HuggingFace model without its key/value cache (``use_cache`` off in every config its
    modules hold): the cache object it returns is no tensor torch.export can hold, and the search
    space does not need it."""
    return _overriding([(c, "use_cache", False) for c in _hf_configs(model) if getattr(c, "use_cache", None) is True])


#: the HuggingFace experts implementations torch.export captures and otonas has rules for
TRACEABLE_EXPERTS = ("grouped_mm", "batched_mm")


def traceable_experts(model: nn.Module) -> contextlib.AbstractContextManager[None]:
    """Run a HuggingFace mixture of experts with an experts implementation that torch.export
    can capture: ``grouped_mm`` (transformers' default) where the config asks for another one
    (``eager`` loops over the experts that tokens were routed to, a data-dependent loop). The
    implementations compute the same products; the setting is restored afterwards."""
    key = "_experts_implementation_internal"
    return _overriding([(c, key, "grouped_mm") for c in _hf_configs(model)
                        if hasattr(c, key) and getattr(c, key) not in TRACEABLE_EXPERTS])


@contextlib.contextmanager
def _exporting(model: nn.Module):
    """How both exports see the model: eval mode, no HF cache, traceable HF experts."""
    with _eval_mode(model), without_cache(model), traceable_experts(model):
        yield


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


@contextlib.contextmanager
def _no_stack_traces():
    """Record no source lines on the nodes: a tenth of the export time of ResNet-50."""
    config = torch.fx.config
    old = getattr(config, "do_not_emit_stack_traces", None)
    if old is None:  # a torch without the switch
        yield
        return
    config.do_not_emit_stack_traces = True
    try:
        yield
    finally:
        config.do_not_emit_stack_traces = old


def capture(
    model: nn.Module,
    example_inputs: Sequence[Any] | torch.Tensor,
    *,
    strict: bool | None = None,
    dynamic_batch: bool = True,
    dynamic_shapes: Any = None,
) -> Capture:
    """Export ``model`` (in eval mode) on ``example_inputs``, with static shapes and no
    stack traces.

    Non-strict export is tried first: it is torch's default, is faster and accepts
    more Python; strict (TorchDynamo) export is the fallback. ``strict=True/False``
    forces one. With ``dynamic_batch`` the builder later exports the model again with
    dim 0 of every tensor input symbolic, so the built network runs at any batch size, and
    the sequence dim of token-id inputs (see :meth:`Capture.build_program`); ``dynamic_shapes``
    (torch.export's own terms) chooses the free dims instead. A HuggingFace model is exported
    without its key/value cache (``config.use_cache`` off during the export), and a mixture of
    experts with a traceable experts implementation (:func:`traceable_experts`).
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    inputs = tuple(example_inputs)
    modes = [False, True] if strict is None else [bool(strict)]
    errors: list[str] = []
    printed = io.StringIO()  # a failing export prints its partial graph to stderr: kept for --debug
    with _exporting(model), _no_stack_traces(), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for use_strict in modes:
            try:
                with contextlib.redirect_stderr(printed):
                    ep = torch.export.export(model, inputs, strict=use_strict)
            except Exception as e:  # torch raises many kinds; all mean "did not export"
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                errors.append(f"{'strict' if use_strict else 'non-strict'}: {type(e).__name__}: {first[:300]}")
                last = e
                continue
            return Capture(ep, use_strict, inputs, model, dynamic_batch, dynamic_shapes)
    err = CaptureError(
        f"torch.export could not capture {type(model).__name__}: "
        + " | ".join(errors)
        + ". Fix: make forward traceable (no data-dependent Python control flow, no .item()), "
        "check that the example input shapes fit the model, or try strict=True/False explicitly."
    )
    err.details = printed.getvalue()
    raise err from last
