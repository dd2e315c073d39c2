"""The DARTS cell search space as a summed supernet (for operator erasure).

Liu, Simonyan & Yang, DARTS: Differentiable Architecture Search, ICLR 2019
(arXiv:1806.09055), §2.1 and Appendix A.1: a network of ``layers`` cells;
the cells at 1/3 and 2/3 of the depth are reduction cells (stride 2, twice
the channels), the others normal cells. A cell takes the outputs of the two
previous cells, preprocesses them to ``C`` channels, and computes ``steps``
intermediate nodes; node j is the sum of one mixed op per predecessor
(the two inputs and nodes < j); the cell output concatenates the
intermediate nodes (``torch.cat``, ``steps * C`` channels).

Unlike DARTS there are no architecture weights (alphas): a mixed op is the
plain sum of its candidates' outputs, and the search is done by erasing
candidates. To make every candidate erasable, each one ends in an affine
``BatchNorm2d`` (output exactly zero when its weight and bias are zero),
and DARTS's "none" (zero) candidate is dropped: erasure plays its role.
The seven candidates:

    max_pool_3x3 -> BN        avg_pool_3x3 -> BN
    skip_connect -> BN        (stride 2: factorized reduce, ending in BN)
    sep_conv_3x3, sep_conv_5x5   (ReLU-dw-pw-BN, twice)
    dil_conv_3x3, dil_conv_5x5   (ReLU-dilated dw-pw-BN, dilation 2)

Stems: ``stem="cifar"`` (3x3 conv + BN, stride 1) or ``stem="imagenet"``
(DARTS's ImageNet stems, total stride 8). Input ``(in_chans, 32, 32)`` float
by default; the tiny variant also takes 8x8 images. Output logits
``(num_classes,)``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import check_size, register

__all__ = ["CANDIDATES", "Cell", "DartsSupernet", "MixedOp", "darts"]

CANDIDATES: tuple[str, ...] = (
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)


class ReLUConvBN(nn.Sequential):
    """ReLU, conv (no bias), BN."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out),
        )


class FactorizedReduce(nn.Module):
    """Halve the resolution without losing pixels: two 1x1 stride-2 convs, the
    second on the input shifted by one pixel, concatenated, then BN.

    The shifted branch pads one pixel at the bottom/right first, so odd sizes
    work too (both branches give ``ceil(H/2)``).
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even c_out, got {c_out}")
        self.relu = nn.ReLU()
        self.conv1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        return self.bn(torch.cat([self.conv1(x), self.conv2(shifted)], dim=1))


class DilConv(nn.Sequential):
    """ReLU, depthwise k x k conv (dilation d), pointwise conv, BN."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, dilation: int) -> None:
        pad = dilation * (kernel - 1) // 2
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(c_in, c_in, kernel, stride=stride, padding=pad, dilation=dilation,
                      groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )


class SepConv(nn.Sequential):
    """Two DilConvs with dilation 1, the first carrying the stride."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int) -> None:
        super().__init__(
            DilConv(c_in, c_in, kernel, stride, 1),
            DilConv(c_in, c_out, kernel, 1, 1),
        )


class PoolBN(nn.Sequential):
    """3x3 max or average pool (padding 1), then affine BN."""

    def __init__(self, kind: str, c: int, stride: int) -> None:
        pool = (nn.MaxPool2d(3, stride=stride, padding=1) if kind == "max"
                else nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False))
        super().__init__(pool, nn.BatchNorm2d(c))


class SkipBN(nn.Sequential):
    """Identity (stride 1) followed by affine BN, so the skip can be erased too."""

    def __init__(self, c: int) -> None:
        super().__init__(nn.Identity(), nn.BatchNorm2d(c))


def make_candidate(name: str, c: int, stride: int) -> nn.Module:
    """One candidate operator on ``c`` channels; every one ends in an affine BN."""
    if name == "max_pool_3x3":
        return PoolBN("max", c, stride)
    if name == "avg_pool_3x3":
        return PoolBN("avg", c, stride)
    if name == "skip_connect":
        return SkipBN(c) if stride == 1 else FactorizedReduce(c, c)
    if name == "sep_conv_3x3":
        return SepConv(c, c, 3, stride)
    if name == "sep_conv_5x5":
        return SepConv(c, c, 5, stride)
    if name == "dil_conv_3x3":
        return DilConv(c, c, 3, stride, 2)
    if name == "dil_conv_5x5":
        return DilConv(c, c, 5, stride, 2)
    raise ValueError(f"unknown DARTS candidate {name!r}; known: {CANDIDATES}")


class MixedOp(nn.Module):
    """The plain sum of all candidate operators applied to the same input."""

    def __init__(self, c: int, stride: int, candidates: Sequence[str] = CANDIDATES) -> None:
        super().__init__()
        self.names = tuple(candidates)
        self.ops = nn.ModuleList(make_candidate(n, c, stride) for n in self.names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.ops[0](x)
        for op in self.ops[1:]:
            out = out + op(x)
        return out


class Cell(nn.Module):
    """A DARTS cell with ``steps`` intermediate nodes, each summing mixed ops
    over all its predecessors; the output concatenates the intermediate nodes.

    Args:
        steps: intermediate nodes.
        c_pp, c_p: channels of the inputs (cell k-2 and cell k-1).
        c: channels of every node.
        reduction: this cell halves the resolution (edges from the inputs stride 2).
        reduction_prev: the previous cell halved it, so input k-2 is reduced too.
    """

    def __init__(self, steps: int, c_pp: int, c_p: int, c: int, reduction: bool,
                 reduction_prev: bool, candidates: Sequence[str] = CANDIDATES) -> None:
        super().__init__()
        self.reduction = reduction
        self.steps = steps
        self.preprocess0 = FactorizedReduce(c_pp, c) if reduction_prev else ReLUConvBN(c_pp, c, 1)
        self.preprocess1 = ReLUConvBN(c_p, c, 1)
        self.edges = nn.ModuleList()
        for j in range(steps):
            for i in range(2 + j):
                stride = 2 if reduction and i < 2 else 1
                self.edges.append(MixedOp(c, stride, candidates))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        k = 0
        for _ in range(self.steps):
            node = self.edges[k](states[0])
            for i in range(1, len(states)):
                node = node + self.edges[k + i](states[i])
            k += len(states)
            states.append(node)
        return torch.cat(states[2:], dim=1)


class DartsSupernet(nn.Module):
    """The DARTS supernet with summed mixed ops.

    Args:
        init_channels: ``C`` of the first cells (doubled at each reduction).
        layers: number of cells; reductions at ``layers // 3`` and ``2 * layers // 3``.
        steps: intermediate nodes per cell (the cell outputs ``steps * C`` channels).
        stem: ``"cifar"`` (3x3 conv, stride 1) or ``"imagenet"`` (stride 8).
        stem_multiplier: the CIFAR stem outputs ``stem_multiplier * C`` channels.
        candidates: candidate operator names (a subset of :data:`CANDIDATES`).
        num_classes, in_chans: classifier outputs and input channels.
    """

    def __init__(self, init_channels: int = 16, layers: int = 8, steps: int = 4, *,
                 stem: str = "cifar", stem_multiplier: int = 3, num_classes: int = 10,
                 in_chans: int = 3, candidates: Sequence[str] = CANDIDATES) -> None:
        super().__init__()
        if layers < 3:
            raise ValueError(f"layers must be >= 3 (normal + two reduction cells), got {layers}")
        c = init_channels
        self.stem_kind = stem
        if stem == "cifar":
            c_stem = stem_multiplier * c
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, c_stem, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_stem),
            )
            c_pp, c_p = c_stem, c_stem
            reduction_prev = False
        elif stem == "imagenet":
            self.stem0 = nn.Sequential(
                nn.Conv2d(in_chans, c // 2, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c // 2),
                nn.ReLU(),
                nn.Conv2d(c // 2, c, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c),
            )
            self.stem1 = nn.Sequential(
                nn.ReLU(),
                nn.Conv2d(c, c, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c),
            )
            c_pp, c_p = c, c
            reduction_prev = True
        else:
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")

        self.cells = nn.ModuleList()
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                c *= 2
            cell = Cell(steps, c_pp, c_p, c, reduction, reduction_prev, candidates)
            self.cells.append(cell)
            reduction_prev = reduction
            c_pp, c_p = c_p, steps * c
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stem_kind == "cifar":
            s0 = s1 = self.stem(x)
        else:
            s0 = self.stem0(x)
            s1 = self.stem1(s0)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(torch.flatten(self.pool(s1), 1))


@register(
    "darts",
    kind="supernet",
    input_shape=(3, 32, 32),
    tiny_input_shape=(3, 8, 8),
    output="logits (num_classes,)",
    source="Liu et al., DARTS, ICLR 2019 (arXiv:1806.09055): 8-cell CIFAR supernet, C=16, 4 nodes; "
           "alphas and the zero op dropped, affine BN after every candidate (as searched by OTOv3, arXiv:2312.09411)",
    default_params=2_012_538,
    tiny_params=29_410,
    paper_params=4_050_000,
)
def darts(size: str = "default", num_classes: int = 10, in_chans: int = 3, **kwargs) -> DartsSupernet:
    """DARTS supernet. Default: 8 cells, C=16, 4 nodes. Tiny: 3 cells (normal,
    reduce, reduce), C=4, 2 nodes; runs on 8x8 images (``in_chans=1`` for digits).

    Other keywords: ``layers``, ``init_channels``, ``steps``, ``stem``,
    ``stem_multiplier``, ``candidates``.
    """
    if check_size(size) == "default":
        cfg: dict[str, Any] = dict(init_channels=16, layers=8, steps=4)
    else:
        cfg = dict(init_channels=4, layers=3, steps=2, stem_multiplier=2)
    cfg.update(kwargs)
    return DartsSupernet(num_classes=num_classes, in_chans=in_chans, **cfg)
