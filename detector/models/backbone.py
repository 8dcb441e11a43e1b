"""CSPDarknet backbone in the YOLOv8 layout, with the scale multipliers of n/s/m/l/x."""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn

from detector.models.layers import C2f, SPPF, Conv


@dataclass(frozen=True)
class Scale:
    depth: float
    width: float
    max_channels: int

    def channels(self, c: int) -> int:
        """YOLOv8's rule: cap, multiply, round up to a multiple of 8."""
        return int(math.ceil(min(c, self.max_channels) * self.width / 8) * 8)

    def repeats(self, n: int) -> int:
        return max(round(n * self.depth), 1)


SCALES = {
    "n": Scale(0.33, 0.25, 1024),
    "s": Scale(0.33, 0.50, 1024),
    "m": Scale(0.67, 0.75, 768),
    "l": Scale(1.00, 1.00, 512),
    "x": Scale(1.00, 1.25, 512),
}


class CSPDarknet(nn.Module):
    """Stem, four stride-2 stages of Conv + C2f, SPPF. Returns the stride 8, 16, 32 maps."""

    def __init__(self, scale: Scale):
        super().__init__()
        c = [scale.channels(x) for x in (64, 128, 256, 512, 1024)]
        self.stem = Conv(3, c[0], 3, 2)  # stride 2
        self.stage1 = nn.Sequential(Conv(c[0], c[1], 3, 2), C2f(c[1], c[1], scale.repeats(3), shortcut=True))
        self.stage2 = nn.Sequential(Conv(c[1], c[2], 3, 2), C2f(c[2], c[2], scale.repeats(6), shortcut=True))
        self.stage3 = nn.Sequential(Conv(c[2], c[3], 3, 2), C2f(c[3], c[3], scale.repeats(6), shortcut=True))
        self.stage4 = nn.Sequential(Conv(c[3], c[4], 3, 2), C2f(c[4], c[4], scale.repeats(3), shortcut=True),
                                    SPPF(c[4], c[4], 5))
        self.out_channels = (c[2], c[3], c[4])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.stage1(self.stem(x))
        p3 = self.stage2(x)  # stride 8
        p4 = self.stage3(p3)  # stride 16
        p5 = self.stage4(p4)  # stride 32
        return p3, p4, p5
