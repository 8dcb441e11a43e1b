"""SimOTA (YOLOX, Ge et al. 2021): optimal-transport-like assignment with a dynamic k per GT.

Index convention: B images, M ground truths per image (padded), G real ground truths of one
image, A anchor points, N candidate anchors of one image, C classes. Boxes are xyxy pixels.

Per image:
- centre prior: an anchor is a candidate if its point lies inside some real GT box or within
  ``center_radius`` strides of some GT centre (both tests strict); only candidates are scored,
  which bounds memory by G x N instead of G x A x C (and GTs go in chunks of rows);
- cost[g, n] = cls_weight * sum_c BCE(p[n, c], onehot(label_g)[c])
             + iou_weight * -log(IoU(pred box n, GT g) + 1e-8)
             + 1e5 if anchor n is not both inside GT g and in its centre region;
  BCE logs are clamped at -100 as ``torch.nn.functional.binary_cross_entropy`` does;
- dynamic k of GT g = max(1, int(sum of its ``candidate_topk`` largest IoUs over candidates));
  GT g takes its k lowest-cost candidates;
- an anchor taken by several GTs keeps the claimant of lowest cost (lowest GT on a tie).
The soft target is IoU(predicted box, assigned GT) on the GT's class, as YOLOX's cls target.

Unlike YOLOX, the class cost uses the predicted class probabilities alone (no objectness
branch), and a multiply-claimed anchor picks among its claimants only (YOLOX's argmin runs over
all GTs, so it can hand the anchor to a GT that never selected it).
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
    points_inside_boxes,
    real_gt_rows,
    resolve_claims,
)
from detector.boxes import aligned_iou

OUTSIDE_PRIOR_COST = 1e5


class SimOTAAssigner:
    """SimOTA; see the module docstring for the exact rules.

    Args:
        num_classes: C; label ``num_classes`` marks background.
        center_radius: half side of the centre region, in strides.
        candidate_topk: number of best IoUs summed into the dynamic k.
        iou_weight: weight of the -log IoU cost.
        cls_weight: weight of the classification (BCE) cost.
    """

    def __init__(
        self,
        num_classes: int,
        center_radius: float = 2.5,
        candidate_topk: int = 10,
        iou_weight: float = 3.0,
        cls_weight: float = 1.0,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"SimOTAAssigner: num_classes must be >= 1, got {num_classes}")
        if center_radius <= 0:
            raise ValueError(f"SimOTAAssigner: center_radius must be > 0, got {center_radius}")
        if candidate_topk < 1:
            raise ValueError(f"SimOTAAssigner: candidate_topk must be >= 1, got {candidate_topk}")
        self.num_classes = num_classes
        self.center_radius = center_radius
        self.candidate_topk = candidate_topk
        self.iou_weight = iou_weight
        self.cls_weight = cls_weight

    def __repr__(self) -> str:
        return (f"SimOTAAssigner(num_classes={self.num_classes}, center_radius={self.center_radius}, "
                f"candidate_topk={self.candidate_topk}, iou_weight={self.iou_weight}, "
                f"cls_weight={self.cls_weight})")

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
            raise ValueError("SimOTAAssigner: strides [A] is required (the centre radius is "
                             f"{self.center_radius} strides); pass strides=HeadOutput.strides")
        check_inputs("SimOTAAssigner", self.num_classes, pred_scores, pred_bboxes, anchor_points,
                     gt_labels, gt_bboxes, gt_mask, strides)
        num_anchors = anchor_points.shape[0]
        rows = real_gt_rows(gt_labels, gt_bboxes, gt_mask)
        if rows.count == 0:
            return background_result(pred_scores, gt_bboxes, self.num_classes)

        points = at_least_float32(anchor_points)
        radius = self.center_radius * at_least_float32(strides)  # [A] px
        boxes_all = at_least_float32(rows.boxes)
        chunk = max(1, default_chunk(pred_scores.device) // num_anchors)
        pos_row, pos_anchor, pos_cost, pos_iou = [], [], [], []
        for image in rows.image.unique().tolist():
            row_ids = (rows.image == image).nonzero(as_tuple=True)[0]  # [G] rows of this image
            is_cand = torch.zeros(num_anchors, dtype=torch.bool, device=points.device)
            for start in range(0, row_ids.numel(), chunk):
                in_box, in_centre = self._prior(points, radius, boxes_all[row_ids[start : start + chunk]])
                is_cand |= (in_box | in_centre).any(dim=0)
            cand = is_cand.nonzero(as_tuple=True)[0]  # [N] anchor ids
            if cand.numel() == 0:
                continue
            cand_boxes = at_least_float32(pred_bboxes[image, cand])  # [N, 4]
            prob = at_least_float32(pred_scores[image, cand])  # [N, C]
            log_p, log_not_p = prob.log().clamp(min=-100), torch.log1p(-prob).clamp(min=-100)
            all_negative = -log_not_p.sum(dim=1)  # [N]
            for start in range(0, row_ids.numel(), chunk):
                rows_here = row_ids[start : start + chunk]  # [g]
                boxes, labels = boxes_all[rows_here], rows.labels[rows_here]
                in_box, in_centre = self._prior(points[cand], radius[cand], boxes)  # [g, N]
                iou = aligned_iou(cand_boxes[None], boxes[:, None], kind="iou")  # [g, N]
                # sum_c BCE(p_c, onehot_c) = sum_c -log(1 - p_c) - log(p_y) + log(1 - p_y), no [g, N, C].
                cls_cost = all_negative[None] - log_p[:, labels].T + log_not_p[:, labels].T  # [g, N]
                cost = (self.cls_weight * cls_cost + self.iou_weight * -torch.log(iou + 1e-8)
                        + OUTSIDE_PRIOR_COST * ~(in_box & in_centre))  # [g, N]

                best_ious = iou.topk(min(self.candidate_topk, cand.numel()), dim=1).values  # [g, k]
                dynamic_k = best_ious.sum(dim=1).int().clamp(min=1)  # [g]
                cheapest = cost.topk(int(dynamic_k.max()), dim=1, largest=False).indices  # [g, k_max]
                taken = torch.arange(cheapest.shape[1], device=cost.device)[None] < dynamic_k[:, None]
                gt_local, rank = taken.nonzero(as_tuple=True)
                cand_local = cheapest[gt_local, rank]
                pos_row.append(rows_here[gt_local])
                pos_anchor.append(cand[cand_local])
                pos_cost.append(cost[gt_local, cand_local])
                pos_iou.append(iou[gt_local, cand_local])

        if not pos_row:
            return background_result(pred_scores, gt_bboxes, self.num_classes)
        pos_row, pos_anchor = torch.cat(pos_row), torch.cat(pos_anchor)
        pos_cost, pos_iou = torch.cat(pos_cost), torch.cat(pos_iou)
        keep = resolve_claims(rows.image[pos_row] * num_anchors + pos_anchor, pos_row, -pos_cost)
        return build_result(pred_scores, gt_bboxes, self.num_classes, rows, pos_row[keep], pos_anchor[keep],
                            pos_iou[keep])

    def _prior(self, points: Tensor, radius: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
        """points [N, 2], radius [N] px, boxes [g, 4] -> (inside the box, in the centre region), [g, N]."""
        in_box = points_inside_boxes(points, boxes, 0.0)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # [g, 2]
        in_centre = (points[None, :, 0] - centres[:, :1]).abs() < radius
        in_centre &= (points[None, :, 1] - centres[:, 1:]).abs() < radius
        return in_box, in_centre
