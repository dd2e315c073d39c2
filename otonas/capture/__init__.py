"""Capture a model with ``torch.export``."""

from ._export import BuildProgram, Capture, capture, shorter_inputs, without_cache

__all__ = ["BuildProgram", "Capture", "capture", "shorter_inputs", "without_cache"]
