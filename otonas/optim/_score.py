"""How redundant each prunable group is: the score that picks the groups to project to zero."""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["GroupStats", "RedundancyScore", "CosineMagnitudeScore", "TaylorScore", "MagnitudeScore", "make_score",
           "SCORES"]


@dataclass(frozen=True)
class GroupStats:
    """Per-group sums at the step where the redundant set is chosen; every field is ``[N]``.

    ``x`` is a group's parameter vector (all its slices), ``d`` the base optimizer's step
    direction there (the step is ``x − lr·d``).
    """

    dot: Tensor  # ⟨x_g, d_g⟩
    x_sq: Tensor  # ‖x_g‖²
    d_sq: Tensor  # ‖d_g‖²
    x_abs: Tensor  # Σ |x_g|
    size: Tensor  # number of elements in the group
    family: Tensor | None  # family id of each group, when the search space gives one


class RedundancyScore(abc.ABC):
    """Scores groups by redundancy; the optimizer projects the highest-scoring ones to zero.

    DHSPG calls it once, at ``start_step``, with the statistics of every prunable group.
    The scores must be computed from the statistics alone (they are identical on all
    ranks of a distributed run), higher meaning more redundant; ``+inf`` is allowed.
    """

    @abc.abstractmethod
    def __call__(self, stats: GroupStats) -> Tensor:
        """Return one score per group, shape ``[N]``."""


class CosineMagnitudeScore(RedundancyScore):
    """OTOv2's saliency: ``cos(x_g, d_g)`` plus ``1 / mean|x_g|``, each normalized across groups.

    A group whose step direction points along the group itself (``cos`` near 1: the base
    step already shrinks it) and whose entries are small is the cheapest to remove. Each
    term is divided by its largest absolute value over the groups so that both weigh alike;
    an all-zero group scores ``+inf``.
    """

    def __init__(self, *, cosine_weight: float = 1.0, magnitude_weight: float = 1.0) -> None:
        self.cosine_weight = float(cosine_weight)
        self.magnitude_weight = float(magnitude_weight)

    def __call__(self, stats: GroupStats) -> Tensor:
        norms = stats.x_sq.sqrt() * stats.d_sq.sqrt()
        cos = torch.where(norms > 0, stats.dot / norms.clamp_min(torch.finfo(norms.dtype).tiny), 0.0)
        zero = stats.x_abs == 0
        inv_mean = torch.where(zero, 0.0, stats.size / stats.x_abs.clamp_min(torch.finfo(norms.dtype).tiny))
        score = (self.cosine_weight * cos / _scale(cos)
                 + self.magnitude_weight * inv_mean / _scale(inv_mean))
        return torch.where(zero, torch.inf, score)


def _scale(t: Tensor) -> Tensor:
    m = t.abs().amax() if t.numel() else t.new_ones(())
    return torch.where(m > 0, m, torch.ones_like(m))


class TaylorScore(RedundancyScore):
    """First-order Taylor saliency: removing group g changes the loss by about ``⟨x_g, d_g⟩``
    (d the base step direction, a running gradient), so ``−|⟨x_g, d_g⟩|`` ranks the groups whose
    removal costs least first. Unlike a magnitude term it needs no normalisation across groups:
    it estimates the same quantity (a loss change) for a channel and for a whole operator, and
    for operators of different kinds (a convolution and a pooling's affine output). An all-zero
    group scores ``+inf``. H2SPG averages it over the warm-up steps, which steadies it."""

    def __call__(self, stats: GroupStats) -> Tensor:
        score = -stats.dot.abs()
        return torch.where(stats.x_abs == 0, torch.inf, score)


class MagnitudeScore(RedundancyScore):
    """``−‖x_g‖²``: the group of smallest L2 norm (over all its slices) first; an all-zero group
    scores ``+inf``. Only meaningful among groups of one kind — channels of one family — so use
    it where selection stays within cells (the progressive schedule, cost budgets, ``round_to``):
    there it is the default of ``otonas search --mode prune``. Measured beside Taylor on tiny
    ResNet-20 (bench/bench_quality.py's grid, 5 seeds): Fashion-MNIST at 50 % FLOPs 80.99 ± 0.81 %
    against 80.57 ± 0.84 %, at 25 % 79.13 ± 0.74 against 79.23 ± 0.44; digits at 25 % 98.04 ±
    0.43 against 98.00 ± 0.22, at 50 % 97.82 ± 0.43 against 97.91 ± 0.71."""

    def __call__(self, stats: GroupStats) -> Tensor:
        return torch.where(stats.x_abs == 0, torch.inf, -stats.x_sq)


SCORES = ("taylor", "magnitude", "cosine_magnitude")


def make_score(name: str) -> RedundancyScore:
    """The score named ``name`` (one of ``SCORES``)."""
    if name == "taylor":
        return TaylorScore()
    if name == "magnitude":
        return MagnitudeScore()
    if name == "cosine_magnitude":
        return CosineMagnitudeScore()
    raise ValueError(f"unknown score {name!r}; expected one of {', '.join(SCORES)}")
