"""``otonas tune``: Optuna-searched budgets, multi-objective, resumable, shared across machines."""

from ._budgets import BudgetSpace
from ._pruner import BudgetAwareMedianPruner
from ._run import OBJECTIVES, TuneConfig, export_best, format_front, pareto_front, tune

__all__ = ["TuneConfig", "tune", "export_best", "pareto_front", "format_front", "BudgetSpace",
           "BudgetAwareMedianPruner", "OBJECTIVES"]
