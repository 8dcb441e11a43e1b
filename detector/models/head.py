"""Decoupled detection head: per level, a box branch predicting a distribution over distance bins
and a class branch predicting the joint class-quality score (no objectness).

Index convention: B images, A anchor points over all levels (level-major, then row-major),
C classes, R = reg_max bins (distances 0..R-1 in stride units).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from detector.boxes import make_anchors
from detector.models.layers import Conv, conv2d


class HeadOutput(NamedTuple):
    """Raw head output in train mode.

    cls_logits:    [B, A, C] joint class-quality logits (no objectness).
    box_dist:      [B, A, 4, reg_max] logits over distance bins (l, t, r, b), bins in stride units;
                   with reg_max == 1 the single value is the pre-softplus distance.
    anchor_points: [A, 2] anchor centres (x, y) in pixels.
    strides:       [A] stride of each anchor in pixels.
    """

    cls_logits: Tensor
    box_dist: Tensor
    anchor_points: Tensor
    strides: Tensor


def default_cls_width(in_channels: tuple[int, ...], num_classes: int) -> int:
    """ultralytics' class-branch width: max(in_channels[0], min(C, 100))."""
    return max(in_channels[0], min(num_classes, 100))


CLS_HIDDEN_KEY = "head.cls_branches.0.0.conv.weight"
DEPTHWISE_CLS_HIDDEN_KEY = "head.cls_branches.0.0.1.conv.weight"


def class_branch_width(state: dict) -> tuple[int, int] | None:
    """(hidden width, input width) of level 0 of the class branch in a state dict of either layout
    (YOLOv8: ``head.cls_branches.0.0`` a 3x3 Conv; YOLO11: ``head.cls_branches.0.0.1`` the 1x1 Conv
    after the depthwise one); None when neither is there."""
    for key in (CLS_HIDDEN_KEY, DEPTHWISE_CLS_HIDDEN_KEY):
        weight = state.get(key)
        if isinstance(weight, torch.Tensor) and weight.ndim == 4:
            return int(weight.shape[0]), int(weight.shape[1])
    return None


class DecoupledHead(nn.Module):
    """Box branch: 3x3 Conv, 3x3 Conv, 1x1 to 4*reg_max. Class branch: 3x3, 3x3, 1x1 to C; with
    ``depthwise_cls`` (YOLO11) each 3x3 is a depthwise 3x3 then a 1x1 Conv, as ultralytics' v11 Detect.

    ``cls_width``: the class branch's hidden width; None gives ultralytics' max(in_channels[0],
    min(C, 100)). A run fine-tuned from weights of another class count keeps the source's width so
    that the branch's hidden layers transfer (ultralytics 8.4 does the same).

    Bias init: class bias log(5 / C / (640 / s)^2) at stride s (about five objects per 640 px
    image, spread over the level's cells), box bias 1.0 (a flat-ish distribution).
    """

    def __init__(self, in_channels: tuple[int, ...], num_classes: int, reg_max: int = 16,
                 strides: tuple[int, ...] = (8, 16, 32), cls_width: int | None = None, depthwise_cls: bool = False):
        super().__init__()
        self.num_classes, self.reg_max, self.strides = num_classes, reg_max, tuple(strides)
        box_width = max(16, in_channels[0] // 4, 4 * reg_max)
        cls_width = cls_width or default_cls_width(in_channels, num_classes)
        self.cls_width, self.depthwise_cls = cls_width, depthwise_cls
        self.box_branches = nn.ModuleList(
            nn.Sequential(Conv(c, box_width, 3), Conv(box_width, box_width, 3), conv2d(box_width, 4 * reg_max))
            for c in in_channels)
        self.cls_branches = nn.ModuleList(
            nn.Sequential(self._cls_conv(c, cls_width), self._cls_conv(cls_width, cls_width),
                          conv2d(cls_width, num_classes))
            for c in in_channels)
        self.init_biases()

    def _cls_conv(self, c_in: int, c_out: int) -> nn.Module:
        if self.depthwise_cls:
            return nn.Sequential(Conv(c_in, c_in, 3, groups=c_in), Conv(c_in, c_out, 1))
        return Conv(c_in, c_out, 3)

    @torch.no_grad()
    def init_biases(self) -> None:
        for box, cls, stride in zip(self.box_branches, self.cls_branches, self.strides):
            box[-1].bias.fill_(1.0)
            cls[-1].bias.fill_(math.log(5 / self.num_classes / (640 / stride) ** 2))

    def branch_maps(self, features: tuple[Tensor, ...]) -> list[tuple[Tensor, Tensor]]:
        """Per level, the branches' raw maps: box [B, 4 * reg_max, H, W] (4 sides major, bins minor)
        and class logits [B, C, H, W]."""
        return [(box(x), cls(x)) for x, box, cls in zip(features, self.box_branches, self.cls_branches)]

    def forward(self, features: tuple[Tensor, ...]) -> HeadOutput:
        batch = features[0].shape[0]
        box_dist, cls_logits = [], []
        for box, cls in self.branch_maps(features):
            # [B, 4R, H, W] -> [B, H*W, 4, R]; [B, C, H, W] -> [B, H*W, C]. Channels last first: a view of the
            # NHWC maps of training (channels_last) and of OpenVINO's INT8 convolutions, where reshaping
            # the planar [B, 4R, H*W] first cost a layout reorder of every map (a fifth of a YOLO11n INT8 call)
            box_dist.append(box.permute(0, 2, 3, 1).reshape(batch, -1, 4, self.reg_max))
            cls_logits.append(cls.permute(0, 2, 3, 1).reshape(batch, -1, self.num_classes))
        sizes = [(int(x.shape[2]), int(x.shape[3])) for x in features]
        anchor_points, strides = make_anchors(sizes, list(self.strides), device=features[0].device,
                                              dtype=features[0].dtype)
        return HeadOutput(torch.cat(cls_logits, 1), torch.cat(box_dist, 1), anchor_points, strides)
