"""Small supernets for H2SPG's tests, and slow reference selections written from the definitions.

The references walk the erasing groups one by one with ``space.is_valid`` and compute
nesting from the parent links, independently of ``otonas.optim.select_erasure``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Cand(nn.Module):
    """A candidate operator: ReLU, conv, BN (its output is zero when conv and BN are zero)."""

    def __init__(self, c: int, kind: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3 if kind else 1, padding=1 if kind else 0)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(F.relu(x)))


class Mixed(nn.Module):
    """The plain sum of candidates on one input; with ``inner`` the last candidate is itself
    a mixed op (operators nested two deep)."""

    def __init__(self, c: int, n: int, inner: int = 0) -> None:
        super().__init__()
        ops: list[nn.Module] = [Cand(c, i % 2) for i in range(n)]
        if inner:
            ops.append(Mixed(c, inner))
        self.ops = nn.ModuleList(ops)

    def forward(self, x: Tensor) -> Tensor:
        out = self.ops[0](x)
        for op in self.ops[1:]:
            out = out + op(x)
        return out


class Supernet(nn.Module):
    """Stages, each one of: ``sum`` (x + mixed(x)), ``nested`` (mixed(x) + mixed(x): erasing
    both kills the stage), ``deep`` (x + a mixed op holding a mixed op), ``cat`` (branches
    concatenated, then a 1x1 conv back)."""

    def __init__(self, plan: Sequence[tuple[str, int]], c: int = 4, num_classes: int = 3) -> None:
        super().__init__()
        self.plan = list(plan)
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.stages = nn.ModuleList()
        for kind, n in self.plan:
            if kind == "sum":
                self.stages.append(nn.ModuleList([Mixed(c, n)]))
            elif kind == "nested":
                self.stages.append(nn.ModuleList([Mixed(c, n), Mixed(c, 2)]))
            elif kind == "deep":
                self.stages.append(nn.ModuleList([Mixed(c, n, inner=2)]))
            elif kind == "cat":
                self.stages.append(nn.ModuleList([Cand(c, i % 2) for i in range(n)] + [nn.Conv2d(c * n, c, 1)]))
            else:
                raise ValueError(kind)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for (kind, _), stage in zip(self.plan, self.stages):
            if kind in ("sum", "deep"):
                x = x + stage[0](x)
            elif kind == "nested":
                x = stage[0](x) + stage[1](x)
            else:
                x = stage[-1](torch.cat([b(x) for b in stage[:-1]], dim=1))
        return self.head(x.mean((2, 3)))


def batch(seed: int, n: int = 6, classes: int = 3) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 5, 5, generator=g), torch.randint(0, classes, (n,), generator=g)


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, steps: Sequence[int]) -> None:
    """One optimizer step per entry of ``steps`` on the batch seeded by it."""
    model.train()
    for s in steps:
        x, y = batch(s)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()


# ---------------------------------------------------------------------------- references
def ancestors(space: Any, i: int) -> set[int]:
    out = set()
    p = space.erasing_groups[i].parent
    while p is not None:
        out.add(p)
        p = space.erasing_groups[p].parent
    return out


def ref_erasure(space: Any, scores: Sequence[float], budget: int) -> tuple[list[int], list[int]]:
    """Greedy by decreasing score (NaN last, ties by index): skip a group nested with an
    accepted one either way, one whose acceptance leaves an enclosing group with no parameter
    outside the accepted groups, one that makes the accepted set invalid; stop at the budget."""
    e = space.num_erasing_groups
    key = [(-math.inf if math.isnan(s) else s) for s in scores]
    order = sorted(range(e), key=lambda i: (-key[i], i))
    accepted: list[int] = []
    skipped: list[int] = []
    for i in order:
        if len(accepted) == budget:
            break
        nested = any(a in ancestors(space, i) or i in ancestors(space, a) for a in accepted)
        zero = {f for a in accepted + [i] for f in space.erasing_groups[a].params}
        emptied = any(set(space.erasing_groups[p].params) <= zero for p in ancestors(space, i))
        mask = np.zeros(e, dtype=bool)
        mask[accepted + [i]] = True
        if nested or emptied or not space.is_valid(mask):
            skipped.append(i)
        else:
            accepted.append(i)
    return accepted, skipped


def ref_moot(space: Any, accepted: Sequence[int]) -> np.ndarray:
    """Prunable groups of the families below an accepted group in the hierarchy, or with every
    slice in the accepted groups' parameters."""
    import networkx as nx

    n = space.num_prunable_groups
    moot = np.zeros(n, dtype=bool)
    for a in accepted:
        for node in nx.descendants(space.hierarchy, f"E{a}"):
            if node.startswith("F"):
                for g in space.families[int(node[1:])].groups:
                    moot[g] = True
    params = {f for a in accepted for f in space.erasing_groups[a].params}
    outside = np.zeros(n, dtype=bool)
    for name, entries in space.group_layout().items():
        for _, index in entries:
            for g in index.tolist():
                if g >= 0 and name not in params:
                    outside[g] = True
    return moot | ~outside


def ref_pruning(space: Any, scores: Sequence[float], k: int, moot: np.ndarray) -> list[int]:
    """The k highest-scoring groups that are not moot, never the lowest remaining of a family."""
    family = space.group_family
    eligible = [g for g in range(space.num_prunable_groups) if not moot[g]]
    for f in sorted({family[g] for g in eligible}):
        members = [g for g in eligible if family[g] == f]
        eligible.remove(min(members, key=lambda g: (scores[g], g)))
    eligible.sort(key=lambda g: (-scores[g], g))
    return sorted(eligible[:k])


def round_half_up(n: int, frac: float) -> int:
    return min(n, int(math.floor(n * frac + 0.5 + 1e-9)))
