"""Two stacked U-Nets for dense (per-pixel) prediction.

Ronneberger, Fischer & Brox, U-Net, MICCAI 2015 (arXiv:1505.04597), with
BatchNorm and padded convs; stacked twice as in stacked hourglass networks
(Newell et al., ECCV 2016, arXiv:1603.06937) and OTOv3's StackedUnets
(arXiv:2312.09411); the layout is our own:

    h  = stem(x)                       3x3 conv-BN-ReLU, ``base`` channels
    y1 = unet1(h)                      ConvTranspose2d upsampling
    y2 = unet2(cat([h, y1]))           nn.Upsample (bilinear) + 3x3 conv
    out = head1(y1) + head2(y2)        1x1 convs to ``num_classes``, summed

The two heads are summed branches, so operator erasure can drop either
U-Net's contribution (erasing ``head2`` and everything only it uses leaves
a single U-Net; erasing ``head1`` keeps the second stacked on the first).

Each U-Net: ``depth`` encoder levels (double 3x3 conv-BN-ReLU, 2x2
max-pool), a bottleneck, and ``depth`` decoder levels that upsample, concat
(``torch.cat``) the encoder's skip and apply a double conv.

Input ``(in_chans, H, W)`` float with H and W divisible by ``2**depth``
(default (3, 64, 64)); output per-pixel logits ``(num_classes, H, W)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._registry import check_size, register

__all__ = ["StackedUNets", "UNet", "stackedunets"]


class DoubleConv(nn.Sequential):
    """(3x3 conv, BN, ReLU) twice."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
        )


class Up(nn.Module):
    """Upsample by 2 to ``c_out`` channels, concat the skip, double conv."""

    def __init__(self, c_in: int, c_out: int, mode: str) -> None:
        super().__init__()
        if mode == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(c_in, c_out, 2, stride=2)
        elif mode == "bilinear":
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(c_in, c_out, 3, padding=1),
            )
        else:
            raise ValueError(f"upsample mode must be 'transpose' or 'bilinear', got {mode!r}")
        self.conv = DoubleConv(2 * c_out, c_out)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """A U-Net from ``c_in`` to ``base`` channels at full resolution.

    Args:
        c_in: input channels.
        base: channels of the first level (doubled at each level down).
        depth: number of down/up-sampling levels.
        upsample: ``"transpose"`` (ConvTranspose2d) or ``"bilinear"`` (nn.Upsample + conv).
    """

    def __init__(self, c_in: int, base: int, depth: int, upsample: str) -> None:
        super().__init__()
        widths = [base * 2 ** i for i in range(depth + 1)]
        self.inc = DoubleConv(c_in, widths[0])
        self.pool = nn.MaxPool2d(2)
        self.downs = nn.ModuleList(DoubleConv(widths[i], widths[i + 1]) for i in range(depth))
        self.ups = nn.ModuleList(Up(widths[i + 1], widths[i], upsample) for i in reversed(range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inc(x)
        skips = []
        for down in self.downs:
            skips.append(x)
            x = down(self.pool(x))
        for up in self.ups:
            x = up(x, skips.pop())
        return x


class StackedUNets(nn.Module):
    """Stem, two U-Nets (the second sees the stem output and the first's), two 1x1 heads summed.

    Args:
        base: channels of the first level of both U-Nets.
        depth: down/up-sampling levels of each U-Net.
        upsample: upsampling of (unet1, unet2).
        num_classes, in_chans: output and input channels.
    """

    def __init__(self, base: int = 32, depth: int = 4, *,
                 upsample: tuple[str, str] = ("transpose", "bilinear"),
                 num_classes: int = 2, in_chans: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, base, 3, padding=1, bias=False),
            nn.BatchNorm2d(base),
            nn.ReLU(),
        )
        self.unet1 = UNet(base, base, depth, upsample[0])
        self.unet2 = UNet(2 * base, base, depth, upsample[1])
        self.head1 = nn.Conv2d(base, num_classes, 1)
        self.head2 = nn.Conv2d(base, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        y1 = self.unet1(h)
        y2 = self.unet2(torch.cat([h, y1], dim=1))
        return self.head1(y1) + self.head2(y2)


@register(
    "stackedunets",
    kind="supernet",
    input_shape=(3, 64, 64),
    tiny_input_shape=(3, 16, 16),
    output="per-pixel logits (num_classes, H, W), num_classes=2 by default",
    source="U-Net (Ronneberger et al., MICCAI 2015, arXiv:1505.04597) stacked twice as in OTOv3's "
           "StackedUnets (arXiv:2312.09411) / stacked hourglasses (arXiv:1603.06937); own layout",
    default_params=16_423_396,
    tiny_params=16_240,
    paper_params=None,
)
def stackedunets(size: str = "default", num_classes: int = 2, in_chans: int = 3, **kwargs) -> StackedUNets:
    """Default: base 32, depth 4 (channels 32..512); tiny: base 4, depth 2."""
    if check_size(size) == "default":
        cfg: dict[str, Any] = dict(base=32, depth=4)
    else:
        cfg = dict(base=4, depth=2)
    cfg.update(kwargs)
    return StackedUNets(num_classes=num_classes, in_chans=in_chans, **cfg)
