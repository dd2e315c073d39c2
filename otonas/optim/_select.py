"""What the optimizers remove: the selection strategy, injected into the engine as an object.

The engine (:class:`otonas.optim.DHSPG`) owns the phases, the step, the projection and the
bookkeeping; a :class:`Selector` owns the budget and the choice of the groups to drive to zero
— as an Optuna study owns the trials and its sampler and pruner the decisions. Two ship:

* :class:`TopKSelector` (DHSPG's default): the most redundant groups, per family (a *cell*, or
  a family within a stage) up to its quota, quotas from a share of the groups or of the FLOPs,
  parameters or latency to keep (``_schedule``);
* :class:`otonas.optim.ErasureSelector` (H2SPG's): whole operators by a connectivity-checked
  walk, then channels outside them (``_h2spg``).

A selector sees only per-group statistics and which groups are zero already; it never touches
parameters. Everything it decides must follow from values that are equal on every rank of a
distributed run (the statistics it is handed are; scores it keeps across steps should be
passed through ``context.broadcast`` before they decide anything).
"""

from __future__ import annotations

import abc
import dataclasses
import math
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import BudgetWarning, OtonasError
from ._layout import SearchSpaceLike
from ._schedule import align_quota, cell_alignment, cost_quotas, count_in_cells, select_in_cells, split_quota
from ._score import GroupStats, RedundancyScore

__all__ = ["Selector", "SelectorContext", "Selection", "TopKSelector"]


@dataclass(frozen=True, eq=False)
class SelectorContext:
    """What the engine tells its selector once, in :meth:`Selector.bind`."""

    space: SearchSpaceLike  # the search space the optimizer was built from (not the selector's layout)
    num_groups: int  # groups of the engine's layout (``Selector.layout``): statistics and choices index these
    device: torch.device  # where the statistics live
    score: RedundancyScore  # the optimizer's ``score=``
    schedule: str  # "progressive" or "half_space"
    periods: int  # the progressive schedule's number of periods
    broadcast: Callable[[Tensor], Tensor]  # rank 0's tensor on every rank (the tensor itself outside torch.distributed)


@dataclass(frozen=True, eq=False)
class Selection:
    """What the engine hands :meth:`Selector.select` at a selection point."""

    stats: GroupStats  # this step's statistics of every layout group (``family`` None: the selector's own)
    zero: np.ndarray  # bool [num_groups]: the groups already projected to zero (they stay zero)
    period: int  # the progressive schedule's period starting now (0 with the half-space schedule)
    periods: int  # how many periods (1 with the half-space schedule)
    progressive: bool  # False: the half-space schedule's one choice of G_r, at warmup_steps


class Selector(abc.ABC):
    """Chooses the groups the optimizer drives to zero.

    The engine calls, in this order:

    * :meth:`layout` once, with the search space: the groups the engine steps over (the
      space's own by default; a selector may add groups *after* the space's N prunable ones, as
      :class:`~otonas.optim.ErasureSelector` adds one per erasing group);
    * :meth:`bind` once, from the optimizer's constructor, with a :class:`SelectorContext`;
    * :meth:`observe` at every warm-up step, when :attr:`observes_warmup` is true;
    * :meth:`select` at each selection point — once at ``warmup_steps`` with the half-space
      schedule, at every period start with the progressive one — returning the groups to add
      to the projected set (layout ids; with the progressive schedule they are shrunk to exactly
      zero by the end of the period, with the half-space one projected by the end of the window).

    Reporting and checkpoints: :meth:`moot_groups`, :meth:`metrics`, :meth:`forced_message`,
    :meth:`state_dict` / :meth:`load_state_dict` (stored under :attr:`state_key`); the defaults
    suit a selector with no state of its own. :attr:`target_zero_groups` is how many groups the
    selection aims at (its running value, where it is known only as the selection goes).
    """

    observes_warmup: bool = False
    """Whether :meth:`observe` is called at every warm-up step (it costs a statistics pass each)."""

    state_key: str = "selector"
    """The key of :meth:`state_dict`'s entry in the optimizer's state dict."""

    target_zero_groups: int = 0

    @property
    def needs_direction(self) -> bool:
        """Whether :meth:`select` reads the step direction's statistics (``GroupStats.dot`` and
        ``.d_sq``). False lets the progressive schedule select before a period start's step and
        take that step in its one-pass form; a selector that reads only its score's inputs says
        what the score needs (:attr:`RedundancyScore.needs_direction`)."""
        return True

    @property
    def reads_normalized_weights(self) -> bool:
        """Whether :meth:`select`, at a progressive period start without directions, reads the weights
        of groups that have normalization slices (:attr:`RedundancyScore.reads_normalized_weights`);
        False lets the optimizer sum only the other groups' weights and the normalization slices."""
        return True

    def layout(self, space: SearchSpaceLike) -> SearchSpaceLike:
        """The groups the engine steps over: ``space`` itself unless a selector adds groups."""
        return space

    def bind(self, context: SelectorContext) -> None:
        """Called once by the optimizer's constructor; budgets that need the space are set here."""
        self.context = context

    def observe(self, stats: GroupStats) -> None:
        """Called at every warm-up step (with :attr:`observes_warmup`), with that step's statistics."""

    @abc.abstractmethod
    def select(self, selection: Selection) -> Sequence[int]:
        """The groups (layout ids, not zero yet) to add to the projected set now."""

    def moot_groups(self) -> np.ndarray | None:
        """Bool ``[N]``: prunable groups that go with something else (an erased operator) and so are
        not counted in the sparsity; None: none."""
        return None

    def metrics(self, zero: Tensor, projected: Tensor) -> dict[str, Any]:
        """Numbers to add to (or override in) ``optimizer.metrics()``; ``zero``: bool ``[num_groups]``,
        the layout groups exactly zero now; ``projected``: those the engine has projected."""
        return {}

    def forced_message(self, rest: Tensor) -> str:
        """What the forced-projection warning says was forced (``rest``: bool ``[num_groups + 1]``)."""
        return f"{int(rest.sum())} of the {self.target_zero_groups} redundant groups"

    def state_dict(self) -> dict[str, Any] | None:
        """The selector's run state (None: it has none), saved under :attr:`state_key`."""
        return None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`state_dict`'s value (None when the state dict has no entry under
        :attr:`state_key`). Called before the engine restores its own state."""

def _count(n: int, target: float) -> int:
    """K = round(N·target), halves rounding up (N·0.5 of an odd N rounds up)."""
    return min(n, int(math.floor(n * target + 0.5 + 1e-9)))


def family_ids(space: Any, n: int, target_count: int, target: float, keep_one_per_family: bool,
               device: torch.device) -> Tensor | None:
    """The family id of each of ``n`` prunable groups when one group per family is kept (else
    None), checked against the number of groups the target asks to zero."""
    family = getattr(space, "group_family", None)
    if family is None or not keep_one_per_family or not n:
        return None
    ids = torch.as_tensor(list(family), dtype=torch.int64, device=device)
    if ids.numel() != n:
        raise OtonasError(f"space.group_family has {ids.numel()} entries for {n} prunable "
                          "groups; expected one family id per group")
    spare = n - int(torch.unique(ids).numel())
    if target_count > spare:
        raise OtonasError(
            f"target_group_sparsity={target} asks for {target_count} zero groups, "
            f"but keeping one group in each family leaves only {spare} removable; lower the target "
            f"to at most {spare / n:.3f} or pass keep_one_per_family=False")
    return ids


def stage_quotas(space: Any, n: int, targets: Mapping[str, float], keep_one_per_family: bool,
                 device: torch.device) -> tuple[Tensor, list[int]]:
    """Per-stage targets -> (stage id of each of the ``n`` prunable groups, groups to zero per
    stage). Stages are ``otonas.analysis.group_stages``; ``"*"`` sets the target of every stage
    not named; other stages keep all their groups. With one group kept per family, a stage may
    give at most its groups minus the families it touches."""
    from ..analysis import group_stages

    stages = group_stages(space)
    unknown = sorted(set(targets) - set(stages) - {"*"})
    if unknown:
        raise OtonasError(f"target_group_sparsity names stage {unknown[0]!r}, which the model does not have; "
                          f"its stages: {', '.join(stages)}")
    family = getattr(space, "group_family", None)
    ids = torch.full((n,), -1, dtype=torch.int64)
    quota: list[int] = []
    for b, (name, members) in enumerate(stages.items()):
        t = float(targets.get(name, targets.get("*", 0.0)))
        if not 0.0 <= t <= 1.0:
            raise OtonasError(f"target_group_sparsity[{name!r}]={t!r} is invalid; expected a fraction in [0, 1]")
        k = _count(len(members), t)
        if keep_one_per_family and family is not None and k:
            spare = len(members) - len({int(family[g]) for g in members})
            if k > spare:
                raise OtonasError(
                    f"target_group_sparsity[{name!r}]={t} asks for {k} of the stage's {len(members)} groups, but "
                    f"keeping one group in each family leaves {spare}; lower it to at most "
                    f"{spare / len(members):.3f}")
        ids[list(members)] = b
        quota.append(k)
    return ids.to(device), quota


def _cells(space: Any, n: int, stage: Tensor | None, keep_one_per_family: bool) -> tuple[list[np.ndarray], list[int]]:
    """The cells the progressive schedule and cost budgets select within — a family, or a family
    within a stage when per-stage targets are given (one cell of all groups when the space gives
    no families) — and the most groups each may give (all but one with ``keep_one_per_family``)."""
    family = getattr(space, "group_family", None)
    fam = (np.asarray(list(family), dtype=np.int64) if family is not None and len(family) == n
           else np.zeros(n, dtype=np.int64))
    st = stage.cpu().numpy().astype(np.int64) if stage is not None else np.zeros(n, dtype=np.int64)
    key = st * (int(fam.max(initial=0)) + 1) + fam
    cells = [np.nonzero(key == k)[0] for k in np.unique(key)]
    if stage is not None:
        cells = [c for c in cells if st[c[0]] >= 0]  # groups in no stage stay
    one = 1 if keep_one_per_family and family is not None else 0
    return cells, [max(0, len(c) - one) for c in cells]


def _stage_split(cells: Sequence[np.ndarray], caps: Sequence[int], stage: Tensor, quota: Sequence[int]) -> list[int]:
    """Each stage's quota spread over its cells in proportion to their sizes."""
    st = stage.cpu().numpy()
    out = [0] * len(cells)
    for b, k in enumerate(quota):
        mine = [i for i, c in enumerate(cells) if st[c[0]] == b]
        for i, q in zip(mine, split_quota(k, [len(cells[i]) for i in mine], [caps[i] for i in mine])):
            out[i] = q
    return out


def _caller_level() -> int:
    """The ``stacklevel`` that points a warning at the user's ``opt.step()`` line."""
    skip = (os.path.dirname(os.path.dirname(__file__)), os.path.dirname(torch.__file__))
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(skip):
        frame, level = frame.f_back, level + 1
    return level

def _scores(score: RedundancyScore, stats: GroupStats, family: Tensor | None) -> Tensor:
    """``score`` of ``stats`` as float64, with ``family`` given to it."""
    return score(dataclasses.replace(stats, family=family)).to(torch.float64)


class TopKSelector(Selector):
    """DHSPG's selection: the most redundant groups, within families, up to a budget.

    Give one budget: ``target_group_sparsity`` (a fraction of the prunable groups to zero, or a
    mapping of stage names — ``otonas.analysis.group_stages``, ``"*"`` for the rest — to
    fractions), ``target_flops`` / ``target_params`` / ``target_latency`` (the fraction of the
    FLOPs, parameters or estimated latency to keep; ``latency_model`` the estimate, an
    ``otonas.latency.LatencyModel`` by default). With the progressive schedule, a cost budget or
    ``round_to`` > 1, each *cell* (a family, or a family within a stage) gets its quota and period
    p selects its most redundant groups up to ``quota·(p + 1)/P``; otherwise the K most redundant
    groups overall (per stage with stage targets). ``keep_one_per_family``: a family never gives
    its last group. ``round_to``: every family keeps a multiple of ``round_to`` channels (or all).
    """

    def __init__(self, *, target_group_sparsity: float | Mapping[str, float] | None = None,
                 target_flops: float | None = None, target_params: float | None = None,
                 target_latency: float | None = None, latency_model: Any = None,
                 keep_one_per_family: bool = True, round_to: int = 1) -> None:
        if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
            raise OtonasError(f"DHSPG: round_to={round_to!r} is invalid; expected an int >= 1 (every family keeps a "
                              "multiple of round_to channels, or all of them)")
        budgets = [k for k, v in (("target_group_sparsity", target_group_sparsity), ("target_flops", target_flops),
                                  ("target_params", target_params),
                                  ("target_latency", target_latency)) if v is not None]
        if len(budgets) != 1:
            raise OtonasError("DHSPG: give exactly one budget: target_group_sparsity (share of the prunable groups "
                              "to zero), target_flops, target_params or target_latency (share of the FLOPs, parameters or "
                              "estimated latency to keep)"
                              + (f"; got {' and '.join(budgets)}" if budgets else ""))
        if target_group_sparsity is None:
            target_group_sparsity = 0.0  # the quotas come from the cost budget
        self.stage_targets: dict[str, float] | None
        if isinstance(target_group_sparsity, Mapping):
            self.stage_targets, self.target = dict(target_group_sparsity), 0.0  # checked per stage by stage_quotas
        else:
            self.stage_targets, self.target = None, float(target_group_sparsity)
            if not 0.0 <= self.target <= 1.0:
                raise OtonasError(f"DHSPG: target_group_sparsity={self.target!r} is invalid; expected a fraction in "
                                  "[0, 1]")
        if latency_model is not None and target_latency is None:
            raise OtonasError("DHSPG: latency_model is used by target_latency only; give target_latency too")
        self.target_flops, self.target_params, self.target_latency = target_flops, target_params, target_latency
        self.latency_model: Any = latency_model  # with target_latency: the estimate the quotas were bisected on
        self.keep_one_per_family = bool(keep_one_per_family)
        self.round_to = int(round_to)
        self.kept_fraction: float | None = None  # of the FLOPs / parameters / latency, with a cost budget
        # Cells (a family, or a family within a stage) and their quotas: the progressive schedule
        # and cost budgets select within cells, never across them.
        self.cells: list[np.ndarray] | None = None
        self.quotas: list[int] = []

    @property
    def target_group_sparsity(self) -> float | dict[str, float]:
        """The target as given (0.0 with a cost budget)."""
        return self.stage_targets if self.stage_targets is not None else self.target

    def bind(self, context: SelectorContext) -> None:
        super().bind(context)
        space, n, device = context.space, context.num_groups, context.device
        keep_one = self.keep_one_per_family
        self._stage: Tensor | None = None
        self._stage_quota: list[int] = []
        if self.stage_targets is not None:
            self._stage, self._stage_quota = stage_quotas(space, n, self.stage_targets, keep_one, device)
            self.target_zero_groups = sum(self._stage_quota)
        else:
            self.target_zero_groups = _count(n, self.target)
        cost_metric, cost_target = (("flops", self.target_flops) if self.target_flops is not None else
                                    ("params", self.target_params) if self.target_params is not None else
                                    ("latency", self.target_latency) if self.target_latency is not None
                                    else (None, None))
        if self.target_latency is not None:
            if self.latency_model is None:
                from ..latency import LatencyModel

                self.latency_model = LatencyModel(space)  # batch 1 on the CPU, torch's thread count; cached
            if not callable(getattr(self.latency_model, "seconds", None)):
                raise OtonasError("DHSPG: latency_model must have a seconds(removed) method (an "
                                  "otonas.latency.LatencyModel); got " + type(self.latency_model).__name__)
        if cost_metric is None:
            self._family = family_ids(space, n, self.target_zero_groups,
                                      self.target_zero_groups / max(n, 1) if self.stage_targets is not None
                                      else self.target, keep_one, device)
        else:
            self._family = family_ids(space, n, 0, 0.0, keep_one, device)
        round_to = self.round_to
        if context.schedule == "progressive" or cost_metric is not None or round_to > 1:
            self.cells, caps = _cells(space, n, self._stage, keep_one)
            align = cell_alignment(space, self.cells, round_to) if round_to > 1 else None
            if cost_metric is not None:
                assert cost_target is not None
                self.quotas, self.kept_fraction = cost_quotas(
                    space, self.cells, caps, target=float(cost_target), metric=cost_metric, align=align,
                    cost=self.latency_model.seconds if cost_metric == "latency" else None)
                if align is not None and self.kept_fraction < float(cost_target) - 0.01:
                    msg = (f"DHSPG: with round_to={round_to} the closest the quotas come to target_{cost_metric}="
                           f"{cost_target} is {self.kept_fraction:.3f} (more than 1% under); the families are "
                           f"too narrow for steps of {round_to} channels: lower round_to")
                    warnings.warn(msg, BudgetWarning, stacklevel=_caller_level())
            else:
                if self._stage is not None:
                    self.quotas = _stage_split(self.cells, caps, self._stage, self._stage_quota)
                else:
                    self.quotas = split_quota(self.target_zero_groups, [len(c) for c in self.cells], caps)
                if align is not None:  # the fraction is then met only as closely as whole steps allow
                    self.quotas = [align_quota(align, i, q, caps[i]) for i, q in enumerate(self.quotas)]
            self.target_zero_groups = int(sum(self.quotas))

    @property
    def needs_direction(self) -> bool:  # the score is all it reads
        return bool(getattr(self.context.score, "needs_direction", True))

    @property
    def reads_normalized_weights(self) -> bool:
        return bool(getattr(self.context.score, "reads_normalized_weights", True))

    def select(self, selection: Selection) -> Sequence[int]:
        if selection.progressive:
            return self._select_period(selection)
        return self._partition(selection.stats)

    def _select_period(self, sel: Selection) -> list[int]:
        """At the start of period p: re-score (rank 0's scores), and in every cell select its most
        redundant groups not yet zero, up to the cell's cumulative quota."""
        assert self.cells is not None
        score = self.context.broadcast(_scores(self.context.score, sel.stats, self._family)).cpu().numpy()
        zero = sel.zero
        have = count_in_cells(self.cells, zero)
        want = [q * (sel.period + 1) // sel.periods for q in self.quotas]
        return select_in_cells(score, ~zero, self.cells, want, have)

    def _partition(self, stats: GroupStats) -> list[int]:
        """G_r at once: the K most redundant groups (each cell its quota, or each stage)."""
        n, k = self.context.num_groups, self.target_zero_groups
        score = _scores(self.context.score, stats, self._family)
        if self._family is not None:
            # The least redundant group of every family is never chosen: a family keeps a channel.
            fam_min = torch.full((int(self._family.max()) + 1,), torch.inf, dtype=score.dtype,
                                 device=score.device).scatter_reduce(0, self._family, score, "amin")
            is_min = score == fam_min[self._family]
            pos = torch.arange(n, device=score.device)
            first = torch.full_like(fam_min, n, dtype=torch.int64).scatter_reduce(
                0, self._family, torch.where(is_min, pos, n), "amin")
            score = torch.where(first[self._family] == pos, -torch.inf, score)
        if self.cells is not None:  # a cost budget or round_to: each cell gives exactly its quota
            return select_in_cells(score.cpu().numpy(), np.ones(n, dtype=bool), self.cells, self.quotas,
                                   [0] * len(self.cells))
        order = torch.sort(score, descending=True, stable=True).indices
        if self._stage is None:
            return order[:k].tolist()
        stage = self._stage[order]  # per-stage targets: the most redundant groups of each stage, up to its quota
        out: list[int] = []
        for b, quota in enumerate(self._stage_quota):
            if quota:
                out.extend(order[stage == b][:quota].tolist())
        return out
