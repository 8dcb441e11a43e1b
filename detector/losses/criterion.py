"""The detection criterion: assignment, then classification, box and DFL losses.

Index convention: B images, M ground truths per image (padded, ``gt_mask`` marks real ones),
A anchor points, C classes, R = reg_max bins. Boxes are xyxy in pixels unless noted.

Normalisation follows YOLOv8/GFL: every loss is summed and divided by the sum of the soft
classification targets (at least 1), and the box and DFL terms of each positive anchor are
weighted by its target score, so that well-localised positives count more.
"""
from __future__ import annotations

from torch import Tensor, nn

from detector.boxes import bbox2dist, decode_boxes
from detector.models.head import HeadOutput


class DetectionCriterion(nn.Module):
    """Returns ``{"loss_cls", "loss_box", "loss_dfl", "loss"}``: three unweighted losses and the
    weighted total. ``weights`` holds each term's factor (carried by the loss options) so that the
    engine can log scaled and unscaled values.

    Args:
        assigner: called as ``(pred_scores, pred_bboxes, anchor_points, gt_labels, gt_bboxes,
            gt_mask, strides=...)`` and returning an ``AssignResult``.
        cls_loss: elementwise ``(logits [B,A,C], soft targets [B,A,C]) -> [B,A,C]``.
        box_loss: elementwise ``(pred [N,4], target [N,4]) -> [N]``.
        dfl_loss: elementwise ``(pred_dist [N,4,R], target [N,4] in bins) -> [N,4]``, or None for
            a head without a distribution branch (reg_max == 1).
    """

    def __init__(self, *, assigner, cls_loss: nn.Module, box_loss: nn.Module, dfl_loss: nn.Module | None = None):
        super().__init__()
        self.assigner = assigner
        self.cls_loss, self.box_loss, self.dfl_loss = cls_loss, box_loss, dfl_loss
        self.weights = {"loss_cls": float(cls_loss.loss_weight), "loss_box": float(box_loss.loss_weight),
                        "loss_dfl": float(dfl_loss.loss_weight) if dfl_loss is not None else 0.0}

    def forward(self, outputs: HeadOutput, gt_labels: Tensor, gt_bboxes: Tensor, gt_mask: Tensor) -> dict[str, Tensor]:
        cls_logits = outputs.cls_logits.float()  # [B, A, C]
        box_dist = outputs.box_dist.float()  # [B, A, 4, R]
        anchor_points, strides = outputs.anchor_points, outputs.strides  # [A, 2] px, [A] px
        reg_max = box_dist.shape[-1]
        if self.dfl_loss is not None and reg_max == 1:
            raise ValueError("DetectionCriterion: a DFL loss needs a distribution head (reg_max > 1); "
                             "use dfl=off, which sets model.reg_max=1 and drops the DFL loss together")

        pred_bboxes = decode_boxes(box_dist, anchor_points, strides)  # [B, A, 4] px
        assigned = self.assigner(
            cls_logits.detach().sigmoid(), pred_bboxes.detach(), anchor_points,
            gt_labels, gt_bboxes.float(), gt_mask, strides=strides,
        )
        target_scores = assigned.scores.to(cls_logits.dtype)  # [B, A, C]
        normaliser = target_scores.sum().clamp(min=1.0)

        loss_cls = self.cls_loss(cls_logits, target_scores).sum() / normaliser

        fg = assigned.fg_mask  # [B, A]
        weight = target_scores.sum(-1)[fg]  # [N] target score of each positive
        loss_box = (self.box_loss(pred_bboxes[fg], assigned.bboxes[fg]) * weight).sum() / normaliser
        loss_dfl = loss_box.new_zeros(())
        if self.dfl_loss is not None:
            stride = strides[None].expand_as(fg)[fg][:, None]  # [N, 1]
            anchors = anchor_points[None].expand(*fg.shape, 2)[fg]  # [N, 2] px
            target_dist = bbox2dist(anchors / stride, assigned.bboxes[fg] / stride, reg_max)  # [N, 4] bins
            per_side = self.dfl_loss(box_dist[fg], target_dist)  # [N, 4]
            loss_dfl = (per_side.mean(-1) * weight).sum() / normaliser

        losses = {"loss_cls": loss_cls, "loss_box": loss_box, "loss_dfl": loss_dfl}
        losses["loss"] = sum(self.weights[name] * value for name, value in losses.items())
        return losses
