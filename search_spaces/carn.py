"""CARN: the Cascading Residual Network for x2 super-resolution.

Ahn, Kang & Sohn, Fast, Accurate, and Lightweight Super-Resolution with
Cascading Residual Network, ECCV 2018 (arXiv:1803.08664), the full CARN
(not CARN-M), single scale x2:

    entry 3x3 conv (64 ch)
    3 cascading blocks, each cascading over 3 residual units:
        c_0 = o_0 = x;  b_i = unit_i(o_{i-1});  c_i = cat([c_{i-1}, b_i]);  o_i = 1x1 conv(c_i)
    the same cascade at the global level over the 3 blocks
    upsampler: 3x3 conv to 4*64 channels, PixelShuffle(2), ReLU
    exit 3x3 conv to 3 channels

A residual unit is conv3x3-ReLU-conv3x3, + x, ReLU. The paper also
subtracts/adds the dataset's RGB mean around the network; that is a fixed
(non-trainable) buffer here.

Input ``(3, H, W)`` float (default (3, 32, 32) patches; any size), output
``(3, 2H, 2W)``.
"""

from __future__ import annotations

import torch
from torch import nn

from ._registry import check_size, register

__all__ = ["CARN", "carn"]

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


class ResidualUnit(nn.Module):
    """conv3x3-ReLU-conv3x3, + x, ReLU."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu2(self.conv2(self.relu1(self.conv1(x))) + x)


class Cascade(nn.Module):
    """The cascading connection over ``units``: each unit's output is concatenated
    to everything before it, and a 1x1 conv (+ReLU) fuses the concat back to ``c``."""

    def __init__(self, c: int, units: list[nn.Module]) -> None:
        super().__init__()
        self.units = nn.ModuleList(units)
        self.fuse = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c * (i + 2), c, 1), nn.ReLU()) for i in range(len(units))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = o = x
        for unit, fuse in zip(self.units, self.fuse):
            c = torch.cat([c, unit(o)], dim=1)
            o = fuse(c)
        return o


class CARN(nn.Module):
    """CARN for one upscaling factor.

    Args:
        channels: feature channels (64 in the paper).
        blocks: cascading blocks; units: residual units per block (3 and 3).
        scale: upscaling factor, 2 (or 4 with two x2 pixel-shuffle stages, or 3).
        in_chans: image channels (input and output).
    """

    rgb_mean: torch.Tensor  # buffer (1, in_chans, 1, 1)

    def __init__(self, channels: int = 64, blocks: int = 3, units: int = 3, *, scale: int = 2,
                 in_chans: int = 3) -> None:
        super().__init__()
        mean = DIV2K_RGB_MEAN if in_chans == 3 else (0.5,) * in_chans
        self.register_buffer("rgb_mean", torch.tensor(mean).view(1, in_chans, 1, 1))
        self.entry = nn.Conv2d(in_chans, channels, 3, padding=1)
        self.body = Cascade(
            channels,
            [Cascade(channels, [ResidualUnit(channels) for _ in range(units)]) for _ in range(blocks)],
        )
        if scale in (2, 3):
            factors = [scale]
        elif scale == 4:
            factors = [2, 2]
        else:
            raise ValueError(f"scale must be 2, 3 or 4, got {scale}")
        up: list[nn.Module] = []
        for f in factors:
            up += [nn.Conv2d(channels, channels * f * f, 3, padding=1), nn.PixelShuffle(f), nn.ReLU()]
        self.upsample = nn.Sequential(*up)
        self.exit = nn.Conv2d(channels, in_chans, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.entry(x - self.rgb_mean)
        x = self.upsample(self.body(x))
        return self.exit(x) + self.rgb_mean


@register(
    "carn",
    kind="supernet",
    input_shape=(3, 32, 32),
    tiny_input_shape=(3, 8, 8),
    output="image (3, 2H, 2W) (x2 super-resolution)",
    source="Ahn et al., Fast, Accurate, and Lightweight Super-Resolution with Cascading Residual Network, "
           "ECCV 2018 (arXiv:1803.08664), CARN x2",
    default_params=964_163,
    tiny_params=15_691,
    paper_params=1_592_000,
)
def carn(size: str = "default", in_chans: int = 3, **kwargs) -> CARN:
    """CARN x2: 64 channels, 3 blocks x 3 units. Tiny: 8 channels, same cascade."""
    if check_size(size) == "default":
        cfg = dict(channels=64, blocks=3, units=3)
    else:
        cfg = dict(channels=8, blocks=3, units=3)
    cfg.update(kwargs)
    return CARN(in_chans=in_chans, **cfg)
