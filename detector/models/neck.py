"""PAN-FPN neck: top-down (FPN) then bottom-up (PAN) fusion, the topology YOLOv8 and YOLO11 share.

The architectures differ in the fusion blocks (YOLOv8: C2f without shortcuts; YOLO11: C3k2), which
their modules build and pass in, with the widths of their yaml.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class PANFPN(nn.Module):
    """Inputs: backbone maps at strides 8, 16, 32. Each fusion block takes the concatenation shown.

    top_down4:  up(P5) + P4    -> T4 (stride 16)
    top_down3:  up(T4) + P3    -> N3 (stride 8, output)
    down3:      N3 -> stride 16 (a stride-2 conv)
    bottom_up4: down3(N3) + T4 -> N4 (output)
    down4:      N4 -> stride 32
    bottom_up5: down4(N4) + P5 -> N5 (output)
    ``out_channels``: the widths of N3, N4, N5.
    """

    def __init__(self, *, top_down4: nn.Module, top_down3: nn.Module, down3: nn.Module, bottom_up4: nn.Module,
                 down4: nn.Module, bottom_up5: nn.Module, out_channels: tuple[int, int, int]):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.top_down4, self.top_down3, self.down3 = top_down4, top_down3, down3
        self.bottom_up4, self.down4, self.bottom_up5 = bottom_up4, down4, bottom_up5
        self.out_channels = tuple(out_channels)

    def forward(self, features: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        p3, p4, p5 = features
        t4 = self.top_down4(torch.cat((self.up(p5), p4), dim=1))
        n3 = self.top_down3(torch.cat((self.up(t4), p3), dim=1))
        n4 = self.bottom_up4(torch.cat((self.down3(n3), t4), dim=1))
        n5 = self.bottom_up5(torch.cat((self.down4(n4), p5), dim=1))
        return n3, n4, n5
