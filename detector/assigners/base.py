"""The result every assigner returns.

Index convention: B images, M ground truths per image (padded), A anchor points, C classes.
"""
from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class AssignResult(NamedTuple):
    """Targets of one batch, one row per anchor point.

    labels:   [B, A] long, the assigned class; ``num_classes`` marks background.
    bboxes:   [B, A, 4] float, the assigned GT box, xyxy px (zeros for background).
    scores:   [B, A, C] float, the soft classification target (one-hot times the quality).
    fg_mask:  [B, A] bool, True for foreground anchors.
    gt_index: [B, A] long, index of the assigned GT in [0, M) (0 for background).
    """

    labels: Tensor
    bboxes: Tensor
    scores: Tensor
    fg_mask: Tensor
    gt_index: Tensor
