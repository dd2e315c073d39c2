"""The one root exception of otonas and its few specialisations."""

from __future__ import annotations

__all__ = ["OtonasError", "CaptureError", "AnalysisError", "BuildError", "UsageError", "BusyError"]


class OtonasError(Exception):
    """Root of every error otonas raises on purpose: the message names the culprit and the fix."""


class CaptureError(OtonasError):
    """The model could not be captured with ``torch.export``."""


class AnalysisError(OtonasError):
    """The captured graph could not be analysed (a pass failed on a node)."""


class BuildError(OtonasError):
    """The smaller network could not be built from the search space."""


class UsageError(OtonasError):
    """Bad input from the user: a model string, a shape, an option."""


class BusyError(OtonasError):
    """A run folder is held by another process (its ``.lock`` names the holder)."""
