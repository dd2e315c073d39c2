"""Helpers for tests and benchmarks of pruned networks (public; the names tests/, bench/ and
users' own checks rely on).

- :func:`zero_groups_` sets every parameter slice of chosen prunable groups to zero, in place,
  which is what training with DHSPG ends with; ``otonas.build`` then removes them.
- :func:`random_valid_erasure` draws a random set of erasing groups (operators) that can be
  removed together, optionally under a condition such as a FLOPs floor.
- :func:`prunable_param_share` is the share of a model's parameters that some group can remove.
- :func:`stdlib_text` is a text corpus that needs no download: this Python's own standard
  library sources, as byte ids (a 256-symbol vocabulary) for tiny language models.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np
import torch

from ._verify import prunable_param_share, random_valid_erasure, zero_groups_

__all__ = ["zero_groups_", "random_valid_erasure", "prunable_param_share", "stdlib_text"]


def stdlib_text(limit_bytes: int = 4 << 20, *, val_every: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``.py`` files of this Python's standard library (tests and site-packages left out), in
    sorted order, as int64 byte ids: (train, validation), split by file — every ``val_every``-th
    file validates — until about ``limit_bytes`` are read. Each file ends with a newline."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
    train, val, total = bytearray(), bytearray(), 0
    for i, f in enumerate(files):
        if "test" in f.parts or "site-packages" in f.parts:
            continue
        data = f.read_bytes()
        (val if i % val_every == 0 else train).extend(data + b"\n")
        total += len(data)
        if total >= limit_bytes:
            break
    if not train or not val:
        raise FileNotFoundError(f"no standard library sources found under {sysconfig.get_paths()['stdlib']}")
    return (torch.from_numpy(np.frombuffer(bytes(train), dtype=np.uint8).astype(np.int64)),
            torch.from_numpy(np.frombuffer(bytes(val), dtype=np.uint8).astype(np.int64)))
