"""Export: write the built network as ``model.py`` + ``model.safetensors`` + ``architecture.json``,
and load such an export back (``model.py`` needs only torch and safetensors)."""

from ._codegen import ExportError
from ._export import ExportResult, export
from ._load import load

__all__ = ["export", "load", "ExportResult", "ExportError"]
