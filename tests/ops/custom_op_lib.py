"""A custom op defined with torch.library in an importable module (tests/ops/test_custom_ops.py)."""

from __future__ import annotations

import torch


@torch.library.custom_op("otonas_tests::scale", mutates_args=())
def scale(x: torch.Tensor, s: float) -> torch.Tensor:
    return x * s


@scale.register_fake
def _(x: torch.Tensor, s: float) -> torch.Tensor:
    return torch.empty_like(x)
