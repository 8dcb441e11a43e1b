"""Classification-localisation consistency: does a detection's score rank its box quality?

GFL and VarifocalNet train the class score to be the IoU, so that NMS and AP ranking keep the
best-localised box. For every detection we take its IoU with the best-matching non-crowd GT of
its class in the same image (0 when there is none: a confident false positive counts against
consistency) and report Spearman and Pearson correlation between scores and those IoUs.
Fewer than 2 detections, or constant scores or IoUs, give 0.0 (no NaN).
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from scipy import stats
from torchvision.ops import box_iou

from detector.boxes import xywh_to_xyxy
from detector.eval.coco import load_gt


def matched_score_iou(gt, detections: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(scores [N], best same-class IoU [N]) for the N detections."""
    gt_boxes = defaultdict(list)
    for ann in load_gt(gt).get("annotations", []):
        if not ann.get("iscrowd", 0):
            gt_boxes[(ann["image_id"], ann["category_id"])].append(ann["bbox"])
    by_key = defaultdict(list)
    for index, det in enumerate(detections):
        by_key[(det["image_id"], det["category_id"])].append(index)
    scores = np.array([d["score"] for d in detections], dtype=np.float64)
    ious = np.zeros(len(detections), dtype=np.float64)
    for key, indices in by_key.items():
        if key not in gt_boxes:
            continue
        pred = xywh_to_xyxy(torch.tensor([detections[i]["bbox"] for i in indices], dtype=torch.float64))
        target = xywh_to_xyxy(torch.tensor(gt_boxes[key], dtype=torch.float64))
        ious[indices] = box_iou(pred, target).max(dim=1).values.numpy()
    return scores, ious


def correlations(scores: np.ndarray, ious: np.ndarray) -> dict[str, float]:
    if len(scores) < 2 or np.ptp(scores) == 0 or np.ptp(ious) == 0:
        return {"spearman": 0.0, "pearson": 0.0, "num_pairs": int(len(scores))}
    return {"spearman": float(stats.spearmanr(scores, ious).statistic),
            "pearson": float(stats.pearsonr(scores, ious).statistic), "num_pairs": int(len(scores))}


def score_iou_consistency(gt, detections: list[dict]) -> dict[str, float]:
    return correlations(*matched_score_iou(gt, detections))
