"""DenseNet-121 for CIFAR-sized images.

Huang et al., Densely Connected Convolutional Networks, CVPR 2017
(arXiv:1608.06993): DenseNet-BC with growth rate 32, dense blocks of
[6, 12, 24, 16] bottleneck layers and compression 0.5, as in the paper's
ImageNet DenseNet-121 but with a CIFAR stem (one 3x3 conv with 2k channels,
stride 1, no max-pool). Every layer's output is concatenated (``torch.cat``)
to its input, which is what channel pruning has to follow.

Input ``(in_chans, 32, 32)`` float, output logits ``(num_classes,)``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from ._registry import check_size, register

__all__ = ["DenseNet", "densenet121"]


class DenseLayer(nn.Module):
    """BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k), concatenated to the input."""

    def __init__(self, in_ch: int, growth: int, bn_size: int = 4) -> None:
        super().__init__()
        mid = bn_size * growth
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_ch, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(mid, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu1(self.bn1(x)))
        out = self.conv2(self.relu2(self.bn2(out)))
        return torch.cat([x, out], dim=1)


class Transition(nn.Sequential):
    """BN-ReLU-conv1x1 (compression) then 2x2 average pool."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.BatchNorm2d(in_ch),
            nn.ReLU(),
            nn.Conv2d(in_ch, out_ch, 1, bias=False),
            nn.AvgPool2d(2),
        )


class DenseNet(nn.Module):
    """CIFAR-stem DenseNet-BC.

    Args:
        blocks: dense layers per dense block.
        growth: growth rate k.
        reduction: channel compression of the transitions.
        bn_size: bottleneck width factor (1x1 conv outputs ``bn_size * k``).
        num_classes, in_chans: classifier outputs and input channels.
    """

    def __init__(self, blocks: Sequence[int] = (6, 12, 24, 16), *, growth: int = 32,
                 reduction: float = 0.5, bn_size: int = 4, num_classes: int = 10,
                 in_chans: int = 3) -> None:
        super().__init__()
        ch = 2 * growth
        self.stem = nn.Conv2d(in_chans, ch, 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for i, n in enumerate(blocks):
            layers = []
            for _ in range(n):
                layers.append(DenseLayer(ch, growth, bn_size))
                ch += growth
            stages.append(nn.Sequential(*layers))
            if i != len(blocks) - 1:
                out_ch = int(math.floor(ch * reduction))
                stages.append(Transition(ch, out_ch))
                ch = out_ch
        self.features = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(ch)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.norm(self.features(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


@register(
    "densenet121",
    kind="network",
    input_shape=(3, 32, 32),
    output="logits (num_classes,)",
    source="Huang et al., Densely Connected Convolutional Networks, CVPR 2017 (arXiv:1608.06993), DenseNet-121 (BC, k=32) with a CIFAR stem",
    default_params=6_956_298,
    tiny_params=10_656,
    paper_params=None,
)
def densenet121(size: str = "default", num_classes: int = 10, in_chans: int = 3, **kwargs) -> DenseNet:
    """DenseNet-121 for CIFAR; tiny: growth 4, blocks [2, 3, 4, 2] (shallower, for test speed)."""
    if check_size(size) == "default":
        cfg: dict[str, Any] = dict(blocks=(6, 12, 24, 16), growth=32)
    else:
        cfg = dict(blocks=(2, 3, 4, 2), growth=4)
    cfg.update(kwargs)
    return DenseNet(num_classes=num_classes, in_chans=in_chans, **cfg)
