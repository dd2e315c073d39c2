"""Helpers for tests and benchmarks of pruned networks (public; the names tests/, bench/ and
users' own checks rely on).

- :func:`zero_groups_` sets every parameter slice of chosen prunable groups to zero, in place,
  which is what training with DHSPG ends with; ``otonas.build`` then removes them.
- :func:`random_valid_erasure` draws a random set of erasing groups (operators) that can be
  removed together, optionally under a condition such as a FLOPs floor.
- :func:`prunable_param_share` is the share of a model's parameters that some group can remove.
"""

from __future__ import annotations

from ._verify import prunable_param_share, random_valid_erasure, zero_groups_

__all__ = ["zero_groups_", "random_valid_erasure", "prunable_param_share"]
