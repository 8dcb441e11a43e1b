"""PAN-FPN neck: top-down (FPN) then bottom-up (PAN) fusion with C2f blocks, no shortcuts."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from detector.models.backbone import Scale
from detector.models.layers import C2f, Conv


class PANFPN(nn.Module):
    def __init__(self, in_channels: tuple[int, int, int], scale: Scale):
        super().__init__()
        c3, c4, c5 = in_channels
        n = scale.repeats(3)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.top_down4 = C2f(c5 + c4, c4, n)  # stride 16
        self.top_down3 = C2f(c4 + c3, c3, n)  # stride 8, output P3
        self.down3 = Conv(c3, c3, 3, 2)
        self.bottom_up4 = C2f(c3 + c4, c4, n)  # output P4
        self.down4 = Conv(c4, c4, 3, 2)
        self.bottom_up5 = C2f(c4 + c5, c5, n)  # output P5
        self.out_channels = (c3, c4, c5)

    def forward(self, features: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        p3, p4, p5 = features
        t4 = self.top_down4(torch.cat((self.up(p5), p4), dim=1))
        n3 = self.top_down3(torch.cat((self.up(t4), p3), dim=1))
        n4 = self.bottom_up4(torch.cat((self.down3(n3), t4), dim=1))
        n5 = self.bottom_up5(torch.cat((self.down4(n4), p5), dim=1))
        return n3, n4, n5
