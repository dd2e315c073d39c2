"""Every error and warning class otonas raises, in one public module.

``OtonasError`` is the base of the errors; the CLI turns ``UsageError`` and
``UserCodeError`` (and OS errors) into one-line messages with exit status 2.
"""

from __future__ import annotations

from ._errors import (AnalysisError, BudgetWarning, BuildError, BusyError, CaptureError, ExportError,
                      ForcedProjectionWarning, OtonasError, UsageError, UserCodeError)

__all__ = ["OtonasError", "CaptureError", "AnalysisError", "BuildError", "ExportError", "UsageError", "BusyError",
           "UserCodeError", "ForcedProjectionWarning", "BudgetWarning"]
