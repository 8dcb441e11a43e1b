"""Adaptive Training Sample Selection (ATSS, Zhang et al. 2020) with GFL's soft targets.

Index convention: B images, M ground truths per image (padded), R real ground truths of the
batch (flattened), A anchor points, L pyramid levels, K = sum over levels of min(topk, A_l)
candidates per GT. Boxes are xyxy pixels.

ATSS reasons about anchor *boxes*; an anchor-free head has points, so each point gets the box
that GFL/ATSS's anchor generator gives it with ``octave_base_scale=8, scales_per_octave=1``:
a square of side ``anchor_scale * stride`` (8 strides by default) centred on the point.

Per real GT:
- candidates: on every level, the ``topk`` anchor points closest to the GT centre (Euclidean);
- threshold = mean + std of the candidates' IoU(anchor box, GT), std unbiased (``torch.std``'s
  default, as mmdetection uses; with a single candidate the std is taken as 0);
- positives: candidates with IoU >= threshold whose point lies strictly inside the GT box
  (all four distances > ``eps``);
- an anchor positive for several GTs goes to the highest anchor-box IoU (lowest GT on a tie).
The soft target is GFL's QFL target: IoU(predicted box, assigned GT) on the GT's class.
"""
from __future__ import annotations

import torch
from torch import Tensor

from detector.assigners.base import AssignResult
from detector.assigners.tal import (
    at_least_float32,
    background_result,
    build_result,
    check_inputs,
    default_chunk,
    real_gt_rows,
    resolve_claims,
)
from detector.boxes import aligned_iou


class ATSSAssigner:
    """ATSS on anchor points; see the module docstring for the exact rules.

    Args:
        num_classes: C; label ``num_classes`` marks background.
        topk: candidates per level and GT.
        eps: strict-inside margin (px) of the centre test.
        anchor_scale: side of an anchor point's box, in strides.
        max_chunk_elements: bound on (GT row x anchor) entries held at once (memory only);
            None: ``tal.default_chunk``.
    """

    def __init__(
        self,
        num_classes: int,
        topk: int = 9,
        eps: float = 1e-9,
        anchor_scale: float = 8.0,
        max_chunk_elements: int | None = None,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"ATSSAssigner: num_classes must be >= 1, got {num_classes}")
        if topk < 1:
            raise ValueError(f"ATSSAssigner: topk must be >= 1, got {topk}")
        if anchor_scale <= 0:
            raise ValueError(f"ATSSAssigner: anchor_scale must be > 0, got {anchor_scale}")
        self.num_classes = num_classes
        self.topk = topk
        self.eps = eps
        self.anchor_scale = anchor_scale
        if max_chunk_elements is not None and max_chunk_elements < 1:
            raise ValueError(f"ATSSAssigner: max_chunk_elements must be >= 1, got {max_chunk_elements}")
        self.max_chunk_elements = max_chunk_elements

    def __repr__(self) -> str:
        return (f"ATSSAssigner(num_classes={self.num_classes}, topk={self.topk}, eps={self.eps}, "
                f"anchor_scale={self.anchor_scale})")

    @torch.no_grad()
    def __call__(
        self,
        pred_scores: Tensor,
        pred_bboxes: Tensor,
        anchor_points: Tensor,
        gt_labels: Tensor,
        gt_bboxes: Tensor,
        gt_mask: Tensor,
        strides: Tensor | None = None,
    ) -> AssignResult:
        if strides is None:
            raise ValueError("ATSSAssigner: strides [A] is required (candidates are picked per level "
                             "and anchor boxes are 8 strides wide); pass strides=HeadOutput.strides")
        check_inputs("ATSSAssigner", self.num_classes, pred_scores, pred_bboxes, anchor_points,
                     gt_labels, gt_bboxes, gt_mask, strides)
        num_anchors = anchor_points.shape[0]
        rows = real_gt_rows(gt_labels, gt_bboxes, gt_mask)
        if rows.count == 0:
            return background_result(pred_scores, gt_bboxes, self.num_classes)

        points = at_least_float32(anchor_points)
        half = 0.5 * self.anchor_scale * at_least_float32(strides)[:, None]  # [A, 1] px
        anchor_boxes = torch.cat((points - half, points + half), dim=1)  # [A, 4]
        levels = [(strides == s).nonzero(as_tuple=True)[0] for s in strides.unique()]  # anchor ids per level

        boxes_all = at_least_float32(rows.boxes)
        centres_all = (boxes_all[:, :2] + boxes_all[:, 2:]) / 2  # [R, 2]
        chunk = max(1, (self.max_chunk_elements or default_chunk(pred_scores.device)) // num_anchors)
        pos_row, pos_anchor, pos_iou = [], [], []
        for start in range(0, rows.count, chunk):
            boxes, centres = boxes_all[start : start + chunk], centres_all[start : start + chunk]
            candidates = []
            for level in levels:
                dist2 = (centres[:, None, :] - points[level][None]).pow(2).sum(-1)  # [r, A_l]
                nearest = dist2.topk(min(self.topk, level.numel()), dim=1, largest=False).indices
                candidates.append(level[nearest])
            candidates = torch.cat(candidates, dim=1)  # [r, K] anchor ids
            iou = aligned_iou(anchor_boxes[candidates], boxes[:, None, :], kind="iou")  # [r, K]
            correction = 1 if iou.shape[1] > 1 else 0
            threshold = iou.mean(dim=1) + iou.std(dim=1, correction=correction)  # [r]
            cand_points = points[candidates]  # [r, K, 2]
            inside = torch.cat((cand_points - boxes[:, None, :2], boxes[:, None, 2:] - cand_points), dim=-1)
            positive = (iou >= threshold[:, None]) & (inside.amin(dim=-1) > self.eps)  # [r, K]
            hit_row, hit_k = positive.nonzero(as_tuple=True)
            pos_row.append(hit_row + start)
            pos_anchor.append(candidates[hit_row, hit_k])
            pos_iou.append(iou[hit_row, hit_k])

        pos_row, pos_anchor, pos_iou = torch.cat(pos_row), torch.cat(pos_anchor), torch.cat(pos_iou)
        keep = resolve_claims(rows.image[pos_row] * num_anchors + pos_anchor, pos_row, pos_iou)
        pos_row, pos_anchor = pos_row[keep], pos_anchor[keep]
        quality = aligned_iou(at_least_float32(pred_bboxes[rows.image[pos_row], pos_anchor]),
                              boxes_all[pos_row], kind="iou")
        return build_result(pred_scores, gt_bboxes, self.num_classes, rows, pos_row, pos_anchor, quality)
