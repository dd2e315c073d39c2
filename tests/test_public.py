"""The public homes of the error classes and the test helpers."""

from __future__ import annotations

import importlib
import pkgutil

import numpy as np
import torch
from torch import nn

import otonas
import otonas.errors
import otonas.testing


def test_every_error_and_warning_class_is_in_otonas_errors():
    for info in pkgutil.walk_packages(otonas.__path__, "otonas."):
        if info.name.startswith(("otonas.cli", "otonas.__main__")):  # the CLI runs on import / at call time
            continue
        importlib.import_module(info.name)

    def subclasses(cls):  # type: ignore[no-untyped-def]
        for c in cls.__subclasses__():
            yield c
            yield from subclasses(c)

    ours = {c for base in (Exception,) for c in subclasses(base) if c.__module__.startswith("otonas.")
            and (issubclass(c, otonas.OtonasError) or issubclass(c, Warning))}
    exported = {getattr(otonas.errors, n) for n in otonas.errors.__all__}
    assert ours <= exported, sorted(c.__qualname__ for c in ours - exported)


def test_testing_helpers_zero_groups_and_draw_valid_erasures():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    space = otonas.analyze(model, (torch.randn(2, 3, 8, 8),))
    mask = np.zeros(space.num_prunable_groups, dtype=bool)
    mask[[1, 5]] = True
    otonas.testing.zero_groups_(space, mask)
    assert (space.zero_groups() == mask).all()
    assert 0 < otonas.testing.prunable_param_share(space) <= 1
