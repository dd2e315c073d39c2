"""Capture a model with ``torch.export``."""

from ._export import Capture, capture

__all__ = ["Capture", "capture"]
