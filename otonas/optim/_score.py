"""How redundant each prunable group is: the score that picks the groups to project to zero."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

__all__ = ["GroupStats", "RedundancyScore", "CosineMagnitudeScore", "TaylorScore", "MagnitudeScore",
           "NormAffineScore", "make_score", "SCORES"]


@dataclass(frozen=True)
class GroupStats:
    """Per-group sums at the step where the redundant set is chosen; every field is ``[N]``.

    ``x`` is a group's parameter vector (all its slices), ``d`` the base optimizer's step
    direction there (the step is ``x − lr·d``). ``norm_sq`` / ``norm_size``: ``‖·‖²`` and the
    element count of the group's normalization scales and shifts (the γ and β of the BatchNorm,
    LayerNorm, GroupNorm, RMSNorm … layers among its slices); the optimizer fills them only for a
    score whose ``needs_norm_sq`` is true (``None`` otherwise).
    """

    dot: Tensor  # ⟨x_g, d_g⟩
    x_sq: Tensor  # ‖x_g‖²
    d_sq: Tensor  # ‖d_g‖²
    x_abs: Tensor  # Σ |x_g|
    size: Tensor  # number of elements in the group
    family: Tensor | None  # family id of each group, when the search space gives one
    norm_sq: Tensor | None = None  # Σ γ² + β² over the group's normalization layers
    norm_size: Tensor | None = None  # how many such elements the group has (0: none)


class RedundancyScore(abc.ABC):
    """Scores groups by redundancy; the optimizer projects the highest-scoring ones to zero.

    DHSPG calls it once, at ``start_step``, with the statistics of every prunable group.
    The scores must be computed from the statistics alone (they are identical on all
    ranks of a distributed run), higher meaning more redundant; ``+inf`` is allowed.
    A score that reads ``GroupStats.norm_sq`` sets ``needs_norm_sq = True``. A score that reads
    only the weights (``x_sq``, ``x_abs``, ``norm_sq``, ``size``), never the step direction
    (``dot``, ``d_sq``), sets ``needs_direction = False``: the progressive schedule then takes a
    period start's statistics before the step (``dot`` and ``d_sq`` are zero there), and the step
    itself takes the same one-pass form as the other steps of the period.
    A score that reads, for a group with normalization slices, only ``norm_sq`` and whether
    ``x_abs`` is zero sets ``reads_normalized_weights = False``: at such a period start the optimizer
    then sums only the weights that hold a group without one, and the normalization slices
    themselves (``x_sq`` and ``x_abs`` of the other groups cover those entries only).
    """

    needs_norm_sq: ClassVar[bool] = False
    needs_direction: ClassVar[bool] = True
    reads_normalized_weights: ClassVar[bool] = True

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
    it where selection stays within cells (the progressive schedule, cost budgets, ``round_to``).
    Where a normalization follows the weights (BatchNorm after a convolution) it is no better than a
    random choice (bench/README "Which score"): ``NormAffineScore``, the default of ``otonas search
    --mode prune``, reads the normalization's scale and shift instead."""

    needs_direction = False

    def __call__(self, stats: GroupStats) -> Tensor:
        return torch.where(stats.x_abs == 0, torch.inf, -stats.x_sq)


class NormAffineScore(RedundancyScore):
    """``−Σ(γ² + β²)`` over the scales and shifts of the normalization layers in the group — the
    size of the channel's output after the normalization. Network Slimming's criterion (Liu et al.,
    ICCV 2017: ``|γ|``) with the shift counted too (a channel whose γ is 0 still passes its constant
    β on). A convolution or linear layer followed by a BatchNorm or LayerNorm is scale
    invariant (the normalization divides its weights' norm out), so the weights' own magnitude
    says little about what the channel contributes; γ and β are what the next layer sees. A group
    with no normalization slice falls back to ``−‖x_g‖²`` (``MagnitudeScore``); an all-zero group
    scores ``+inf`` (at a progressive period start, where the optimizer sums a normalized group's
    γ and β only — ``reads_normalized_weights = False`` —, one whose γ and β are all zero). Like the magnitude, meaningful among groups of one kind (within cells).

    Measured beside ``MagnitudeScore`` (bench/README "Which score"): ahead on bench_quality's tiny
    ResNet-20 on Fashion-MNIST (10 seeds), level on digits, about 0.3 points behind on a tiny
    ResNet-18 and level on a tiny DenseNet-121 (5 seeds): not better everywhere."""

    needs_norm_sq = True
    needs_direction = False
    reads_normalized_weights = False  # a normalized group: its γ and β (x_abs zero: they are all zero)

    def __call__(self, stats: GroupStats) -> Tensor:
        if stats.norm_sq is None or stats.norm_size is None:
            raise TypeError("NormAffineScore needs GroupStats.norm_sq and .norm_size; the optimizer fills them "
                            "for a score with needs_norm_sq = True")
        score = torch.where(stats.norm_size > 0, -stats.norm_sq.to(stats.x_sq.dtype), -stats.x_sq)
        return torch.where(stats.x_abs == 0, torch.inf, score)


SCORES = ("taylor", "magnitude", "cosine_magnitude", "norm_affine")


def make_score(name: str) -> RedundancyScore:
    """The score named ``name`` (one of ``SCORES``)."""
    if name == "taylor":
        return TaylorScore()
    if name == "magnitude":
        return MagnitudeScore()
    if name == "cosine_magnitude":
        return CosineMagnitudeScore()
    if name == "norm_affine":
        return NormAffineScore()
    raise ValueError(f"unknown score {name!r}; expected one of {', '.join(SCORES)}")
