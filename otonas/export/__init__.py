"""Export: write the built network as ``model.py`` + ``model.safetensors`` + ``architecture.json``,
and load such an export back (``model.py`` needs only torch and safetensors)."""

from ._graph import ExportError
from ._export import ExportResult, export
from ._load import load

# ``otonas.export`` may name this function (re-exported at the top level) or this package;
# ``otonas.export.load`` works either way.
export.load = load  # type: ignore[attr-defined]

__all__ = ["export", "load", "ExportResult", "ExportError"]
