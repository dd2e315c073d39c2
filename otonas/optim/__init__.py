"""Optimizers that train a network and drive whole prunable groups to exactly zero.

``DHSPG`` (OTOv2) is a ``torch.optim.Optimizer`` built from a ``SearchSpace``; use it in an
ordinary training loop. ``H2SPG`` (OTOv3) does the same on two levels: it erases whole
operators (erasing groups), keeping the network valid, and prunes channels.
``RedundancyScore`` is the strategy that chooses which groups go.
"""

from __future__ import annotations

from ._dhspg import DHSPG, ForcedProjectionWarning
from ._h2spg import H2SPG, BudgetWarning, SkippedCandidate, select_erasure
from ._kernels import enabled as kernels_enabled
from ._schedule import period_bounds
from ._score import SCORES, CosineMagnitudeScore, GroupStats, RedundancyScore, make_score

__all__ = ["DHSPG", "H2SPG", "ForcedProjectionWarning", "BudgetWarning", "SkippedCandidate", "select_erasure",
           "RedundancyScore", "CosineMagnitudeScore", "GroupStats", "make_score", "SCORES", "period_bounds",
           "kernels_enabled"]
