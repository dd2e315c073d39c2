"""``otonas search``: data, the train-once loop, checkpoints, the report."""

from ._data import DATASETS, DataSpec, load_data
from ._run import Prepared, SearchConfig, prepare, search
from ._state import atomic_write_text, load_state, pid_alive, save_state

__all__ = ["search", "SearchConfig", "prepare", "Prepared", "load_data", "DataSpec", "DATASETS", "save_state", "load_state",
           "atomic_write_text", "pid_alive"]
