"""Where models come from: ``MODEL`` specs (``torchvision:resnet18``, ``search_spaces:darts``,
``pkg.module:factory``, ``file.py:Class``), example inputs from shapes, and an importable
torchvision (``import_torchvision``) for the commands, ``otonas.search`` and the benchmarks."""

from __future__ import annotations

from ._models import ResolvedModel, example_inputs, parse_shape, resolve_model, user_callable
from ._torchvision import import_torchvision, prepare_torchvision

__all__ = ["ResolvedModel", "resolve_model", "user_callable", "parse_shape", "example_inputs", "import_torchvision",
           "prepare_torchvision"]
