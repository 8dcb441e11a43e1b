"""Label assignment: which anchor learns which ground truth, and with what soft target.

All assigners share one call, ``(pred_scores [B,A,C] probabilities, pred_bboxes [B,A,4] xyxy px,
anchor_points [A,2] px, gt_labels [B,M], gt_bboxes [B,M,4] xyxy px, gt_mask [B,M] bool,
strides=[A] px) -> AssignResult``, so the criterion can swap them by name.
"""
from detector.assigners.atss import ATSSAssigner
from detector.assigners.base import AssignResult
from detector.assigners.simota import SimOTAAssigner
from detector.assigners.tal import TaskAlignedAssigner

__all__ = ["AssignResult", "ATSSAssigner", "SimOTAAssigner", "TaskAlignedAssigner"]
