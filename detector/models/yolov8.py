"""YOLOv8 (ultralytics' yolov8.yaml): CSPDarknet backbone of Conv + C2f stages and SPPF, a PAN-FPN
neck of C2f blocks without shortcuts, the decoupled head with two 3x3 convs per branch.

ultralytics' layer list (index: class -> our module):
    0 Conv -> backbone.stem          1 Conv, 2 C2f -> backbone.stage1.{0,1}
    3 Conv, 4 C2f -> backbone.stage2 (P3)   5 Conv, 6 C2f -> backbone.stage3 (P4)
    7 Conv, 8 C2f, 9 SPPF -> backbone.stage4 (P5)
    10 Upsample, 11 Concat, 12 C2f -> neck.top_down4   13 Upsample, 14 Concat, 15 C2f -> neck.top_down3
    16 Conv -> neck.down3, 17 Concat, 18 C2f -> neck.bottom_up4   19 Conv -> neck.down4, 20 Concat,
    21 C2f -> neck.bottom_up5   22 Detect -> head
"""
from __future__ import annotations

from torch import nn

from detector.models.layers import StagedBackbone, C2f, SPPF, Conv
from detector.models.neck import PANFPN
from detector.models.registry import Architecture, Scale

SCALES = {  # depth, width, max_channels of yolov8.yaml
    "n": Scale(0.33, 0.25, 1024),
    "s": Scale(0.33, 0.50, 1024),
    "m": Scale(0.67, 0.75, 768),
    "l": Scale(1.00, 1.00, 512),
    "x": Scale(1.00, 1.25, 512),
}
LAYERS = ("Conv", "Conv", "C2f", "Conv", "C2f", "Conv", "C2f", "Conv", "C2f", "SPPF", "Upsample", "Concat",
          "C2f", "Upsample", "Concat", "C2f", "Conv", "Concat", "C2f", "Conv", "Concat", "C2f", "Detect")
LAYER_PREFIXES = {
    0: "backbone.stem", 1: "backbone.stage1.0", 2: "backbone.stage1.1", 3: "backbone.stage2.0",
    4: "backbone.stage2.1", 5: "backbone.stage3.0", 6: "backbone.stage3.1", 7: "backbone.stage4.0",
    8: "backbone.stage4.1", 9: "backbone.stage4.2", 12: "neck.top_down4", 15: "neck.top_down3",
    16: "neck.down3", 18: "neck.bottom_up4", 19: "neck.down4", 21: "neck.bottom_up5", 22: "head",
}


class CSPDarknet(StagedBackbone):
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


def build_features(scale_name: str) -> tuple[CSPDarknet, PANFPN]:
    scale = SCALES[scale_name]
    backbone = CSPDarknet(scale)
    c3, c4, c5 = backbone.out_channels
    n = scale.repeats(3)
    neck = PANFPN(top_down4=C2f(c5 + c4, c4, n), top_down3=C2f(c4 + c3, c3, n), down3=Conv(c3, c3, 3, 2),
                  bottom_up4=C2f(c3 + c4, c4, n), down4=Conv(c4, c4, 3, 2), bottom_up5=C2f(c4 + c5, c5, n),
                  out_channels=(c3, c4, c5))
    return backbone, neck


ARCHITECTURE = Architecture(name="yolov8", title="YOLOv8", scales=SCALES, build_features=build_features,
                            depthwise_cls=False, layers=LAYERS, layer_prefixes=LAYER_PREFIXES, backbone_layers=10,
                            probe_repeats=3)
