"""Evaluation: the official COCO metric, score-IoU consistency, pictures."""
from detector.eval.coco import coco_evaluate, coco_metrics
from detector.eval.consistency import score_iou_consistency

__all__ = ["coco_metrics", "coco_evaluate", "score_iou_consistency"]
