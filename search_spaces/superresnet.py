"""SuperResNet: a residual supernet over kernel sizes and depths.

A ResNet (He et al., CVPR 2016, arXiv:1512.03385) for CIFAR-sized images
whose blocks are *super blocks*: the residual branch is the plain sum of
candidate branches, one per (kernel size, depth) pair, e.g. kernels
(3, 5, 7) x depths (1, 2) = six branches. A depth-d branch is d convs
(BN-ReLU between them) ending in an affine BatchNorm2d, so each branch is
erasable. Erasing every branch of a shape-keeping block leaves its
identity shortcut, which removes the block: the number of blocks per stage
is the searched depth of the stage. This follows the kernel-size / depth
search of OFA-style ResNet supernets (Cai et al., Once-for-All, ICLR 2020,
arXiv:1908.09791) and of OTOv3's SuperResNet (arXiv:2312.09411), with the
candidates summed rather than sampled; the layout is our own.

The first block of every stage after the first halves the resolution, and
its shortcut is a 1x1 conv + BN. Input ``(in_chans, 32, 32)`` float,
output logits ``(num_classes,)``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ._registry import check_size, register

__all__ = ["SuperBlock", "SuperResNet", "superresnet"]


def _branch(c_in: int, c_out: int, kernel: int, depth: int, stride: int) -> nn.Sequential:
    """``depth`` k x k convs (first one strided), BN after each, ReLU between."""
    layers: list[nn.Module] = []
    ch = c_in
    for i in range(depth):
        if i > 0:
            layers.append(nn.ReLU())
        layers += [
            nn.Conv2d(ch, c_out, kernel, stride=stride if i == 0 else 1, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        ch = c_out
    return nn.Sequential(*layers)


class SuperBlock(nn.Module):
    """ReLU(shortcut(x) + sum over (kernel, depth) candidate branches of x)."""

    def __init__(self, c_in: int, c_out: int, stride: int, kernels: Sequence[int] = (3, 5, 7),
                 depths: Sequence[int] = (1, 2)) -> None:
        super().__init__()
        self.names = tuple(f"k{k}_d{d}" for k in kernels for d in depths)
        self.branches = nn.ModuleList(
            _branch(c_in, c_out, k, d, stride) for k in kernels for d in depths
        )
        if stride == 1 and c_in == c_out:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                nn.BatchNorm2d(c_out),
            )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.shortcut(x)
        for branch in self.branches:
            out = out + branch(x)
        return self.relu(out)


class SuperResNet(nn.Module):
    """Stem, stages of :class:`SuperBlock`, global average pool, linear.

    Args:
        widths: channels per stage.
        blocks: super blocks per stage (the largest depth searched).
        kernels, depths: the candidate kernel sizes and branch depths of each block.
        num_classes, in_chans: classifier outputs and input channels.
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64), blocks: Sequence[int] = (3, 3, 3), *,
                 kernels: Sequence[int] = (3, 5, 7), depths: Sequence[int] = (1, 2),
                 num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        if len(widths) != len(blocks):
            raise ValueError(f"widths {widths} and blocks {blocks} differ in length")
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        stages = []
        ch = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            layers = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(SuperBlock(ch, w, stride, kernels, depths))
                ch = w
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


@register(
    "superresnet",
    kind="supernet",
    input_shape=(3, 32, 32),
    tiny_input_shape=(3, 8, 8),
    output="logits (num_classes,)",
    source="Own layout: ResNet (He et al. 2016) super blocks over kernels {3,5,7} x depths {1,2}, "
           "after OFA (arXiv:1908.09791) and OTOv3's SuperResNet (arXiv:2312.09411)",
    default_params=3_600_826,
    tiny_params=24_866,
    paper_params=None,
)
def superresnet(size: str = "default", num_classes: int = 10, in_chans: int = 3, **kwargs) -> SuperResNet:
    """Default: widths 16/32/64, 3 super blocks per stage; tiny: widths 4/6/8,
    1 block per stage (same kernels and depths)."""
    if check_size(size) == "default":
        cfg = dict(widths=(16, 32, 64), blocks=(3, 3, 3))
    else:
        cfg = dict(widths=(4, 6, 8), blocks=(1, 1, 1))
    cfg.update(kwargs)
    return SuperResNet(num_classes=num_classes, in_chans=in_chans, **cfg)
