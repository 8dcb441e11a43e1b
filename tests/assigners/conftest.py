"""Shared inputs for the assigner tests: small anchor grids and random, padded GT batches."""
from __future__ import annotations

import pytest
import torch

from detector.boxes import make_anchors


def random_batch(batch: int, num_gt: int, num_classes: int, sizes, strides, imgsz: int, seed: int,
                 pad_fraction: float = 0.3) -> dict:
    """Random boxes inside an imgsz x imgsz image, some rows padded (label -1, gt_mask False)."""
    gen = torch.Generator().manual_seed(seed)
    anchor_points, anchor_strides = make_anchors(sizes, strides)
    num_anchors = anchor_points.shape[0]
    xy = torch.rand(batch, num_gt, 2, generator=gen) * imgsz
    wh = 2 + torch.rand(batch, num_gt, 2, generator=gen) * imgsz * 0.6
    gt_bboxes = torch.cat((xy - wh / 2, xy + wh / 2), dim=-1).clamp(0, imgsz)
    gt_mask = torch.rand(batch, num_gt, generator=gen) >= pad_fraction
    gt_labels = torch.randint(0, num_classes, (batch, num_gt), generator=gen)
    gt_labels[~gt_mask] = -1
    gt_bboxes[~gt_mask] = 0
    dist = anchor_strides[:, None] * (0.3 + 3 * torch.rand(batch, num_anchors, 4, generator=gen))
    pred_bboxes = torch.cat((anchor_points - dist[..., :2], anchor_points + dist[..., 2:]), dim=-1)
    pred_scores = torch.rand(batch, num_anchors, num_classes, generator=gen)
    return dict(pred_scores=pred_scores, pred_bboxes=pred_bboxes, anchor_points=anchor_points,
                gt_labels=gt_labels, gt_bboxes=gt_bboxes, gt_mask=gt_mask, strides=anchor_strides)


@pytest.fixture
def make_batch():
    return random_batch
