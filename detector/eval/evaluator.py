"""Run a model over a letterboxed loader and score it: COCO metrics, per-class AP, consistency."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from detector.boxes import xyxy_to_xywh
from detector.eval.coco import coco_evaluate, load_gt
from detector.eval.consistency import correlations, matched_score_iou


@dataclass
class EvalResult:
    metrics: dict  # the 12 COCO numbers + spearman, pearson
    per_class: dict  # class name -> AP@[.5:.95]
    detections: list = field(default_factory=list)
    precision: np.ndarray | None = None
    score_iou: tuple = (np.zeros(0), np.zeros(0))


def to_coco_detections(predictions: list[dict], image_ids, letterbox, orig_sizes, category_ids) -> list[dict]:
    """Map boxes from the letterboxed image back to original pixels, labels to category ids.

    letterbox [B, 3] (scale, pad_x, pad_y): original = (box - [pad_x, pad_y, pad_x, pad_y]) / scale,
    clipped to the original (H, W) of orig_sizes [B, 2].
    """
    results = []
    for pred, image_id, (scale, pad_x, pad_y), (height, width) in zip(
            predictions, image_ids.tolist(), letterbox.tolist(), orig_sizes.tolist()):
        boxes = pred["boxes"].detach().float().cpu()
        boxes = (boxes - torch.tensor([pad_x, pad_y, pad_x, pad_y])) / scale
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        for box, score, label in zip(xyxy_to_xywh(boxes).tolist(), pred["scores"].tolist(), pred["labels"].tolist()):
            results.append({"image_id": int(image_id), "category_id": int(category_ids[label]),
                            "bbox": [round(v, 3) for v in box], "score": round(float(score), 5)})
    return results


@torch.no_grad()
def predict_loader(model, loader, category_ids, device="cpu", conf=0.001, iou=0.7, max_det=300, amp=False,
                   progress=True) -> list[dict]:
    device = torch.device(device)
    detections = []
    for batch in tqdm(loader, desc="eval", disable=not progress, leave=False):
        images = batch["images"].to(device).float() / 255
        with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            predictions = model.predict(images, conf=conf, iou=iou, max_det=max_det)
        detections += to_coco_detections(predictions, batch["image_ids"], batch["letterbox"], batch["orig_sizes"],
                                         category_ids)
    return detections


def score_detections(ann_file, detections: list[dict], backend: str = "faster") -> EvalResult:
    gt = load_gt(ann_file)
    result = coco_evaluate(gt, detections, backend=backend)
    scores, ious = matched_score_iou(gt, detections)
    consistency = correlations(scores, ious)
    names = {c["id"]: c["name"] for c in gt.get("categories", [])}
    metrics = {**result.stats, "spearman": consistency["spearman"], "pearson": consistency["pearson"]}
    per_class = {names.get(cat, str(cat)): ap for cat, ap in result.per_class.items()}
    return EvalResult(metrics, per_class, detections, result.precision, (scores, ious))


def evaluate(model, loader, ann_file, category_ids, device="cpu", conf=0.001, iou=0.7, max_det=300,
             backend="faster", amp=False, progress=True) -> EvalResult:
    """Predict over ``loader`` (collate_detection batches of letterboxed images) and score the
    detections against the COCO json ``ann_file``."""
    detections = predict_loader(model, loader, category_ids, device, conf, iou, max_det, amp, progress)
    return score_detections(ann_file, detections, backend)
