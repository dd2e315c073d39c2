"""Capture: ``torch.export`` a model into an ATen graph with parameter roles."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._errors import CaptureError

__all__ = ["Capture", "capture"]


@dataclass(frozen=True)
class Capture:
    """What ``torch.export`` gave us, plus how it was obtained."""

    program: torch.export.ExportedProgram
    strict: bool
    dynamic_batch: bool
    example_inputs: tuple[Any, ...]

    @property
    def graph(self) -> torch.fx.Graph:
        return self.program.graph


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


def capture(
    model: nn.Module,
    example_inputs: Sequence[Any] | torch.Tensor,
    *,
    strict: bool | None = None,
    dynamic_batch: bool = True,
) -> Capture:
    """Export ``model`` (in eval mode) on ``example_inputs``.

    Non-strict export is tried first: it is torch's default, is faster and accepts
    more Python; strict (TorchDynamo) export is the fallback. ``strict=True/False``
    forces one. With ``dynamic_batch`` dim 0 of every tensor input is left symbolic
    (``Dim.AUTO``) so the built network runs at any batch size; if that fails the
    model is exported with static shapes.
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    inputs = tuple(example_inputs)
    modes = [False, True] if strict is None else [bool(strict)]
    dyn_modes = [True, False] if dynamic_batch else [False]
    errors: list[str] = []
    with _eval_mode(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for use_strict in modes:
            for dyn in dyn_modes:
                try:
                    ep = torch.export.export(
                        model,
                        inputs,
                        strict=use_strict,
                        dynamic_shapes=_dynamic_spec(inputs) if dyn else None,
                    )
                except Exception as e:  # torch raises many kinds; all mean "did not export"
                    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    errors.append(f"{'strict' if use_strict else 'non-strict'}"
                                  f"{', dynamic batch' if dyn else ''}: {type(e).__name__}: {first[:300]}")
                    last = e
                    continue
                return Capture(ep, use_strict, dyn, inputs)
    raise CaptureError(
        f"torch.export could not capture {type(model).__name__}: "
        + " | ".join(errors)
        + ". Fix: make forward traceable (no data-dependent Python control flow, no .item()), "
        "check that the example input shapes fit the model, or try strict=True/False explicitly."
    ) from last
