"""Losses: pure functions in ``functional`` (FL, QFL, VFL, DFL, IoU family)."""
from detector.losses.functional import (
    distribution_focal_loss,
    focal_loss,
    iou_loss,
    quality_focal_loss,
    varifocal_loss,
)

__all__ = [
    "distribution_focal_loss",
    "focal_loss",
    "iou_loss",
    "quality_focal_loss",
    "varifocal_loss",
]
