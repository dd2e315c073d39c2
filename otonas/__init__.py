"""otonas: train once, prune channels and erase operators, export a smaller network."""

from __future__ import annotations

__version__ = "0.1.0"

from ._errors import AnalysisError, BuildError, BusyError, CaptureError, OtonasError, UsageError, UserCodeError
from .analysis import Plan, SearchSpace, analyze
from .build import build
from ._verify import VerifyReport, verify
from .optim import DHSPG
from .export import ExportError, ExportResult, export
from .export import load
from .tuning import TuneConfig, tune
from ._torchvision import prepare_torchvision

__all__ = ["__version__", "analyze", "build", "verify", "DHSPG", "export", "load", "ExportResult", "ExportError", "VerifyReport", "SearchSpace", "Plan", "OtonasError", "CaptureError", "AnalysisError", "BuildError",
           "UsageError", "BusyError", "UserCodeError", "tune", "TuneConfig",
           "prepare_torchvision"]
