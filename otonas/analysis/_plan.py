"""The Plan: one removal decision, read from the weights once, that build, export, report and
search all consume."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ._space import Costs

__all__ = ["Plan", "LayerChannels"]


@dataclass(frozen=True)
class LayerChannels:
    """One channel-making layer (conv, linear, …) of a :class:`Plan`: its output channels
    before and after, as the built network has them."""

    layer: str  # module path (the graph node name when the op is not inside a module)
    node: str  # the graph node of the layer's op
    op: str  # short op name: 'conv2d', 'linear', …
    channels_before: int
    channels_after: int  # 0 when the layer is erased
    erased: bool = False
    family: int | None = None

    @property
    def kept_fraction(self) -> float:
        return self.channels_after / self.channels_before if self.channels_before else 1.0


def _frozen(a: np.ndarray | None) -> np.ndarray | None:
    if a is None:
        return None
    a = np.array(a, dtype=bool)  # a copy: the caller's array stays writable and cannot change the plan
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class Plan:
    """What comes out of a SearchSpace for one set of weights: the pruning groups removed, the
    erasing groups erased, the graph nodes that go with them, the sizes every op keeps and the
    costs before and after. Made by :meth:`SearchSpace.plan`; :func:`otonas.build`,
    :func:`otonas.export`, the report and ``otonas search`` take it and decide nothing again.

    The arrays are read-only. ``removed`` is None when the space has no prunable groups,
    ``erased`` when it has no erasing groups.
    """

    removed: np.ndarray | None  # bool over prunable groups, after SearchSpace.removable
    erased: np.ndarray | None  # bool over erasing groups: a valid erasure
    # nodes of the analysed graph that the erasure takes out
    dead: frozenset[str] = field(repr=False)
    # bool over channel-id roots: what the builder slices away; None: nothing
    removed_root: np.ndarray | None = field(repr=False)
    kept: Mapping[str, tuple[int, ...]] = field(repr=False)  # live op -> kept sizes of its (first) output
    before: Costs
    after: Costs
    # bool over prunable groups: the channels the built network lacks, ``removed`` and those that
    # dead inputs of concatenations take away
    gone: np.ndarray | None = field(default=None, repr=False)
    # the per-layer table: one row per channel-making layer (module path), in graph order
    layers: tuple[LayerChannels, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if self.gone is None and self.removed is not None:
            object.__setattr__(self, "gone", self.removed)
        object.__setattr__(self, "layers", tuple(self.layers))
        for name in ("removed", "erased", "removed_root", "gone"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        object.__setattr__(self, "dead", frozenset(self.dead))
        object.__setattr__(self, "kept", MappingProxyType(dict(self.kept)))

    @property
    def removed_groups(self) -> int:
        """How many prunable groups the plan removes."""
        return int(self.removed.sum()) if self.removed is not None else 0

    @property
    def group_sparsity(self) -> float:
        """The share of prunable groups removed (0.0 when the space has none)."""
        return float(self.removed.mean()) if self.removed is not None and self.removed.size else 0.0

    @property
    def erased_groups(self) -> tuple[int, ...]:
        """Indices of the erasing groups erased."""
        return tuple(int(i) for i in np.nonzero(self.erased)[0]) if self.erased is not None else ()
