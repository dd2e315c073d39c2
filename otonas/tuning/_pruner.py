"""The median pruner of ``otonas tune``: a trial is compared only with trials that remove at least as much."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import optuna

__all__ = ["BudgetAwareMedianPruner", "budget_params"]


def budget_params(params: Mapping[str, Any]) -> dict[str, float]:
    """The budgets among a trial's parameters (``sparsity``, ``sparsity:STAGE``, ``erase``, ``flops``, ``latency``)."""
    return {k: float(v) for k, v in params.items() if k in ("erase", "flops", "latency") or k.startswith("sparsity")}


def _removes_at_least(theirs: Mapping[str, float], mine: Mapping[str, float]) -> bool:
    """A higher sparsity or erase budget, a lower share of FLOPs kept: a cost no higher than mine."""
    return set(theirs) == set(mine) and all(
        (theirs[k] <= mine[k] + 1e-12) if k in ("flops", "latency") else (theirs[k] >= mine[k] - 1e-12) for k in mine)


class BudgetAwareMedianPruner(optuna.pruners.BasePruner):
    """Optuna's median rule, compared only against trials that remove at least as much.

    A trial is stopped at epoch ``e`` when its validation accuracy is below the median, at the
    same epoch, of the finished trials whose every budget is at least its own (so whose cost
    will be no higher). Plain median pruning would stop every high-sparsity trial for being
    less accurate than low-sparsity ones — exactly the cheap end of the Pareto front; this rule
    only stops trials that others already beat at no higher cost.

    Hand it to the study (``optuna.create_study(pruner=...)``); Optuna calls :meth:`prune`
    from ``trial.should_prune()``. It reads only the trial's parameters and intermediate
    values, so it also judges trials of multi-objective studies, which Optuna's own pruners
    (and ``Trial.should_prune``) refuse; ``otonas tune`` then calls it on the trial as stored."""

    def __init__(self, n_startup_trials: int = 3, n_warmup_steps: int = 1) -> None:
        self.n_startup_trials = n_startup_trials
        self.n_warmup_steps = n_warmup_steps

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps:
            return False
        value = trial.intermediate_values[step]
        mine = budget_params(trial.params)
        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        peers = [t.intermediate_values[step] for t in study.get_trials(deepcopy=False, states=finished)
                 if t.number != trial.number and step in t.intermediate_values
                 and _removes_at_least(budget_params(t.params), mine)]
        if len(peers) < self.n_startup_trials:
            return False
        return bool(value < float(np.median(peers)))
