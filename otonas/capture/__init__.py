"""Capture a model with ``torch.export``."""

from ._export import BuildProgram, Capture, capture

__all__ = ["BuildProgram", "Capture", "capture"]
