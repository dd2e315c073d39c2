"""The OpGraph: the captured model as a networkx DiGraph of ATen ops."""

from ._opgraph import build_opgraph

__all__ = ["build_opgraph"]
