"""Optimizers that train a network and drive whole prunable groups to exactly zero.

``DHSPG`` (OTOv2) is a ``torch.optim.Optimizer`` built from a ``SearchSpace``; use it in an
ordinary training loop. ``RedundancyScore`` is the strategy that chooses which groups go.
"""

from __future__ import annotations

from ._dhspg import DHSPG, ForcedProjectionWarning
from ._score import CosineMagnitudeScore, GroupStats, RedundancyScore

__all__ = ["DHSPG", "ForcedProjectionWarning", "RedundancyScore", "CosineMagnitudeScore", "GroupStats"]
