"""H2SPG (OTOv3): DHSPG over two levels — whole operators and channels — with a selection
that keeps the network connected.

The optimizer sees one group layout with N + E groups: the N prunable groups (channel
slices, as in DHSPG) followed by the E erasing groups, erasing group e being group N + e and
covering every parameter of its operator whole (one entry along dim 0 per parameter; a
parameter of a nested operator carries one such entry per enclosing group). All DHSPG
machinery — segment sums, the λ step, the half-space projection, the masks that keep zero
groups at zero — then runs unchanged over both levels.

What differs is how G_r is chosen:

* warm-up (step < ``warmup_steps``): the base step; at every step each group's redundancy
  score is computed (separately normalized per level) and folded into an exponential moving
  average, so that the choice rests on the whole warm-up rather than on one noisy step;
* at ``warmup_steps``, once: erasing groups are walked from most to least redundant (by the
  average) and accepted while erasing all accepted ones keeps the network valid
  (``space.check_erasure``), until ``round(erase_budget·E)`` are accepted; then the
  ``round(target_group_sparsity·N)`` most redundant prunable groups outside the accepted
  operators join them (:func:`select_erasure`, :meth:`H2SPG._select_pruning`).

With the progressive schedule (the default) the selection happens at each period start instead,
to the period's share of the budget; with ``target_flops`` / ``target_params`` that budget is a
share of the supernet's cost, reached by the fewest operators of the walk (``docs/optim.md``).

Host-device synchronisation: as DHSPG, plus the selection reads the averaged scores back
once (and, under ``torch.distributed``, broadcasts them from rank 0 first, so that all ranks
walk the same order and take the same decisions).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import BudgetWarning, OtonasError
from ..logging import get_logger
from ._dhspg import DEFAULT_LMBDA, DHSPG, space_over
from ._layout import SearchSpaceLike
from ._schedule import Alignment, align_quota, align_up, cell_alignment, count_in_cells, select_in_cells, split_quota
from ._score import GroupStats, RedundancyScore
from ._select import Selection, Selector, SelectorContext, _caller_level, _cells, _count, family_ids

__all__ = ["H2SPG", "ErasureSelector", "BudgetWarning", "SkippedCandidate", "select_erasure", "ErasureSpaceLike"]

logger = get_logger("otonas.optim")


class SkippedCandidate(NamedTuple):
    """An erasing group the selection passed over, and why."""

    index: int  # type: ignore[assignment]  # the field's name (public) shadows tuple.index
    reason: str


class _ErasingGroupLike(Protocol):
    @property
    def index(self) -> int: ...

    @property
    def params(self) -> tuple[str, ...]: ...

    @property
    def parent(self) -> int | None: ...


class ErasureSpaceLike(Protocol):
    """What H2SPG reads from a search space (``otonas.SearchSpace`` has it). Optional, read
    when present: ``group_family`` (keep a channel per family), ``hierarchy`` and ``families``
    (which prunable groups live inside an erasing group), ``erasure_walk`` (the erasure walk's
    checks made incremental; without it each candidate costs a ``check_erasure`` call)."""

    @property
    def model(self) -> nn.Module: ...

    @property
    def num_prunable_groups(self) -> int: ...

    def group_layout(self) -> Mapping[str, Sequence[tuple[int, Tensor]]]: ...

    @property
    def erasing_groups(self) -> Sequence[_ErasingGroupLike]: ...

    def check_erasure(self, erased: Any) -> str | None: ...


def select_erasure(space: ErasureSpaceLike, scores: Sequence[float], budget: int,
                   first: Sequence[int] = ()) -> tuple[list[int], list[SkippedCandidate]]:
    """The greedy, validity-checked choice of erasing groups.

    Walks the groups by decreasing score (ties: lower index first; NaN ranks last) and accepts
    a group unless

    * an accepted group encloses it (erasing the outer one already erases it), or it encloses
      an accepted group (accepting it would re-erase that one);
    * with it, every parameter of an enclosing group would lie in accepted groups (that is
      erasing the enclosing group whole, which is a candidate of its own); or
    * erasing it together with every group accepted so far leaves an invalid network
      (``space.check_erasure`` gives the reason);

    and stops once ``budget`` groups are accepted. So each accepted group is a distinct
    erasure, and the accepted set is exactly what ``SearchSpace.erasable`` finds once their
    parameters are zero. ``first`` (an earlier walk's accepted groups, in their order) is walked
    before the rest, whatever the scores: walked in the same order, a set accepted before is
    accepted again. Returns the accepted indices in the order accepted and the skipped
    candidates with their reasons (groups after the stop are neither).
    """
    groups = space.erasing_groups
    head = list(dict.fromkeys(int(i) for i in first))
    rest = set(head)
    order = head + sorted((i for i in range(len(groups)) if i not in rest), key=lambda i: (-_key(scores[i]), i))
    accepted: list[int] = []
    skipped: list[SkippedCandidate] = []
    taken: set[int] = set()
    covered: dict[int, int] = {}  # every ancestor of an accepted group → that group
    zeroed: set[str] = set()  # the parameters of the accepted groups
    make_walk = getattr(space, "erasure_walk", None)
    walk = make_walk() if callable(make_walk) else None  # judges as check_erasure, at a fraction of the cost
    for i in order:
        if len(accepted) >= budget:
            break
        outer = _accepted_ancestor(groups, i, taken)
        if outer is not None:
            skipped.append(SkippedCandidate(i, f"inside the accepted erasing group {_name(groups, outer)}"))
            continue
        if i in covered:
            skipped.append(SkippedCandidate(i, f"encloses the accepted erasing group {_name(groups, covered[i])}"))
            continue
        whole = _emptied_ancestor(groups, i, zeroed | set(groups[i].params))
        if whole is not None:
            skipped.append(SkippedCandidate(
                i, f"with it, every parameter of the enclosing group {_name(groups, whole)} would be in accepted "
                   "groups: that erases the enclosing group whole, a candidate of its own"))
            continue
        reason = walk.check(i) if walk is not None else space.check_erasure(sorted(accepted + [i]))
        if reason is not None:
            skipped.append(SkippedCandidate(i, f"erasing it with the {len(accepted)} accepted groups: {reason}"))
            continue
        if walk is not None:
            walk.accept(i)
        accepted.append(i)
        taken.add(i)
        zeroed.update(groups[i].params)
        p = groups[i].parent
        while p is not None:
            covered.setdefault(p, i)
            p = groups[p].parent
    return accepted, skipped


def _budget_warning(msg: str) -> None:
    """A budget the selection cannot fill: a ``BudgetWarning`` at the user's step (the CLI shows it
    as ``otonas: warning: …``) and an INFO log line for applications that read the log only."""
    logger.info(msg)
    warnings.warn(msg, BudgetWarning, stacklevel=_caller_level())


def _key(score: float) -> float:
    return -math.inf if math.isnan(score) else score


def _accepted_ancestor(groups: Sequence[_ErasingGroupLike], i: int, taken: set[int]) -> int | None:
    p = groups[i].parent
    while p is not None:
        if p in taken:
            return p
        p = groups[p].parent
    return None


def _emptied_ancestor(groups: Sequence[_ErasingGroupLike], i: int, zeroed: set[str]) -> int | None:
    p = groups[i].parent
    while p is not None:
        if zeroed.issuperset(groups[p].params):
            return p
        p = groups[p].parent
    return None


def _name(groups: Sequence[Any], i: int) -> str:
    module = getattr(groups[i], "module", "")
    return f"{i} ({module})" if module else str(i)


class _TwoLevelSpace:
    """The layout DHSPG's machinery runs on: prunable groups [0, N), erasing groups [N, N + E)."""

    def __init__(self, space: ErasureSpaceLike) -> None:
        self.model = space.model
        n = int(space.num_prunable_groups)
        groups = list(space.erasing_groups)
        named = dict(space.model.named_parameters(remove_duplicate=False))
        layout: dict[str, list[tuple[int, Tensor]]] = {k: list(v) for k, v in space.group_layout().items()}
        for pos, g in enumerate(groups):
            if int(g.index) != pos:
                raise OtonasError(f"erasing group at position {pos} has index {g.index}; space.erasing_groups "
                                  "must be listed by index: re-run otonas.analyze")
            if not g.params:
                raise OtonasError(f"erasing group {_name(groups, pos)} has no parameters; H2SPG erases an operator "
                                  "by zeroing its parameters: re-run otonas.analyze")
            for fqn in g.params:
                p = named.get(fqn)
                if p is None:
                    raise OtonasError(f"erasing group {_name(groups, pos)} names the parameter {fqn!r}, which "
                                      "space.model does not have; run otonas.analyze on this model")
                if p.dim() == 0:
                    raise OtonasError(f"erasing group {_name(groups, pos)} holds the 0-dim parameter {fqn!r}; "
                                      "H2SPG needs parameters with a leading dim: make it shape (1,)")
                layout.setdefault(fqn, []).append((0, torch.full((p.shape[0],), n + pos, dtype=torch.int64)))
        self.num_prunable_groups = n + len(groups)
        self._layout = layout

    def group_layout(self) -> dict[str, list[tuple[int, Tensor]]]:
        return self._layout


class _EntryGroups(NamedTuple):
    """Per entry of a space's ``group_layout()``: its parameter and its slices' prunable groups."""

    params: list[int]  # the parameter's id, per entry
    ids: np.ndarray  # the groups of every entry's slices (those in a group), concatenated
    counts: np.ndarray  # how many of them each entry has


class ErasureSelector(Selector):
    """H2SPG's selection, connected-hierarchical: whole operators first, then channels outside them.

    The engine steps over N + E groups (:meth:`layout`: the N prunable groups, then one group per
    erasing group covering its operator's parameters whole). At every warm-up step each group's
    redundancy score is computed (each level normalized on its own: an operator and a channel are
    not alike) and folded into an exponential moving average (decay ``ema``). At a selection point
    the erasing groups are walked from most to least redundant by :func:`select_erasure` (accepted
    while erasing all accepted ones keeps the network valid) up to ``round(erase_budget·E)`` — or,
    with ``target_flops`` / ``target_params``, the fewest of the walk that keep at most that share
    of the supernet's cost — then ``round(target_group_sparsity·N)`` prunable groups outside the
    accepted operators are chosen (per family with the progressive schedule, with a family keeping
    a channel under ``keep_one_per_family``; ``round_to``: kept channels in multiples of it).
    """

    observes_warmup = True
    state_key = "h2spg"

    def __init__(self, *, erase_budget: float | None = None, target_group_sparsity: float = 0.0,
                 target_flops: float | None = None, target_params: float | None = None, ema: float = 0.9,
                 keep_one_per_family: bool = True, round_to: int = 1) -> None:
        costs = [(k, v) for k, v in (("flops", target_flops), ("params", target_params)) if v is not None]
        if len(costs) > 1:
            raise OtonasError("H2SPG: give target_flops or target_params, not both")
        self._cost_target: tuple[str, float] | None = (costs[0][0], float(costs[0][1])) if costs else None
        if self._cost_target is not None:
            metric, t = self._cost_target
            if not 0.0 < t <= 1.0:
                raise OtonasError(f"H2SPG: target_{metric}={t!r} is invalid; expected the fraction of the supernet's "
                                  f"{metric} to keep, in (0, 1]")
            if erase_budget is not None:
                raise OtonasError(f"H2SPG: give erase_budget (a share of the erasing groups) or target_{metric} (a "
                                  f"share of the {metric} to keep, reached by erasing operators), not both")
            if float(target_group_sparsity) > 0.0:
                raise OtonasError(f"H2SPG: target_{metric} is spent on erasing operators only; with channel pruning "
                                  "too (target_group_sparsity > 0) give erase_budget instead")
        erase_budget = 0.5 if erase_budget is None and self._cost_target is None else erase_budget
        if isinstance(target_group_sparsity, Mapping):
            raise OtonasError("H2SPG: per-stage target_group_sparsity is not supported yet; pass one fraction, "
                              "or prune channels only with DHSPG, which takes per-stage targets")
        if erase_budget is not None and not 0.0 <= erase_budget <= 1.0:
            raise OtonasError(f"H2SPG: erase_budget={erase_budget!r} is invalid; expected a fraction in [0, 1]")
        if not 0.0 <= target_group_sparsity <= 1.0:
            raise OtonasError(f"H2SPG: target_group_sparsity={target_group_sparsity!r} is invalid; "
                              "expected a fraction in [0, 1]")
        if not 0.0 <= ema < 1.0:
            raise OtonasError(f"H2SPG: ema={ema!r} is invalid; expected a decay in [0, 1) (0: the last score only)")
        if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
            raise OtonasError(f"H2SPG: round_to={round_to!r} is invalid; expected an int >= 1")
        self._given_sparsity = target_group_sparsity
        self.target_group_sparsity = float(target_group_sparsity)
        self.erase_budget = float(erase_budget) if erase_budget is not None else None
        self.ema = float(ema)
        self.target_flops, self.target_params = target_flops, target_params
        self.keep_one_per_family = bool(keep_one_per_family)
        self.round_to = int(round_to)

    def layout(self, space: SearchSpaceLike) -> SearchSpaceLike:
        if not hasattr(space, "erasing_groups") or not hasattr(space, "check_erasure"):
            raise OtonasError("H2SPG needs a search space with erasing groups (space.erasing_groups and "
                              "space.check_erasure): pass the SearchSpace from otonas.analyze, or use DHSPG")
        return _TwoLevelSpace(space)  # type: ignore[arg-type]  # checked just above

    def bind(self, context: SelectorContext) -> None:
        super().bind(context)
        space: Any = context.space
        if self._cost_target is not None:
            metric = self._cost_target[0]
            if context.schedule != "progressive":
                raise OtonasError(f"H2SPG: target_{metric} needs schedule='progressive' (it is reached period by "
                                  "period)")
            if not hasattr(space, "costs"):
                raise OtonasError(f"H2SPG: target_{metric} needs a search space with a cost model (space.costs): "
                                  "pass the SearchSpace from otonas.analyze")
        if self.round_to > 1 and context.schedule != "progressive":
            raise OtonasError("H2SPG: round_to needs schedule='progressive' (the half-space mode picks channels "
                              "across families)")
        self._space: ErasureSpaceLike = space
        self._slices: tuple[dict[str, Tensor], _EntryGroups] | None = None  # see _slice_groups
        self.num_pruning_groups = n = int(space.num_prunable_groups)
        self.num_erasing_groups = e = len(space.erasing_groups)
        self.target_pruned_groups = _count(n, self.target_group_sparsity)
        # with a cost target: the count the walk needs, known at each period start (0 before)
        self.target_erased_groups = _count(e, self.erase_budget) if self.erase_budget is not None else 0
        self.target_zero_groups = 0  # the accepted and selected groups so far
        self._pfamily = family_ids(space, n, self.target_pruned_groups, self._given_sparsity,
                                   self.keep_one_per_family, context.device)
        self._pcells, _ = _cells(space, n, None, self.keep_one_per_family)
        self._keep_one = bool(self.keep_one_per_family and self._pfamily is not None)
        self._palign = cell_alignment(space, self._pcells, self.round_to) if self.round_to > 1 else None
        self._reset()

    def _reset(self) -> None:
        self._ema: Tensor | None = None  # float64 [N + E]: averaged scores, prunable then erasing
        self.accepted: list[int] = []  # the accepted erasing groups, in the order the walk took them
        self.skipped: list[SkippedCandidate] = []
        self.moot = np.zeros(self.num_pruning_groups, dtype=bool)
        self.pruned: list[int] = []  # the selected prunable groups
        self._dense_cost: float | None = None  # with a cost target: the supernet's, counted once
        self.erased_kept_fraction: float | None = None  # with a cost target: what the final erasure keeps

    @property
    def scores(self) -> Tensor | None:
        """The averaged redundancy scores ``[N + E]``, prunable groups then erasing (None before the first step)."""
        return self._ema

    # ------------------------------------------------------------------ warm-up and selection
    def observe(self, stats: GroupStats) -> None:
        n, total = self.num_pruning_groups, self.context.num_groups
        scores = []
        for lo, hi, family in ((0, n, self._pfamily), (n, total, None)):
            if hi > lo:  # each level normalized on its own: an operator and a channel are not alike
                scores.append(self.context.score(GroupStats(
                    dot=stats.dot[lo:hi], x_sq=stats.x_sq[lo:hi], d_sq=stats.d_sq[lo:hi], x_abs=stats.x_abs[lo:hi],
                    size=stats.size[lo:hi], family=family,
                    norm_sq=None if stats.norm_sq is None else stats.norm_sq[lo:hi],
                    norm_size=None if stats.norm_size is None else stats.norm_size[lo:hi])).to(torch.float64))
        score = torch.cat(scores) if scores else torch.zeros(0, dtype=torch.float64, device=stats.dot.device)
        beta = self.ema
        if self._ema is None or beta == 0:
            self._ema = score
        else:  # β > 0 and 1 − β > 0: an infinite score stays infinite, never NaN
            self._ema = self._ema * beta + score * (1 - beta)

    def select(self, selection: Selection) -> list[int]:
        """Fold this step's scores in, then choose: both levels at once (half-space schedule) or the
        period's share of each budget (progressive)."""
        self.observe(selection.stats)
        assert self._ema is not None
        self._ema = self.context.broadcast(self._ema)  # every rank walks rank 0's order
        if not selection.progressive:
            return self._partition()
        return self._select_period(selection.zero, selection.period, selection.periods)

    def _partition(self) -> list[int]:
        """At ``warmup_steps``: both levels of G_r."""
        assert self._ema is not None
        n = self.num_pruning_groups
        ema = self._ema.cpu().numpy()  # one host read, once
        accepted, skipped = select_erasure(self._space, ema[n:].tolist(), self.target_erased_groups)
        for s in skipped:
            logger.debug("H2SPG skipped erasing group %s: %s", _name(self._space.erasing_groups, s.index), s.reason)
        if len(accepted) < self.target_erased_groups:
            self._warn_budget(len(accepted), len(skipped))
        self.accepted, self.skipped = accepted, skipped
        self.moot = self._moot_groups(accepted)
        self.pruned = self._select_pruning(ema[:n], self.moot)
        self.target_zero_groups = len(self.pruned) + len(accepted)
        return self.pruned + [n + i for i in accepted]

    def _select_period(self, zero_all: np.ndarray, p: int, periods: int) -> list[int]:
        """Progressive schedule, at the start of period ``p``: extend the accepted erasing groups (the
        earlier ones first, then the walk of :func:`select_erasure`) to the period's share of the
        erasure budget; then, within each family, select prunable groups outside the erased
        operators up to the family's share of the pruning budget."""
        assert self._ema is not None
        n = self.num_pruning_groups
        ema = self._ema.cpu().numpy()
        previous = list(self.accepted)
        last = p == periods - 1
        if self._cost_target is not None:
            budget = self._cost_budget(ema[n:].tolist(), previous, p, periods)
        else:
            budget = self.target_erased_groups * (p + 1) // periods
        # zero already, they stay accepted: walked first, in the order they were accepted (a group
        # scored +inf elsewhere, e.g. one whose parameters are all zero, must not come before them)
        accepted, skipped = select_erasure(self._space, ema[n:].tolist(), max(budget, len(previous)), first=previous)
        lost = set(previous) - set(accepted)
        if lost:  # cannot happen for a valid earlier set; never let a zero operator go unaccounted
            raise OtonasError(f"H2SPG: the erasing groups {sorted(lost)} accepted in an earlier period were not "
                              "accepted again; please report this")
        new_ops = [i for i in accepted if i not in set(previous)]
        if self._cost_target is not None:
            self.target_erased_groups = len(accepted)
            if last:
                self._warn_cost(accepted, len(skipped))
        elif last and len(accepted) < self.target_erased_groups:
            self._warn_budget(len(accepted), len(skipped))
        self.accepted, self.skipped = accepted, skipped
        self.moot = self._moot_groups(accepted)
        zero = zero_all[:n]
        live = ~self.moot
        sizes = count_in_cells(self._pcells, live).tolist()
        caps = [max(0, k - 1) if self._keep_one else k for k in sizes]
        quota = split_quota(self.target_pruned_groups, sizes, caps)
        if last and sum(quota) < self.target_pruned_groups:
            msg = (f"H2SPG: target_group_sparsity={self.target_group_sparsity} asks for "
                   f"{self.target_pruned_groups} zero prunable groups, but only {sum(caps)} are left outside the "
                   f"erased operators ({int(self.moot.sum())} live inside them) after keeping a channel per family; "
                   "zeroing those")
            _budget_warning(msg)
        if self._palign is not None:  # kept channels in steps of round_to, on the live groups
            al = Alignment(self.round_to, sizes, self._palign.pinned, self._palign.blocks)
            quota = [align_quota(al, i, q, caps[i]) for i, q in enumerate(quota)]
        have = count_in_cells(self._pcells, zero & live).tolist()  # (one mask, one count over the cells)
        if self._palign is not None and last:  # an earlier period took more than the final aligned quota
            quota = [q if q >= h else align_up(al, i, h, caps[i]) for i, (q, h) in enumerate(zip(quota, have))]
        want = [q * (p + 1) // periods for q in quota]
        new_groups = select_in_cells(ema[:n], live & ~zero, self._pcells, want, have)
        self.pruned = sorted(set(self.pruned) | set(new_groups))
        self.target_zero_groups = len(self.pruned) + len(accepted)
        return new_groups + [n + i for i in new_ops]

    def _cost(self, accepted: Sequence[int]) -> float:
        """The fraction of the supernet's FLOPs (or parameters) left with ``accepted`` erased."""
        assert self._cost_target is not None
        metric = self._cost_target[0]
        space: Any = self._space
        if self._dense_cost is None:
            self._dense_cost = float(getattr(space.costs(), metric))
        mask = np.zeros(self.num_erasing_groups, dtype=bool)
        mask[list(accepted)] = True
        return float(getattr(space.costs(erased=mask), metric)) / max(self._dense_cost, 1.0)

    def _cost_budget(self, scores: list[float], previous: list[int], p: int, periods: int) -> int:
        """With a cost target: how many erasing groups period ``p`` accepts — the fewest of the
        walk's order (the earlier periods' groups first) that keep at most the period's share
        ``1 − (1 − target)·(p + 1)/P`` of the cost. Each prefix of the walk is a valid erasure and
        erasing more never costs more, so the count is bisected on ``space.costs``."""
        assert self._cost_target is not None
        goal = 1.0 - (1.0 - self._cost_target[1]) * (p + 1) / periods
        order, _ = select_erasure(self._space, scores, self.num_erasing_groups, first=previous)
        lo, hi = len(previous), len(order)  # cost(order[:hi]) is the least the walk can reach
        if self._cost(order[:lo]) <= goal + 1e-12:
            return lo
        if self._cost(order[:hi]) > goal + 1e-12:
            return hi
        while hi - lo > 1:  # cost(order[:lo]) > goal >= cost(order[:hi])
            mid = (lo + hi) // 2
            if self._cost(order[:mid]) <= goal + 1e-12:
                hi = mid
            else:
                lo = mid
        return hi

    def _warn_cost(self, accepted: Sequence[int], skipped: int) -> None:
        """The last period's walk could not bring the cost down to the target: say so."""
        assert self._cost_target is not None
        metric, t = self._cost_target
        kept = self._cost(accepted)
        self.erased_kept_fraction = kept
        if kept > t + 1e-12:
            _budget_warning(f"H2SPG: target_{metric}={t} cannot be reached by erasing operators: erasing every "
                            f"operator the walk could take together ({len(accepted)} of {self.num_erasing_groups}; "
                            f"{skipped} skipped, see opt.skipped) keeps {kept:.3f} of the {metric}; erasing those")

    def _warn_budget(self, accepted: int, skipped: int) -> None:
        """The erasure walk found fewer valid erasing groups than the budget asks: say so."""
        msg = (f"H2SPG: erase_budget={self.erase_budget} asks for {self.target_erased_groups} "
               f"of the {self.num_erasing_groups} erasing groups, but the walk found only {accepted} that can be "
               f"erased together ({skipped} skipped: nested in an accepted one, or erasing them breaks the "
               "network; see opt.skipped); erasing those")
        _budget_warning(msg)

    def _moot_groups(self, accepted: Sequence[int]) -> np.ndarray:
        """Prunable groups inside the accepted erasing groups: those of the families under them in
        ``space.hierarchy``, and any group whose every slice lies in their parameters."""
        n = self.num_pruning_groups
        moot = np.zeros(n, dtype=bool)
        if not accepted or not n:
            return moot
        space = self._space
        tree, families = getattr(space, "hierarchy", None), getattr(space, "families", None)
        if tree is not None and families is not None:
            todo = [f"E{i}" for i in accepted]
            while todo:
                node = todo.pop()
                for child in tree.successors(node):
                    if str(child).startswith("F"):
                        moot[list(families[int(str(child)[1:])].groups)] = True
                    todo.append(child)
        named, slices = self._slice_groups()
        erased = {id(named[f]) for i in accepted for f in space.erasing_groups[i].params}
        outside = np.zeros(n, dtype=bool)
        # every entry's groups at once: those of the entries whose parameter is not erased
        kept = np.fromiter((pid not in erased for pid in slices.params), dtype=bool, count=len(slices.params))
        outside[slices.ids[np.repeat(kept, slices.counts)]] = True
        return moot | ~outside

    def _slice_groups(self) -> tuple[dict[str, Tensor], _EntryGroups]:
        """The model's parameters by name, and per entry of ``space.group_layout()`` its parameter
        (by id) and the prunable groups of its slices (:class:`_EntryGroups`); read once (every period
        start asks)."""
        if self._slices is None:
            space = self._space
            named: dict[str, Tensor] = dict(space.model.named_parameters(remove_duplicate=False))
            params: list[int] = []
            ids: list[np.ndarray] = []
            for name, entries in space.group_layout().items():
                for _, index in entries:
                    got = index.detach().cpu().numpy().reshape(-1)
                    params.append(id(named[name]))
                    ids.append(got[got >= 0].astype(np.int64))
            counts = np.array([len(i) for i in ids], dtype=np.int64)
            cat = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
            self._slices = (named, _EntryGroups(params, cat, counts))
        assert self._slices is not None
        return self._slices

    def _select_pruning(self, score: np.ndarray, moot: np.ndarray) -> list[int]:
        """The K most redundant prunable groups outside the erased operators; with families, the
        least redundant remaining group of each family is never taken."""
        k = self.target_pruned_groups
        if k == 0:
            return []
        score = np.where(np.isnan(score), -np.inf, score)
        eligible = ~moot
        if self._pfamily is not None:
            family = self._pfamily.cpu().numpy()
            for f in np.unique(family[eligible]):
                members = np.nonzero(eligible & (family == f))[0]
                eligible[members[np.argmin(score[members])]] = False  # argmin: the first of equal minima
        cand = np.nonzero(eligible)[0]
        cand = cand[np.argsort(-score[cand], kind="stable")]
        if len(cand) < k:
            msg = (f"H2SPG: target_group_sparsity={self.target_group_sparsity} asks for {k} zero "
                   f"prunable groups, but only {len(cand)} are left outside the erased operators "
                   f"({int(moot.sum())} live inside them) after keeping a channel per family; zeroing those")
            _budget_warning(msg)
        return sorted(int(g) for g in cand[:k])

    # ------------------------------------------------------------------ reporting and checkpoints
    def moot_groups(self) -> np.ndarray:
        return self.moot

    def forced_message(self, rest: Tensor) -> str:
        n = self.num_pruning_groups
        ops, chans = int(rest[n:].sum()), int(rest[:n].sum())
        return (f"{ops} of the {len(self.accepted)} accepted erasing groups and {chans} of the "
                f"{len(self.pruned)} selected prunable groups")

    def metrics(self, zero: Tensor, projected: Tensor) -> dict[str, Any]:
        """The erasure's numbers; ``target_zero_groups`` is the prunable groups' target."""
        n = self.num_pruning_groups
        return dict(
            target_zero_groups=self.target_pruned_groups,
            num_moot_groups=int(self.moot.sum()),
            num_erasing_groups=self.num_erasing_groups,
            erase_budget=self.erase_budget,
            target_erased_groups=self.target_erased_groups,
            target_flops=self.target_flops,
            target_params=self.target_params,
            num_accepted_erasing_groups=len(self.accepted),
            num_skipped_erasing_groups=len(self.skipped),
            num_projected_erasing_groups=int(projected[n:].sum()),
            erased_groups=int(zero[n:][self.accepted].sum()) if self.accepted else 0,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "ema": None if self._ema is None else self._ema.clone(),
            "accepted": list(self.accepted),
            "skipped": [(s.index, s.reason) for s in self.skipped],
            "pruned": list(self.pruned),
            "moot": torch.from_numpy(self.moot.copy()),
            "num_pruning_groups": self.num_pruning_groups,
            "num_erasing_groups": self.num_erasing_groups,
        }

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is None:
            raise OtonasError("this state dict has no 'h2spg' entry: it was not saved by H2SPG.state_dict()")
        shape = (state["num_pruning_groups"], state["num_erasing_groups"])
        if shape != (self.num_pruning_groups, self.num_erasing_groups):
            raise OtonasError(f"the state dict is for {shape[0]} prunable and {shape[1]} erasing groups but this "
                              f"optimizer has {self.num_pruning_groups} and {self.num_erasing_groups}; load it into "
                              "an optimizer built on the same search space")
        self._reset()
        self._ema = None if state["ema"] is None else state["ema"].to(self.context.device, torch.float64)
        self.accepted = [int(i) for i in state["accepted"]]
        self.skipped = [SkippedCandidate(int(i), str(r)) for i, r in state["skipped"]]
        self.pruned = [int(i) for i in state["pruned"]]
        self.moot = state["moot"].cpu().numpy().astype(bool).copy()
        if self._cost_target is not None:
            self.target_erased_groups = len(self.accepted)
        self.target_zero_groups = len(self.pruned) + len(self.accepted)


class H2SPG(DHSPG):
    """Hierarchical Half-Space Projected Gradient: erases whole operators and prunes channels,
    keeping the network valid.

    ``space`` is the ``SearchSpace`` from ``otonas.analyze`` (with its erasing groups); use it
    like any optimizer::

        opt = H2SPG(space, lr=0.1, erase_budget=0.5, target_group_sparsity=0.2,
                    warmup_steps=1000, end_step=3000)
        for x, y in loader:
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
        subnet = otonas.build(space)

    After ``end_step`` steps exactly ``round(erase_budget · E)`` erasing groups (fewer, with a
    :class:`BudgetWarning`, if the network has no more valid ones) have all their parameters
    at zero, none of them nested in another and together a valid erasure, and exactly
    ``round(target_group_sparsity · N)`` prunable groups outside them are zero. See
    ``docs/optim.md``.
    """

    def __init__(
        self,
        space: ErasureSpaceLike,
        *,
        lr: float,
        warmup_steps: int,
        variant: str = "sgd",
        target_group_sparsity: float = 0.0,
        erase_budget: float | None = None,
        end_step: int | None = None,
        momentum: float = 0.9,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        lmbda: float = DEFAULT_LMBDA,
        lmbda_amplify: float = 1.1,
        hat_lmbda_coeff: float = 10.0,
        epsilon: float = 0.0,
        lambda_rule: str = "schedule",
        lambda_gain: float = 1.5,
        ema: float = 0.9,
        score: RedundancyScore | None = None,
        keep_one_per_family: bool = True,
        process_group: Any = None,
        schedule: str = "progressive",
        periods: int = 5,
        round_to: int = 1,
        target_flops: float | None = None,
        target_params: float | None = None,
        model: nn.Module | None = None,
    ) -> None:
        if model is not None:
            space = space_over(space, model, owner=type(self).__name__)
        selector = ErasureSelector(erase_budget=erase_budget, target_group_sparsity=target_group_sparsity,
                                   target_flops=target_flops, target_params=target_params, ema=ema,
                                   keep_one_per_family=keep_one_per_family, round_to=round_to)
        self._erasure = selector
        super().__init__(space, lr=lr, warmup_steps=warmup_steps, end_step=end_step, variant=variant,
                         momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=weight_decay,
                         betas=betas, eps=eps, lmbda=lmbda, lmbda_amplify=lmbda_amplify,
                         hat_lmbda_coeff=hat_lmbda_coeff, epsilon=epsilon, lambda_rule=lambda_rule,
                         lambda_gain=lambda_gain, score=score, selector=selector, process_group=process_group,
                         schedule=schedule, periods=periods)
        for store in (self.param_groups[0], self.defaults):
            store.update(target_group_sparsity=selector.target_group_sparsity, erase_budget=selector.erase_budget,
                         ema=selector.ema, target_flops=target_flops, target_params=target_params,
                         round_to=selector.round_to)

    @property
    def num_pruning_groups(self) -> int:
        """N, the prunable groups (the first N of the optimizer's ``num_groups``)."""
        return self._erasure.num_pruning_groups

    @property
    def num_erasing_groups(self) -> int:
        """E, the erasing groups (groups N … N + E − 1 of the optimizer's ``num_groups``)."""
        return self._erasure.num_erasing_groups

    @property
    def target_pruned_groups(self) -> int:
        """``round(target_group_sparsity · N)``."""
        return self._erasure.target_pruned_groups

    @property
    def target_erased_groups(self) -> int:
        """``round(erase_budget · E)``; with a cost target, the walk's count at the last period start."""
        return self._erasure.target_erased_groups

    @property
    def erased_kept_fraction(self) -> float | None:
        """With a cost target: the fraction of the cost the final erasure keeps (None before the last period)."""
        return self._erasure.erased_kept_fraction

    @property
    def skipped(self) -> list[SkippedCandidate]:
        """Erasing groups the selection passed over, as ``(group index, reason)``, in walk order."""
        return list(self._erasure.skipped)

    @property
    def accepted(self) -> list[int]:
        """The accepted erasing groups, in the order the selection took them (empty before it)."""
        return list(self._erasure.accepted)

    @property
    def pruned(self) -> list[int]:
        """The prunable groups the selection chose so far (ids in ``[0, N)``, in the order taken);
        some may since lie inside an operator accepted later (``moot_groups``)."""
        return list(self._erasure.pruned)

    @property
    def pruning_scores(self) -> Tensor | None:
        """The averaged redundancy score of each prunable group ``[N]`` (None before the first step)."""
        ema = self._erasure.scores
        return None if ema is None else ema[: self.num_pruning_groups].clone()

    @property
    def erasing_scores(self) -> Tensor | None:
        """The averaged redundancy score of each erasing group ``[E]`` (None before the first step)."""
        ema = self._erasure.scores
        return None if ema is None else ema[self.num_pruning_groups:].clone()

    @property
    def moot_groups(self) -> np.ndarray:
        """Bool mask ``[N]``: prunable groups that live inside an accepted erasing group (they go
        with it, so they are neither selected nor counted in the sparsity)."""
        return self._erasure.moot.copy()

    def erased_mask(self) -> np.ndarray:
        """Bool mask ``[E]`` of the accepted erasing groups (all False before the selection)."""
        mask = np.zeros(self.num_erasing_groups, dtype=bool)
        mask[self._erasure.accepted] = True
        return mask

    def zero_erasing_groups(self) -> Tensor:
        """Bool mask ``[E]``: the erasing groups whose every parameter is exactly zero now
        (an accepted group's nested groups included)."""
        return self._group_abs()[self.num_pruning_groups: self.num_groups] == 0
