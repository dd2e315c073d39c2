"""The budget space of ``otonas tune``: which budgets a trial draws, and from which ranges.

A budget file (``--space budgets.toml``)::

    sparsity = [0.1, 0.8]   # target group sparsity (channel pruning), low and high
    flops = [0.2, 0.9]      # or: the fraction of FLOPs to keep, low and high; trials then draw
                            # ``flops`` instead of ``sparsity`` (prune mode, per = "global") or
                            # instead of ``erase`` (erase mode: operators erased to that share)
    latency = [0.3, 0.9]    # or: the fraction of the dense latency to keep (likewise; trials draw
                            # ``latency``, estimated from the cached latency table)
    erase = [0.0, 0.7]      # erase budget (share of erasing groups), low and high
    per = "global"          # "global": one sparsity; "stage": one sparsity per stage
    step = 0.05             # optional: draw on a grid of this step

    [stages]                # optional, with per = "stage": a range per stage
    "stages.0" = [0.0, 0.5]

A *stage* is where a prunable group's first parameter lives: the module path down to the
first child of a container (``stages.0`` in ``stages.0.1.conv1.weight``, ``layer2`` in
torchvision's ``layer2.0.conv1.weight``); see :func:`group_stages`.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError
from ..analysis import group_stages, stage_of

__all__ = ["BudgetSpace", "group_stages", "stage_of"]

_KEYS = {"sparsity", "erase", "per", "step", "stages", "flops", "latency"}


def _range(value: Any, what: str, source: str) -> tuple[float, float]:
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise UsageError(f"{source}: {what} must be [low, high], e.g. [0.1, 0.8]; got {value!r}")
    lo, hi = float(value[0]), float(value[1])
    if not (0.0 <= lo <= hi < 1.0):
        raise UsageError(f"{source}: {what} = [{lo}, {hi}] must satisfy 0 <= low <= high < 1")
    return lo, hi


@dataclass
class BudgetSpace:
    """Ranges the budgets of a trial are drawn from (see the module docstring)."""

    sparsity: tuple[float, float] = (0.1, 0.8)
    erase: tuple[float, float] = (0.0, 0.7)
    per: str = "global"
    step: float | None = None
    stages: dict[str, tuple[float, float]] = field(default_factory=dict)
    flops: tuple[float, float] | None = None  # fraction of FLOPs kept; replaces ``sparsity`` when set
    latency: tuple[float, float] | None = None  # fraction of the dense latency kept (likewise)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "budget space") -> BudgetSpace:
        unknown = set(raw) - _KEYS
        if unknown:
            raise UsageError(f"{source}: unknown key {sorted(unknown)[0]!r}; known: {', '.join(sorted(_KEYS))}")
        out = cls()
        if "sparsity" in raw:
            out.sparsity = _range(raw["sparsity"], "sparsity", source)
        if "erase" in raw:
            out.erase = _range(raw["erase"], "erase", source)
        if "per" in raw:
            if raw["per"] not in ("global", "stage"):
                raise UsageError(f"{source}: per = {raw['per']!r} must be \"global\" or \"stage\"")
            out.per = raw["per"]
        if "step" in raw:
            step = raw["step"]
            if not isinstance(step, (int, float)) or isinstance(step, bool) or not 0 < step < 1:
                raise UsageError(f"{source}: step = {step!r} must be a number in (0, 1), e.g. 0.05")
            out.step = float(step)
        for key, what in (("flops", "FLOPs"), ("latency", "dense latency")):
            if key not in raw:
                continue
            value = raw[key]
            if (not isinstance(value, (list, tuple)) or len(value) != 2
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
                raise UsageError(f"{source}: {key} must be [low, high], the fraction of {what} to keep, e.g. "
                                 f"[0.2, 0.9]; got {value!r}")
            lo, hi = float(value[0]), float(value[1])
            if not 0.0 < lo <= hi <= 1.0:
                raise UsageError(f"{source}: {key} = [{lo}, {hi}] must satisfy 0 < low <= high <= 1")
            setattr(out, key, (lo, hi))
        if out.flops is not None and out.latency is not None:
            raise UsageError(f"{source}: give a flops range or a latency range, not both")
        if "stages" in raw:
            if not isinstance(raw["stages"], Mapping):
                raise UsageError(f"{source}: [stages] must be a table of stage = [low, high]")
            out.stages = {str(k): _range(v, f"stages.{k!r}", source) for k, v in raw["stages"].items()}
            if out.stages and out.per != "stage":
                raise UsageError(f"{source}: [stages] ranges need per = \"stage\"")
        if (out.flops is not None or out.latency is not None) and out.per != "global":
            raise UsageError(f"{source}: flops and latency ranges are global; use per = \"global\" (or sparsity ranges per stage)")
        return out

    @classmethod
    def load(cls, path: str) -> BudgetSpace:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            raise UsageError(f"--space {path!r} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise UsageError(f"--space {path!r} is not valid TOML: {e}") from None
        return cls.from_dict(raw, f"--space {path!r}")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"sparsity": list(self.sparsity), "erase": list(self.erase), "per": self.per}
        if self.step is not None:
            d["step"] = self.step
        if self.stages:
            d["stages"] = {k: list(v) for k, v in self.stages.items()}
        if self.flops is not None:
            d["flops"] = list(self.flops)
        if self.latency is not None:
            d["latency"] = list(self.latency)
        return d

    def check_stages(self, stages: Mapping[str, Any]) -> None:
        missing = sorted(set(self.stages) - set(stages))
        if missing:
            raise UsageError(f"the budget space names stage {missing[0]!r}, which the model does not have; "
                             f"its stages are: {', '.join(stages)}")

    def _suggest(self, trial: Any, name: str, rng: tuple[float, float], limit: float = 1.0) -> float:
        lo, hi = rng
        hi = min(hi, limit)
        lo = min(lo, hi)
        if self.step is not None:
            n = int(math.floor((hi - lo) / self.step + 1e-9))
            if n >= 1:
                return float(trial.suggest_float(name, lo, lo + n * self.step, step=self.step))
        return float(trial.suggest_float(name, lo, hi))

    def suggest(self, trial: Any, *, prune: bool, erase: bool, stages: Mapping[str, Any],
                limits: Mapping[str, float] | None = None) -> tuple[float | dict[str, float], float]:
        """Draw a trial's budgets: (target sparsity — a float, or stage -> float with
        ``per = "stage"`` — and the erase budget). Parameter names: ``sparsity``,
        ``sparsity:STAGE``, ``flops`` (with a flops range: the fraction of FLOPs to keep; the
        returned sparsity is then unused), ``latency`` (likewise) and ``erase``. ``limits`` caps the sparsity ranges (``"*"``: the
        global one, else per stage): the most the optimizer can remove while every family
        keeps a channel."""
        limits = limits or {}
        sparsity: float | dict[str, float] = 0.0
        if prune and self.flops is not None:
            sparsity = 0.0  # the trial's ``flops`` parameter is its budget (see ``tuning._run``)
            self._suggest(trial, "flops", self.flops)
        elif prune and self.latency is not None:
            sparsity = 0.0  # likewise the trial's ``latency`` parameter
            self._suggest(trial, "latency", self.latency)
        elif prune:
            if self.per == "stage":
                sparsity = {s: self._suggest(trial, f"sparsity:{s}", self.stages.get(s, self.sparsity),
                                             limits.get(s, 1.0)) for s in stages}
            else:
                sparsity = self._suggest(trial, "sparsity", self.sparsity, limits.get("*", 1.0))
        if erase and not prune and self.flops is not None:  # erase mode: operators erased to the FLOPs drawn
            self._suggest(trial, "flops", self.flops)
            return sparsity, 0.0
        budget = self._suggest(trial, "erase", self.erase) if erase else 0.0
        return sparsity, budget
