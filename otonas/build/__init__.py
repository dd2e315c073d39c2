"""Build the smaller network from a SearchSpace and the current parameter values."""

from ._builder import BuildContext, build
from ._fold import fold_batchnorm
from ._inplace import Resizer, register_resizer

__all__ = ["build", "BuildContext", "Resizer", "register_resizer", "fold_batchnorm"]
