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

__all__ = ["BuildProgram", "Capture", "capture"]


@dataclass(frozen=True)
class BuildProgram:
    """The export the builder copies, and for each of its tensor nodes the node of the
    analysed program that computes the same tensor."""

    program: torch.export.ExportedProgram
    source: dict[str, str]
    dynamic_batch: bool


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
    _cache: dict[str, BuildProgram] = field(default_factory=dict, repr=False, compare=False)

    @property
    def graph(self) -> torch.fx.Graph:
        return self.program.graph

    @property
    def dynamic_batch(self) -> bool:
        """Whether the built network runs at any batch size (exports the model once to find out)."""
        return self.build_program().dynamic_batch

    def build_program(self) -> BuildProgram:
        """The model exported again, with dim 0 of every tensor input free (``Dim.AUTO``),
        its nodes matched to ``program``'s. When the batch cannot be freed — a batch of 1 in
        the example (torch specialises it), a failed export, a graph that differs from the
        analysed one beyond no-ops — a static export: the built network then needs the
        example's batch size."""
        if "build" not in self._cache:
            free = self.want_dynamic_batch and any(
                isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] > 1 for x in self.example_inputs)
            built = self._export_again(dynamic=True) if free else None
            if built is None:
                built = self._export_again(dynamic=False) or BuildProgram(
                    self.program, {n.name: n.name for n in self.program.graph.nodes}, False)
            self._cache["build"] = built
        return self._cache["build"]

    def _export_again(self, *, dynamic: bool) -> BuildProgram | None:
        device = next((t.device for t in itertools.chain(self.model.parameters(), self.model.buffers())), None)
        inputs = tuple(x.to(device) if isinstance(x, torch.Tensor) and device is not None else x
                       for x in self.example_inputs)  # the model may have moved since analysis (to CUDA, back)
        try:
            with _eval_mode(self.model), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ep = torch.export.export(self.model, inputs, strict=self.strict,
                                         dynamic_shapes=_dynamic_spec(inputs) if dynamic else None)
        except Exception:  # torch raises many kinds; all mean "not this way"
            return None
        source = match_nodes(self.program, ep)
        if source is None:
            if dynamic:
                warnings.warn(f"otonas: the free-batch export of {type(self.model).__name__} differs from the "
                              "analysed one; the built network takes the example's batch size only", stacklevel=4)
            return None
        return BuildProgram(ep, source, dynamic)


def _dynamic_spec(inputs: Sequence[Any]) -> tuple[Any, ...]:
    auto = torch.export.Dim.AUTO
    return tuple({0: auto} if isinstance(x, torch.Tensor) and x.dim() > 0 else None for x in inputs)


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
) -> Capture:
    """Export ``model`` (in eval mode) on ``example_inputs``, with static shapes and no
    stack traces.

    Non-strict export is tried first: it is torch's default, is faster and accepts
    more Python; strict (TorchDynamo) export is the fallback. ``strict=True/False``
    forces one. With ``dynamic_batch`` the builder later exports the model again with
    dim 0 of every tensor input symbolic, so the built network runs at any batch size
    (see :meth:`Capture.build_program`).
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    inputs = tuple(example_inputs)
    modes = [False, True] if strict is None else [bool(strict)]
    errors: list[str] = []
    printed = io.StringIO()  # a failing export prints its partial graph to stderr: kept for --debug
    with _eval_mode(model), _no_stack_traces(), warnings.catch_warnings():
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
            return Capture(ep, use_strict, inputs, model, dynamic_batch)
    err = CaptureError(
        f"torch.export could not capture {type(model).__name__}: "
        + " | ".join(errors)
        + ". Fix: make forward traceable (no data-dependent Python control flow, no .item()), "
        "check that the example input shapes fit the model, or try strict=True/False explicitly."
    )
    err.details = printed.getvalue()
    raise err from last
