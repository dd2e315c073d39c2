"""ConvNeXt-T (Liu et al., A ConvNet for the 2020s, CVPR 2022, arXiv:2201.03545).

Patchify stem (4x4 conv, stride 4, LayerNorm), four stages of
[3, 3, 9, 3] blocks with [96, 192, 384, 768] channels, a LayerNorm +
2x2 stride-2 conv between stages, global average pool, LayerNorm, linear.
A block: depthwise 7x7 conv, LayerNorm, Linear(4x), GELU, Linear, layer
scale, residual add. Stochastic depth is left out (it is an identity at
inference and would add randomness to the graph).

LayerNorms over channels permute to channels-last and back, so only
standard ``nn.LayerNorm`` layers appear.

Input ``(in_chans, 224, 224)`` float (any size divisible by 32), output
logits ``(num_classes,)``, ``num_classes=1000`` by default.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ._registry import check_size, register

__all__ = ["ConvNeXt", "convnext_tiny"]


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """dwconv7x7 -> LN -> Linear(4C) -> GELU -> Linear(C) -> layer scale, + x."""

    def __init__(self, dim: int, mlp_ratio: int = 4, layer_scale_init: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # NHWC
        y = self.fc2(self.act(self.fc1(self.norm(y))))
        y = (y * self.gamma).permute(0, 3, 1, 2)
        return x + y


class ConvNeXt(nn.Module):
    """ConvNeXt backbone and classifier.

    Args:
        depths: blocks per stage.
        dims: channels per stage.
        num_classes, in_chans: classifier outputs and input channels.
        layer_scale_init: initial layer-scale value.
    """

    def __init__(self, depths: Sequence[int] = (3, 3, 9, 3), dims: Sequence[int] = (96, 192, 384, 768),
                 *, num_classes: int = 1000, in_chans: int = 3, layer_scale_init: float = 1e-6) -> None:
        super().__init__()
        if len(depths) != len(dims):
            raise ValueError(f"depths {depths} and dims {dims} differ in length")
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0], 4, stride=4),
            LayerNorm2d(dims[0], eps=1e-6),
        )
        stages: list[nn.Module] = []
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            layers: list[nn.Module] = []
            if i > 0:
                layers += [LayerNorm2d(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], dim, 2, stride=2)]
            layers += [ConvNeXtBlock(dim, layer_scale_init=layer_scale_init) for _ in range(depth)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            assert m.bias is not None  # every conv and linear here is built with a bias
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        x = self.norm(torch.flatten(self.pool(x), 1))
        return self.head(x)


@register(
    "convnext_tiny",
    kind="network",
    input_shape=(3, 224, 224),
    tiny_input_shape=(3, 32, 32),
    output="logits (num_classes,)",
    source="Liu et al., A ConvNet for the 2020s, CVPR 2022 (arXiv:2201.03545), ConvNeXt-T",
    default_params=28_589_128,
    tiny_params=18_294,
    paper_params=28_000_000,
)
def convnext_tiny(size: str = "default", num_classes: int | None = None, in_chans: int = 3,
                  **kwargs) -> ConvNeXt:
    """ConvNeXt-T ([3,3,9,3] x [96..768], 1000 classes); tiny: depths [1,1,2,1],
    dims [8,12,16,24], 10 classes (``num_classes`` overrides either).

    The tiny variant is meant for 32x32 inputs (the stride is 32 at any size).
    """
    if num_classes is None:
        num_classes = 1000 if check_size(size) == "default" else 10
    if check_size(size) == "default":
        cfg: dict[str, Any] = dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768))
    else:
        cfg = dict(depths=(1, 1, 2, 1), dims=(8, 12, 16, 24))
    cfg.update(kwargs)
    return ConvNeXt(num_classes=num_classes, in_chans=in_chans, **cfg)
