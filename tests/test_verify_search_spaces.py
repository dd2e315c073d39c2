"""`verify search_spaces:NAME` passes for every entry (tiny size by default, default size with -m slow)."""

from __future__ import annotations

import pytest

import otonas
import search_spaces

# carn and stackedunets end in per-pixel outputs; vgg16_bn needs 32×32 inputs: all are handled
# by the registry's input shapes, nothing is skipped.


@pytest.mark.parametrize("name", search_spaces.list())
def test_verify_tiny(name):
    report = otonas.verify(f"search_spaces:{name}", model_kwargs={"size": "tiny"}, fraction=0.3, seed=0)
    assert report.passed, report.message
    assert report.params_after < report.params_before


@pytest.mark.slow
@pytest.mark.parametrize("name", search_spaces.list())
def test_verify_default(name):
    report = otonas.verify(f"search_spaces:{name}", fraction=0.3, seed=0)
    print(f"{name}: prunable share {report.prunable_param_share:.1%}, params {report.params_before:,} -> "
          f"{report.params_after:,}")
    assert report.passed, report.message
