"""DemoSupNet: a small supernet for Fashion-MNIST-sized images (28x28x1).

A demonstration search space in the spirit of the "DemoSupNet" used to
illustrate operator erasure in OTOv3 (Chen et al., OTOv3: Automatic
Architecture-Agnostic Neural Network Training and Compression from
Structured Pruning to Erasing Operators, arXiv:2312.09411); this layout is
our own. A stem conv, then three stages; each stage is a *mixed block*:
the plain sum of parallel candidate branches on the same input, followed
by a ReLU. Every branch ends in an affine BatchNorm2d, so it can be erased
(its output is exactly zero once its parameters are zero). Stages 1 and 2
halve the resolution (28 -> 14 -> 7); stage 3 keeps it and additionally
offers a skip (identity -> BN) branch, so it can be erased down to a
plain shortcut. Global average pool and a linear classifier close it.

Candidate branches: conv 3x3, conv 5x5, conv 7x7, separable conv 3x3
(depthwise + pointwise), dilated conv 3x3 (dilation 2), max-pool 3x3 +
1x1 conv, and (shape-keeping stages only) skip.

Input ``(in_chans, 28, 28)`` float, output logits ``(num_classes,)``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ._registry import check_size, register

__all__ = ["DemoSupNet", "MixedBlock", "demosupnet"]


def _conv_bn(c_in: int, c_out: int, k: int, stride: int, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k - 1) // 2
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
    )


def _sep_conv_bn(c_in: int, c_out: int, k: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, k, stride=stride, padding=k // 2, groups=c_in, bias=False),
        nn.Conv2d(c_in, c_out, 1, bias=False),
        nn.BatchNorm2d(c_out),
    )


def _pool_conv_bn(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.MaxPool2d(3, stride=stride, padding=1),
        nn.Conv2d(c_in, c_out, 1, bias=False),
        nn.BatchNorm2d(c_out),
    )


class MixedBlock(nn.Module):
    """ReLU(sum of candidate branches). Branch names are in ``self.names``."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        branches = {
            "conv_3x3": _conv_bn(c_in, c_out, 3, stride),
            "conv_5x5": _conv_bn(c_in, c_out, 5, stride),
            "conv_7x7": _conv_bn(c_in, c_out, 7, stride),
            "sep_conv_3x3": _sep_conv_bn(c_in, c_out, 3, stride),
            "dil_conv_3x3": _conv_bn(c_in, c_out, 3, stride, dilation=2),
            "max_pool_3x3": _pool_conv_bn(c_in, c_out, stride),
        }
        if stride == 1 and c_in == c_out:
            branches["skip"] = nn.Sequential(nn.Identity(), nn.BatchNorm2d(c_out))
        self.names = tuple(branches)
        self.branches = nn.ModuleList(branches.values())
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return self.relu(out)


class DemoSupNet(nn.Module):
    """Stem, mixed-block stages, global average pool, linear.

    Args:
        widths: stem width followed by one width per stage.
        strides: stride of each stage.
        num_classes, in_chans: classifier outputs and input channels.
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 64), strides: Sequence[int] = (2, 2, 1), *,
                 num_classes: int = 10, in_chans: int = 1) -> None:
        super().__init__()
        if len(widths) != len(strides) + 1:
            raise ValueError("widths must hold the stem width plus one width per stage")
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        self.stages = nn.Sequential(
            *(MixedBlock(widths[i], widths[i + 1], s) for i, s in enumerate(strides))
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


@register(
    "demosupnet",
    kind="supernet",
    input_shape=(1, 28, 28),
    output="logits (num_classes,)",
    source="Own layout after the DemoSupNet idea of OTOv3 (Chen et al., arXiv:2312.09411); Fashion-MNIST (Xiao et al., arXiv:1708.07747) inputs",
    default_params=629_546,
    tiny_params=15_658,
    paper_params=None,
)
def demosupnet(size: str = "default", num_classes: int = 10, in_chans: int = 1, **kwargs) -> DemoSupNet:
    """Default widths 16 / 32 / 64 / 64; tiny 4 / 8 / 8 / 8."""
    if check_size(size) == "default":
        cfg = dict(widths=(16, 32, 64, 64), strides=(2, 2, 1))
    else:
        cfg = dict(widths=(4, 8, 8, 8), strides=(2, 2, 1))
    cfg.update(kwargs)
    return DemoSupNet(num_classes=num_classes, in_chans=in_chans, **cfg)
