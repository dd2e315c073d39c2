"""Optimizers that train a network and drive whole prunable groups to exactly zero.

``DHSPG`` (OTOv2) is a ``torch.optim.Optimizer`` built from a ``SearchSpace``; use it in an
ordinary training loop. ``H2SPG`` (OTOv3) does the same on two levels: it erases whole
operators (erasing groups), keeping the network valid, and prunes channels.
Both are one engine (phases, step, projection) with two strategies injected as objects: the
``RedundancyScore`` that rates the groups and the ``Selector`` that chooses which go
(``TopKSelector`` for DHSPG, ``ErasureSelector`` for H2SPG).
"""

from __future__ import annotations

from ._dhspg import DEFAULT_LMBDA, DHSPG, ForcedProjectionWarning
from ._h2spg import H2SPG, BudgetWarning, ErasureSelector, SkippedCandidate, select_erasure
from ._kernels import enabled as kernels_enabled
from ._schedule import period_bounds
from ._select import Selection, Selector, SelectorContext, TopKSelector
from ._score import (SCORES, CosineMagnitudeScore, GroupStats, MagnitudeScore, NormAffineScore, RedundancyScore,
                     TaylorScore, make_score)

__all__ = ["DHSPG", "H2SPG", "DEFAULT_LMBDA", "Selector", "TopKSelector", "ErasureSelector", "Selection", "SelectorContext",
           "ForcedProjectionWarning", "BudgetWarning", "SkippedCandidate", "select_erasure",
           "RedundancyScore", "CosineMagnitudeScore", "TaylorScore", "MagnitudeScore", "NormAffineScore", "GroupStats", "make_score", "SCORES", "period_bounds",
           "kernels_enabled"]
