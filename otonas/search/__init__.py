"""``otonas search``: data, the train-once loop, checkpoints, the report."""

from ._data import DATASETS, DataSpec, load_data
from ._run import SearchConfig, search
from ._state import load_state, save_state

__all__ = ["search", "SearchConfig", "load_data", "DataSpec", "DATASETS", "save_state", "load_state"]
