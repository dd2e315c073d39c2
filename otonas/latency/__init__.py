"""Latency as a cost: a per-layer latency table measured once and cached, the estimated latency
of a search space's network for any removal (what ``target_latency`` budgets spend), and the
measured latency of whole networks timed in turn.
"""

from __future__ import annotations

from ._measure import MEMORY_FORMATS, measure_latency, memory_format_name, to_memory_format
from ._model import LatencyModel, batched_inputs
from ._table import GRID, LatencyTable, LayerShape, LayerTimes, default_cache_dir

__all__ = ["LatencyModel", "LatencyTable", "LayerShape", "LayerTimes", "measure_latency", "batched_inputs",
           "MEMORY_FORMATS", "memory_format_name", "to_memory_format",
           "default_cache_dir", "GRID"]
