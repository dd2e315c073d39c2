"""The one root exception of otonas and its few specialisations."""

from __future__ import annotations

__all__ = ["OtonasError", "CaptureError", "AnalysisError", "BuildError", "ExportError", "UsageError", "BusyError",
           "UserCodeError", "ForcedProjectionWarning", "BudgetWarning"]


class OtonasError(Exception):
    """Root of every error otonas raises on purpose: the message names the culprit and the fix."""


class CaptureError(OtonasError):
    """The model could not be captured with ``torch.export``. ``details`` holds what torch printed
    while failing (the partial graph it traced), which ``otonas --debug`` shows."""

    details: str = ""


class AnalysisError(OtonasError):
    """The captured graph could not be analysed (a pass failed on a node)."""


class BuildError(OtonasError):
    """The smaller network could not be built from the search space."""


class UsageError(OtonasError):
    """Bad input from the user: a model string, a shape, an option."""


class BusyError(OtonasError):
    """A run folder is held by another process (its ``.lock`` names the holder)."""


class UserCodeError(OtonasError):
    """The user's own code raised: importing the MODEL's module or calling its constructor. The
    message names the MODEL and the exception; the original is chained (``--debug`` shows it)."""


class ExportError(OtonasError):
    """The network could not be written as ``model.py`` + ``model.safetensors``, or an export could not be loaded."""


class ForcedProjectionWarning(UserWarning):
    """Some redundant groups had not reached zero by ``end_step`` and were set to zero at once."""


class BudgetWarning(UserWarning):
    """The selection found fewer valid erasing groups (or prunable groups) than the budget asks,
    or a cost budget could not be met within 1% (e.g. with ``round_to``)."""
