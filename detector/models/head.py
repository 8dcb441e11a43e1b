"""Decoupled detection head (placeholder: the model issue fills this in)."""
from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


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
