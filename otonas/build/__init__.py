"""Build the smaller network from a SearchSpace and the current parameter values."""

from ._builder import BuildContext, build

__all__ = ["build", "BuildContext"]
