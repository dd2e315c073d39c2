"""ResNets for CIFAR-sized images (He et al., 2016).

Two families, both with a CIFAR stem (3x3 conv, stride 1, no max-pool) and
adaptive average pooling before the classifier, so any input of at least
8x8 pixels works (e.g. the 8x8 scikit-learn digits):

* ``resnet20`` / ``resnet56``: the CIFAR ResNets of He et al. 2016 §4.2
  (three stages of 16/32/64 channels, 6n+2 layers). Shortcuts are
  "option B": identity when the shape is kept, 1x1 conv + BN when it changes.
* ``resnet18`` / ``resnet50``: the ImageNet ResNets (BasicBlock [2,2,2,2],
  Bottleneck [3,4,6,3], 64..512 channels) with the CIFAR stem, as used by the
  CIFAR pruning literature (OTO, DepGraph, ...).

Input ``(in_chans, H, W)`` float, output logits ``(num_classes,)``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ._registry import check_size, register

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet20", "resnet50", "resnet56"]


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    """Identity when the shape is kept, else 1x1 conv + BN (option B)."""
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_ch),
    )


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = _shortcut(in_ch, out_ch, stride)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride), 1x1 expand by 4, plus shortcut."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.shortcut = _shortcut(in_ch, out_ch, stride)
        self.relu3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-stem ResNet: stem, ``len(widths)`` stages, global pool, linear.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        blocks: blocks per stage.
        widths: ``planes`` per stage (the stage outputs ``planes * expansion``).
        stem_width: channels of the 3x3 stem conv (default ``widths[0]``).
        num_classes, in_chans: classifier outputs and input channels.

    The first stage keeps the resolution, every later stage halves it.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        blocks: Sequence[int],
        widths: Sequence[int],
        *,
        stem_width: int | None = None,
        num_classes: int = 10,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if len(blocks) != len(widths):
            raise ValueError(f"blocks {blocks} and widths {widths} differ in length")
        stem_width = widths[0] if stem_width is None else stem_width
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, stem_width, 3, padding=1, bias=False),
            nn.BatchNorm2d(stem_width),
            nn.ReLU(),
        )
        stages = []
        in_ch = stem_width
        for i, (n, planes) in enumerate(zip(blocks, widths)):
            layers = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(block(in_ch, planes, stride))
                in_ch = planes * block.expansion
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        self.num_features = in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


_CIFAR_DOC: dict[str, Any] = dict(
    input_shape=(3, 32, 32),
    tiny_input_shape=(3, 8, 8),
    output="logits (num_classes,)",
)


def _build(size: str, default: dict[str, Any], tiny: dict[str, Any], num_classes: int, in_chans: int,
           kwargs: dict[str, Any]) -> ResNet:
    cfg = dict(default if check_size(size) == "default" else tiny)
    cfg.update(kwargs)
    return ResNet(num_classes=num_classes, in_chans=in_chans, **cfg)


@register(
    "resnet20",
    kind="network",
    source="He et al., Deep Residual Learning for Image Recognition, CVPR 2016 (arXiv:1512.03385), §4.2; option-B shortcuts",
    default_params=272_474,
    tiny_params=17_534,
    paper_params=270_000,
    **_CIFAR_DOC,
)
def resnet20(size: str = "default", num_classes: int = 10, in_chans: int = 3, **kwargs) -> ResNet:
    """ResNet-20 (3 stages x 3 BasicBlocks, 16/32/64 ch); tiny: 4/8/16 ch, same depth."""
    return _build(size, dict(block=BasicBlock, blocks=(3, 3, 3), widths=(16, 32, 64)),
                  dict(block=BasicBlock, blocks=(3, 3, 3), widths=(4, 8, 16)),
                  num_classes, in_chans, kwargs)


@register(
    "resnet56",
    kind="network",
    source="He et al., Deep Residual Learning for Image Recognition, CVPR 2016 (arXiv:1512.03385), §4.2; option-B shortcuts",
    default_params=855_770,
    tiny_params=19_494,
    paper_params=850_000,
    **_CIFAR_DOC,
)
def resnet56(size: str = "default", num_classes: int = 10, in_chans: int = 3, **kwargs) -> ResNet:
    """ResNet-56 (3 stages x 9 BasicBlocks, 16/32/64 ch); tiny: 4/6/8 ch, same depth."""
    return _build(size, dict(block=BasicBlock, blocks=(9, 9, 9), widths=(16, 32, 64)),
                  dict(block=BasicBlock, blocks=(9, 9, 9), widths=(4, 6, 8)),
                  num_classes, in_chans, kwargs)


@register(
    "resnet18",
    kind="network",
    source="He et al., CVPR 2016 (arXiv:1512.03385), ResNet-18 with a CIFAR stem (3x3 conv, stride 1, no max-pool)",
    default_params=11_173_962,
    tiny_params=16_982,
    paper_params=11_170_000,
    **_CIFAR_DOC,
)
def resnet18(size: str = "default", num_classes: int = 10, in_chans: int = 3, **kwargs) -> ResNet:
    """ResNet-18, CIFAR stem (BasicBlock [2,2,2,2], 64..512 ch); tiny: 4/8/12/16 ch."""
    return _build(size, dict(block=BasicBlock, blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512)),
                  dict(block=BasicBlock, blocks=(2, 2, 2, 2), widths=(4, 8, 12, 16)),
                  num_classes, in_chans, kwargs)


@register(
    "resnet50",
    kind="network",
    source="He et al., CVPR 2016 (arXiv:1512.03385), ResNet-50 with a CIFAR stem (3x3 conv, stride 1, no max-pool)",
    default_params=23_520_842,
    tiny_params=11_054,
    paper_params=23_520_000,
    **_CIFAR_DOC,
)
def resnet50(size: str = "default", num_classes: int = 10, in_chans: int = 3, **kwargs) -> ResNet:
    """ResNet-50, CIFAR stem (Bottleneck [3,4,6,3], planes 64..512); tiny: planes 2/4/6/8."""
    return _build(size, dict(block=Bottleneck, blocks=(3, 4, 6, 3), widths=(64, 128, 256, 512)),
                  dict(block=Bottleneck, blocks=(3, 4, 6, 3), widths=(2, 4, 6, 8), stem_width=8),
                  num_classes, in_chans, kwargs)
