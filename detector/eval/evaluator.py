"""Run a model over a letterboxed loader and score it: COCO metrics, per-class AP, consistency.

The ground truth scored is that of the images the loader gave, and only those: a val image that
could not be decoded (left out of its batch, detector/data/base.py) and an image of the json that
is not in the data set (missing on disk) leave the metric with their boxes, and the log says how
many and which, instead of their objects counting as missed. A val set without a labelled
(non-crowd) box has no AP: the metrics are then NaN and the log says so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from detector.boxes import xyxy_to_xywh
from detector.data.index import warn_once
from detector.eval.coco import METRIC_NAMES, coco_evaluate, load_gt
from detector.eval.consistency import correlations
from detector.eval.diagnostics import expected_calibration_error, scores_and_best_ious

NO_BOXES = "the val set has no labelled boxes: AP is undefined"


@dataclass
class EvalResult:
    metrics: dict  # the 12 COCO numbers + spearman, pearson, ECE
    per_class: dict  # class name -> AP@[.5:.95]
    detections: list = field(default_factory=list)
    precision: np.ndarray | None = None
    score_iou: tuple = (np.zeros(0), np.zeros(0))
    left_out: list = field(default_factory=list)  # "path: reason" of the val images left out of the metric
    undefined: str | None = None  # why the metrics are NaN (NO_BOXES), else None
    not_scored: int = 0  # images of the json left out of the metric (the left_out ones and any not in the data set)
    gt: dict | None = None  # the COCO dict scored against (only the images scored): for detector/eval/diagnostics.py


@dataclass
class LoaderPredictions:
    detections: list[dict]  # COCO result dicts
    image_ids: list[int]  # every image predicted, in loader order
    left_out: list[str]  # "path: reason" of the images the loader could not give


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


def predict_loader(model, loader, category_ids, device="cpu", conf=0.001, iou=0.7, max_det=300, amp=False,
                   progress=True) -> list[dict]:
    """The COCO result dicts of the model over ``loader`` (``run_loader`` without the bookkeeping)."""
    return run_loader(model, loader, category_ids, device, conf, iou, max_det, amp, progress).detections


@torch.no_grad()
def run_loader(model, loader, category_ids, device="cpu", conf=0.001, iou=0.7, max_det=300, amp=False,
               progress=True) -> LoaderPredictions:
    """The model over ``loader``: its detections, the images it saw and those the loader left out."""
    device = torch.device(device)
    detections, image_ids, left_out = [], [], []
    for batch in tqdm(loader, desc="eval", disable=not progress, leave=False):
        left_out += batch.get("left_out", [])
        if not len(batch["image_ids"]):  # every image of the batch left out
            continue
        images = batch["images"].to(device).float() / 255
        with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            predictions = model.predict(images, conf=conf, iou=iou, max_det=max_det)
        detections += to_coco_detections(predictions, batch["image_ids"], batch["letterbox"], batch["orig_sizes"],
                                         category_ids)
        image_ids += batch["image_ids"].tolist()
    return LoaderPredictions(detections, image_ids, left_out)


def restrict_gt(gt: dict, image_ids) -> tuple[dict, int]:
    """(``gt`` with only the images of ``image_ids`` and their annotations, how many images went);
    ``gt`` itself when none goes."""
    keep = set(int(i) for i in image_ids)
    images = [image for image in gt.get("images", []) if image["id"] in keep]
    removed = len(gt.get("images", [])) - len(images)
    if not removed:
        return gt, 0
    annotations = [ann for ann in gt.get("annotations", []) if ann["image_id"] in keep]
    return dict(gt, images=images, annotations=annotations), removed


def score_detections(ann_file, detections: list[dict], backend: str = "faster", image_ids=None) -> EvalResult:
    """The metrics of ``detections`` against the COCO json ``ann_file``, restricted to the images of
    ``image_ids`` when given (the others counted in the log); NaN, and ``undefined`` set, when the
    ground truth holds no labelled (non-crowd) box."""
    gt, removed = load_gt(ann_file), 0
    if image_ids is not None:
        gt, removed = restrict_gt(gt, image_ids)
    result = coco_evaluate(gt, detections, backend=backend)
    scores, ious = scores_and_best_ious(gt, detections)  # consistency.matched_score_iou's numbers, vectorised
    consistency = correlations(scores, ious)
    names = {c["id"]: c["name"] for c in gt.get("categories", [])}
    metrics = {**result.stats, "spearman": consistency["spearman"], "pearson": consistency["pearson"],
               "ECE": expected_calibration_error(scores, ious)}
    undefined = None
    if not any(not ann.get("iscrowd", 0) for ann in gt.get("annotations", [])):
        undefined = NO_BOXES
        metrics.update({name: math.nan for name in METRIC_NAMES})
    per_class = {names.get(cat, str(cat)): ap for cat, ap in result.per_class.items()}
    return EvalResult(metrics, per_class, detections, result.precision, (scores, ious), undefined=undefined,
                      not_scored=removed, gt=gt)


def plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def report_left_out(result: EvalResult, ann_file) -> None:
    """A warning naming the val images left out of the metric, with their boxes, and one counting
    the json's images that are not in the data set (once per process for the same words)."""
    left_out = result.left_out
    if left_out:
        shown = ", ".join(left_out[:5]) + (f" (+{len(left_out) - 5} more)" if len(left_out) > 5 else "")
        verb = "was" if len(left_out) == 1 else "were"
        warn_once(f"{plural(len(left_out), 'val image', 'val images')} could not be decoded and {verb} left out "
                  f"of the metric: {shown}")
    others = result.not_scored - len(left_out)
    if others > 0:
        warn_once(f"{ann_file}: {plural(others, 'image is', 'images are')} not in the val set (missing on disk "
                  "or unreadable: see the bad-input report) and left out of the metric with their boxes")


def evaluate(model, loader, ann_file, category_ids, device="cpu", conf=0.001, iou=0.7, max_det=300,
             backend="faster", amp=False, progress=True) -> EvalResult:
    """Predict over ``loader`` (collate_detection batches of letterboxed images) and score the
    detections against the COCO json ``ann_file``, on the images the loader gave (see the module
    docstring)."""
    predictions = run_loader(model, loader, category_ids, device, conf, iou, max_det, amp, progress)
    result = score_detections(ann_file, predictions.detections, backend, image_ids=predictions.image_ids)
    result.left_out = predictions.left_out
    report_left_out(result, ann_file)
    if result.undefined:
        warn_once(f"{ann_file}: {result.undefined}")
    return result
