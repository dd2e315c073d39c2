"""The README's main job keeps its promise (slow: ~1 min on a quiet 2-core machine, 12 epochs)."""

from __future__ import annotations

import warnings

import pytest

from otonas.optim import ForcedProjectionWarning
from otonas.search import SearchConfig, search


@pytest.mark.slow
def test_default_search_is_as_accurate_as_dense_and_forces_nothing(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ForcedProjectionWarning)
        report = search(SearchConfig(out=str(tmp_path), progress=False))
    assert report["accuracy_subnet"] >= 0.95
    assert report["accuracy_subnet"] == report["accuracy_full"] and report["max_abs_diff"] < 1e-4
    assert report["forced_groups"] == 0
    assert len(report["erased_operators"]) == int(0.5 * report["erasing_groups"] + 0.5)
