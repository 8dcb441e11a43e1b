"""The plain dense formulation of task-aligned assignment, and realistic random inputs for it.

Index convention: B images, M ground truths per image (padded), A anchor points, C classes.

``dense_task_aligned_assign`` is the readable B x M x A form of the rules in
``detector/assigners/tal.py`` (the YOLOv8 layout: a [B, M, A, 4] distance tensor for the inside
test, then [B, M, A] overlaps, scores, metric and masks). ``tests/assigners/test_tal.py`` checks
that ``TaskAlignedAssigner`` returns exactly what it returns; ``benchmarks/assigner.py`` compares
the speed and memory of the two.

``make_inputs``: 640x640 images, strides 8/16/32 (A=8400), C=80; GT boxes log-uniform in size
(8..320 px side, aspect 1:2..2:1), per-image counts uniform in [M/2, M] (padded to M, as a real
batch is); predictions are boxes jittered around the anchors (0.5..5 strides each side) and uniform
scores in [0, 0.5).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from detector.assigners.base import AssignResult
from detector.boxes import aligned_iou, make_anchors


def dense_task_aligned_assign(
    pred_scores: Tensor, pred_bboxes: Tensor, anchor_points: Tensor, gt_labels: Tensor,
    gt_bboxes: Tensor, gt_mask: Tensor, num_classes: int, topk: int = 10, alpha: float = 0.5,
    beta: float = 6.0, eps: float = 1e-9,
) -> AssignResult:
    """Reference task-aligned assignment with dense B x M x A tensors (see the module docstring)."""
    batch, num_anchors, _ = pred_scores.shape
    num_gt = gt_bboxes.shape[1]
    device = pred_scores.device
    labels = torch.full((batch, num_anchors), num_classes, dtype=torch.long, device=device)
    bboxes = torch.zeros((batch, num_anchors, 4), dtype=gt_bboxes.dtype, device=device)
    scores = torch.zeros_like(pred_scores)
    if num_gt == 0:
        return AssignResult(labels, bboxes, scores, torch.zeros_like(labels, dtype=torch.bool),
                            torch.zeros_like(labels))

    # Candidates: anchor centres strictly inside a real GT.
    lt, rb = gt_bboxes[:, :, None, :2], gt_bboxes[:, :, None, 2:]  # [B, M, 1, 2]
    deltas = torch.cat((anchor_points - lt, rb - anchor_points), dim=-1)  # [B, M, A, 4]
    candidate = (deltas.amin(dim=-1) > eps) & gt_mask[:, :, None]  # [B, M, A]
    del deltas

    # Overlap and class score of each candidate pair; 0 elsewhere.
    b, m, a = candidate.nonzero(as_tuple=True)
    overlaps = torch.zeros(candidate.shape, device=device)  # [B, M, A]
    overlaps[b, m, a] = aligned_iou(gt_bboxes[b, m].float(), pred_bboxes[b, a].float(), kind="ciou").clamp(min=0)
    class_scores = torch.zeros(candidate.shape, device=device)  # [B, M, A]
    class_scores[b, m, a] = pred_scores[b, a, gt_labels[b, m]].float()
    metric = class_scores.pow(alpha) * overlaps.pow(beta)  # [B, M, A]

    # Top-k over all anchors; a top-k anchor counts only if it is a candidate.
    top = metric.topk(min(topk, num_anchors), dim=-1).indices  # [B, M, k]
    in_topk = torch.zeros_like(candidate).scatter_(-1, top, True)
    positive = in_topk & candidate  # [B, M, A]

    # Several claimants: the highest overlap wins (argmax returns the first, i.e. lowest GT).
    winner = torch.where(positive, overlaps, -1.0).argmax(dim=1)  # [B, A]
    positive &= torch.arange(num_gt, device=device)[None, :, None] == winner[:, None, :]
    fg_mask = positive.any(dim=1)  # [B, A]
    gt_index = torch.where(fg_mask, winner, 0)

    # Normalise per GT over its final positives.
    metric = metric * positive
    max_metric = metric.amax(dim=-1, keepdim=True)  # [B, M, 1]
    max_overlap = (overlaps * positive).amax(dim=-1, keepdim=True)
    quality = (metric * max_overlap / (max_metric + eps)).amax(dim=1)  # [B, A]

    image = torch.arange(batch, device=device)[:, None]
    assigned_labels = torch.where(fg_mask, gt_labels[image, gt_index], 0)  # [B, A]; padded rows may hold -1
    labels = torch.where(fg_mask, assigned_labels, num_classes)
    bboxes = torch.where(fg_mask[..., None], gt_bboxes[image, gt_index], 0.0)
    scores = torch.nn.functional.one_hot(assigned_labels, num_classes).to(scores.dtype)
    scores = scores * (quality * fg_mask)[..., None].to(scores.dtype)  # [B, A, C]
    return AssignResult(labels, bboxes, scores, fg_mask, gt_index)


def make_inputs(batch: int, num_gt: int, num_classes: int = 80, imgsz: int = 640, seed: int = 0) -> dict:
    """Random but realistic assigner inputs (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    sizes = [(imgsz // s, imgsz // s) for s in (8, 16, 32)]
    anchor_points, strides = make_anchors(sizes, [8, 16, 32])
    num_anchors = anchor_points.shape[0]

    counts = torch.randint(num_gt // 2, num_gt + 1, (batch,), generator=gen)
    counts[0] = num_gt
    gt_mask = torch.arange(num_gt)[None] < counts[:, None]  # [B, M]
    side = torch.exp(torch.empty(batch, num_gt).uniform_(math.log(8), math.log(320), generator=gen))
    aspect = torch.exp(torch.empty(batch, num_gt).uniform_(math.log(0.5), math.log(2), generator=gen))
    w, h = side * aspect.sqrt(), side / aspect.sqrt()
    cx, cy = (torch.rand(2, batch, num_gt, generator=gen) * imgsz).unbind(0)
    gt_bboxes = torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1).clamp(0, imgsz)
    gt_labels = torch.randint(0, num_classes, (batch, num_gt), generator=gen)

    dist = strides[:, None] * (0.5 + 4.5 * torch.rand(batch, num_anchors, 4, generator=gen))  # px
    pred_bboxes = torch.cat((anchor_points - dist[..., :2], anchor_points + dist[..., 2:]), dim=-1)
    pred_scores = 0.5 * torch.rand(batch, num_anchors, num_classes, generator=gen)
    return dict(pred_scores=pred_scores, pred_bboxes=pred_bboxes, anchor_points=anchor_points,
                gt_labels=gt_labels, gt_bboxes=gt_bboxes, gt_mask=gt_mask, strides=strides)
