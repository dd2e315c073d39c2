"""VGG-16 with batch normalization for CIFAR-sized images.

Simonyan & Zisserman, Very Deep Convolutional Networks for Large-Scale Image
Recognition, ICLR 2015 (arXiv:1409.1556), configuration "D", with a
BatchNorm2d after every conv (Ioffe & Szegedy 2015) and the CIFAR
classifier used by the pruning literature: 512 -> 512 -> 512 -> num_classes
(the feature map is 1x1x512 after the five max-pools of a 32x32 input).

Input ``(in_chans, 32, 32)`` float (any size divisible by 32), output
logits ``(num_classes,)``.
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import torch
from torch import nn

from ._registry import check_size, register

__all__ = ["VGG", "vgg16_bn"]

Cfg = Sequence[Union[int, str]]

VGG16_CFG: Cfg = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
VGG16_TINY_CFG: Cfg = (4, 4, "M", 8, 8, "M", 8, 8, 8, "M", 16, 16, 16, "M", 16, 16, 16, "M")


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(),
        )


class VGG(nn.Module):
    """VGG feature extractor from ``cfg`` (ints: 3x3 conv-BN-ReLU, "M": 2x2
    max-pool), global average pool, then an MLP classifier.

    Args:
        cfg: layer configuration.
        hidden: widths of the hidden classifier layers (``()`` for a single linear).
        num_classes, in_chans: classifier outputs and input channels.
    """

    def __init__(self, cfg: Cfg, *, hidden: Sequence[int] = (512, 512), num_classes: int = 10,
                 in_chans: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = in_chans
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers.append(ConvBNReLU(ch, int(v)))
                ch = int(v)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        head: list[nn.Module] = []
        for h in hidden:
            head += [nn.Linear(ch, h), nn.ReLU()]
            ch = h
        head.append(nn.Linear(ch, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register(
    "vgg16_bn",
    kind="network",
    input_shape=(3, 32, 32),
    output="logits (num_classes,)",
    source="Simonyan & Zisserman, ICLR 2015 (arXiv:1409.1556), config D + BatchNorm; CIFAR head 512-512-512-classes",
    default_params=15_249_354,
    tiny_params=16_246,
    paper_params=15_250_000,
)
def vgg16_bn(size: str = "default", num_classes: int = 10, in_chans: int = 3, **kwargs) -> VGG:
    """VGG-16-BN for CIFAR; tiny: 4..16 channels, hidden layer of 16."""
    if check_size(size) == "default":
        cfg: dict[str, Any] = dict(cfg=VGG16_CFG, hidden=(512, 512))
    else:
        cfg = dict(cfg=VGG16_TINY_CFG, hidden=(16,))
    cfg.update(kwargs)
    return VGG(num_classes=num_classes, in_chans=in_chans, **cfg)
