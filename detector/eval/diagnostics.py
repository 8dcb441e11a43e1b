"""Val diagnostics from COCO-format detections and ground truth: what a user reads after a run.

- A confusion matrix with a background class, by ultralytics' rule: the detections with score
  above 0.25, matched one-to-one to ground truth of any class at IoU above 0.45, greedily by IoU.
  Rows are the true class, columns the predicted one; a missed GT is counted in the background
  column, a detection on nothing in the background row (ultralytics draws the transpose).
- Precision, recall and F1 of each class against the confidence threshold at IoU 0.5, with
  COCO's matching (detections in score order, each taking the unmatched same-class GT of highest
  IoU >= 0.5): the detections kept at a threshold match exactly as they would alone.
- A per-class table: P, R and F1 at the F1-optimal confidence (the one that maximises F1 averaged
  over the classes with ground truth, the threshold ultralytics' val reports P and R at), AP50 and
  AP from COCOeval's precision array (the official numbers) and each class's own F1-optimal
  confidence.
- Score calibration: each detection's score against its IoU with the best same-class GT (0 when
  there is none; detector/eval/consistency.py), in bins of score, and the expected calibration
  error ECE = sum_b (n_b / N) |mean score_b - mean IoU_b|.

"At confidence t" means the detections with score > t, those ``Detector.predict(conf=t)`` keeps.
Crowd GT is left out: a detection on a crowd region counts as a false positive here (COCO
ignores it). A detection of a category the json lacks, or of an image it lacks, is dropped.
Scores are taken to lie in [0, 1] (sigmoid outputs); the curves and bins clip them there.

Index convention: D detections, G ground truths (non-crowd), P candidate pairs (same image), K
classes (the json's categories in id order: the data sets' contiguous labels), T confidence
thresholds, B calibration bins. Boxes are xyxy pixels of the original image.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detector.eval.coco import load_gt

CONFUSION_CONF = 0.25  # ultralytics' ConfusionMatrix defaults
CONFUSION_IOU = 0.45
MATCH_IOU = 0.5  # the IoU of the P, R and F1 curves (AP50's)
CONF_GRID = np.linspace(0.0, 1.0, 1000)  # [T] thresholds of the curves
CALIBRATION_BINS = 10
VAL_BATCHES, VAL_BATCH_SIZE = 3, 4


@dataclass
class Boxes:
    """Boxes of every image as flat arrays: ground truth or detections."""
    image_ids: np.ndarray  # [N] int64
    labels: np.ndarray  # [N] int64 class index, 0..K-1
    boxes: np.ndarray  # [N, 4] float64 xyxy px
    scores: np.ndarray  # [N] float64 (1 for ground truth)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, keep: np.ndarray) -> Boxes:
        return Boxes(self.image_ids[keep], self.labels[keep], self.boxes[keep], self.scores[keep])


def xywh_to_xyxy(xywh) -> np.ndarray:
    boxes = np.array(xywh, dtype=np.float64).reshape(-1, 4)  # [N, 4]
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def ground_truth_boxes(gt: dict) -> tuple[Boxes, list[int]]:
    """(the non-crowd boxes of the COCO dict ``gt``, its category ids in id order: label k is
    category ``cat_ids[k]``)."""
    cat_ids = sorted(int(c["id"]) for c in gt.get("categories", []))
    anns = [a for a in gt.get("annotations", []) if not a.get("iscrowd", 0)]
    labels = np.searchsorted(np.asarray(cat_ids, np.int64), np.array([a["category_id"] for a in anns], np.int64))
    return Boxes(np.array([a["image_id"] for a in anns], np.int64), labels.astype(np.int64),
                 xywh_to_xyxy([a["bbox"] for a in anns]), np.ones(len(anns))), cat_ids


def detection_boxes(detections: list[dict], cat_ids: list[int]) -> Boxes:
    """The COCO result dicts as Boxes; a category not in ``cat_ids`` gets label K (no GT has it)."""
    cats = np.array([d["category_id"] for d in detections], np.int64)
    known = np.asarray(cat_ids, np.int64)
    labels = np.searchsorted(known, cats)
    found = labels < len(known)
    found[found] = known[labels[found]] == cats[found]
    labels[~found] = len(known)
    return Boxes(np.array([d["image_id"] for d in detections], np.int64), labels.astype(np.int64),
                 xywh_to_xyxy([d["bbox"] for d in detections]), np.array([d["score"] for d in detections], np.float64))


def scores_and_best_ious(gt, detections: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(scores [D], IoU with the best same-class GT of the same image [D], 0 when none) of every
    detection in order: consistency.matched_score_iou without its loop over (image, class)."""
    truth, cat_ids = ground_truth_boxes(load_gt(gt))
    dets = detection_boxes(detections, cat_ids)
    return dets.scores, best_same_class_iou(truth, dets, len(cat_ids) + 1)


def same_key_pairs(det_keys: np.ndarray, gt_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(detection index [P], GT index [P]): every pair whose keys are equal (an image id, or an
    image and class), without a Python loop."""
    order = np.argsort(gt_keys, kind="stable")
    sorted_keys = gt_keys[order]
    start = np.searchsorted(sorted_keys, det_keys, "left")  # [D]
    counts = np.searchsorted(sorted_keys, det_keys, "right") - start  # [D] GTs sharing each detection's key
    det_index = np.repeat(np.arange(len(det_keys)), counts)  # [P]
    within = np.arange(len(det_index)) - np.repeat(np.cumsum(counts) - counts, counts)
    return det_index, order[np.repeat(start, counts) + within]


def pair_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of aligned xyxy boxes [P, 4], [P, 4] -> [P]; 0 for boxes without area."""
    inter = np.prod(np.clip(np.minimum(a[:, 2:], b[:, 2:]) - np.maximum(a[:, :2], b[:, :2]), 0, None), axis=1)
    union = np.prod(a[:, 2:] - a[:, :2], axis=1) + np.prod(b[:, 2:] - b[:, :2], axis=1) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _first_of_run(keys: np.ndarray) -> np.ndarray:
    first = np.ones(len(keys), bool)
    first[1:] = keys[1:] != keys[:-1]
    return first


def greedy_match(det_index, gt_index, iou, det_rank=None) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matches among candidate pairs [P], as a sequential greedy makes them: with
    ``det_rank`` [D] (0 first), detections in rank order each take the remaining GT of highest IoU
    (COCO's rule); without, pairs are taken in decreasing IoU. Returns (detection [M], GT [M]).

    In rounds of numpy: a pair is taken when its GT is its detection's best remaining one and its
    detection the GT's first remaining claimant (by rank, or by IoU); the greedy would take it, and
    every round takes at least the pair the greedy takes next. Ties go to the earlier pair."""
    det_index, gt_index, iou = np.asarray(det_index), np.asarray(gt_index), np.asarray(iou, np.float64)
    matched_det, matched_gt = [], []
    while len(det_index):
        by_det = np.lexsort((-iou, det_index))  # stable: pairs by detection, best IoU first
        preferred = np.zeros(len(det_index), bool)
        preferred[by_det[_first_of_run(det_index[by_det])]] = True
        priority = -iou if det_rank is None else det_rank[det_index]
        by_gt = np.lexsort((priority, gt_index))
        claimed = np.zeros(len(det_index), bool)
        claimed[by_gt[_first_of_run(gt_index[by_gt])]] = True
        taken = preferred & claimed
        if not taken.any():  # cannot happen (see above); a guard against looping forever
            break
        matched_det.append(det_index[taken])
        matched_gt.append(gt_index[taken])
        left = ~(np.isin(det_index, det_index[taken]) | np.isin(gt_index, gt_index[taken]))
        det_index, gt_index, iou = det_index[left], gt_index[left], iou[left]
    empty = np.zeros(0, np.int64)
    return (np.concatenate(matched_det) if matched_det else empty,
            np.concatenate(matched_gt) if matched_gt else empty)


def confusion_matrix(gt: Boxes, dets: Boxes, num_classes: int, conf: float = CONFUSION_CONF,
                     iou: float = CONFUSION_IOU) -> np.ndarray:
    """[K+1, K+1] counts, rows the true class and columns the predicted one, index K background:
    detections with score > ``conf`` matched to GT of any class at IoU > ``iou`` (greedily by IoU);
    a missed GT goes to [its class, K], an unmatched detection to [K, its class]."""
    k = num_classes
    dets = dets.subset(dets.scores > conf)
    det_index, gt_index = same_key_pairs(dets.image_ids, gt.image_ids)
    overlap = pair_iou(dets.boxes[det_index], gt.boxes[gt_index])
    close = overlap > iou
    matched_det, matched_gt = greedy_match(det_index[close], gt_index[close], overlap[close])
    predicted = np.full(len(gt), k, np.int64)  # every GT, missed (background) unless matched
    predicted[matched_gt] = dets.labels[matched_det]
    unmatched = np.ones(len(dets), bool)
    unmatched[matched_det] = False
    true = np.concatenate([gt.labels, np.full(int(unmatched.sum()), k, np.int64)])  # then the unmatched detections
    predicted = np.concatenate([predicted, dets.labels[unmatched]])
    return np.bincount(true * (k + 1) + predicted, minlength=(k + 1) ** 2).reshape(k + 1, k + 1)


def normalise(counts: np.ndarray, over: str = "true") -> np.ndarray:
    """The confusion matrix as fractions of each true class (rows: recall on the diagonal) or of
    each predicted class (``over="predicted"``, columns: precision on the diagonal); 0 for an empty one."""
    totals = counts.sum(axis=1 if over == "true" else 0, keepdims=True)
    return np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)


def true_positives(gt: Boxes, dets: Boxes, num_classes: int, iou: float = MATCH_IOU) -> np.ndarray:
    """[D] bool: detections matched to a same-class GT at IoU >= ``iou``, in score order (COCO)."""
    classes = max(num_classes, 1)
    det_index, gt_index = same_key_pairs(dets.image_ids * classes + dets.labels, gt.image_ids * classes + gt.labels)
    overlap = pair_iou(dets.boxes[det_index], gt.boxes[gt_index])
    close = overlap >= iou
    rank = np.empty(len(dets), np.int64)
    rank[np.argsort(-dets.scores, kind="stable")] = np.arange(len(dets))
    matched_det, _ = greedy_match(det_index[close], gt_index[close], overlap[close], det_rank=rank)
    tp = np.zeros(len(dets), bool)
    tp[matched_det] = True
    return tp


def best_same_class_iou(gt: Boxes, dets: Boxes, num_classes: int) -> np.ndarray:
    """[D] each detection's IoU with the best-overlapping GT of its class and image (0 when none);
    labels lie in 0..num_classes-1."""
    classes = max(num_classes, 1)
    det_index, gt_index = same_key_pairs(dets.image_ids * classes + dets.labels, gt.image_ids * classes + gt.labels)
    best = np.zeros(len(dets))
    np.maximum.at(best, det_index, pair_iou(dets.boxes[det_index], gt.boxes[gt_index]))
    return best


@dataclass
class Curves:
    """Precision, recall and F1 of each class against the confidence threshold."""
    conf: np.ndarray  # [T] thresholds: the detections with score > conf[t] count
    precision: np.ndarray  # [K, T]; 0 where no detection is kept
    recall: np.ndarray  # [K, T]; 0 for a class without GT
    f1: np.ndarray  # [K, T]
    num_gt: np.ndarray  # [K]


def confidence_curves(scores, labels, tp, num_gt, conf=CONF_GRID) -> Curves:
    """P, R and F1 of each class at each threshold of ``conf`` [T], from the detections' scores
    [D] in [0, 1], labels [D] and true-positive flags [D], and the GT count of each class [K]."""
    num_gt = np.asarray(num_gt, np.int64)
    k, conf = len(num_gt), np.asarray(conf, np.float64)
    key = np.asarray(labels, np.float64) * 2 + np.clip(scores, 0, 1)  # by class, then score
    order = np.argsort(key, kind="stable")
    key, hits = key[order], np.concatenate([[0], np.cumsum(np.asarray(tp, np.int64)[order])])
    end = np.searchsorted(key, np.arange(k) * 2.0 + 1.5)  # [K] one past each class's last detection
    first_kept = np.searchsorted(key, np.arange(k)[:, None] * 2.0 + conf[None, :], side="right")  # [K, T]
    kept = end[:, None] - first_kept
    found = hits[end][:, None] - hits[first_kept]
    precision = np.divide(found, kept, out=np.zeros(kept.shape), where=kept > 0)
    recall = np.divide(found, num_gt[:, None], out=np.zeros(kept.shape), where=num_gt[:, None] > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros(kept.shape), where=total > 0)
    return Curves(conf, precision, recall, f1, num_gt)


def precision_recall_at(scores, labels, tp, num_gt, conf: float) -> tuple[np.ndarray, np.ndarray]:
    """(P [K], R [K]) of the detections with score > ``conf``."""
    curves = confidence_curves(scores, labels, tp, num_gt, [conf])
    return curves.precision[:, 0], curves.recall[:, 0]


def f1_optimal(f1: np.ndarray, conf: np.ndarray = CONF_GRID) -> tuple[int, float]:
    """(index, threshold) of the highest F1 [T]: the middle of the first run of thresholds that
    reach it (thresholds between two scores keep the same detections); (0, NaN) when F1 is 0
    throughout, where no threshold is better than another."""
    f1 = np.asarray(f1)
    if not len(f1) or f1.max() <= 0:
        return 0, math.nan
    top = f1 >= f1.max() - 1e-12
    start = int(np.argmax(top))
    below = np.flatnonzero(~top[start:])
    end = start + int(below[0]) if len(below) else len(f1)
    index = (start + end - 1) // 2
    return index, float(conf[index])


@dataclass
class Calibration:
    """Reliability of the score as an estimate of the IoU, in bins of score."""
    edges: np.ndarray  # [B+1] bin edges over [0, 1]; a bin holds lo <= score < hi (the last also 1)
    count: np.ndarray  # [B]
    mean_score: np.ndarray  # [B], NaN for an empty bin
    mean_iou: np.ndarray  # [B], NaN for an empty bin
    ece: float  # sum_b (count_b / N) |mean_score_b - mean_iou_b|; 0 without detections


def calibration(scores, ious, bins: int = CALIBRATION_BINS) -> Calibration:
    scores, ious = np.asarray(scores, np.float64), np.asarray(ious, np.float64)
    which = np.clip(np.floor(scores * bins).astype(np.int64), 0, bins - 1)  # [D]
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_score = np.bincount(which, scores, minlength=bins) / count
        mean_iou = np.bincount(which, ious, minlength=bins) / count
    gap = np.abs(mean_score - mean_iou)
    ece = float(np.sum(count[count > 0] * gap[count > 0]) / len(scores)) if len(scores) else 0.0
    return Calibration(np.linspace(0, 1, bins + 1), count, mean_score, mean_iou, ece)


def expected_calibration_error(scores, ious, bins: int = CALIBRATION_BINS) -> float:
    """ECE of scores [D] as estimates of IoUs [D]: sum over score bins of (n_b / N) * |mean score - mean IoU|."""
    return calibration(scores, ious, bins).ece


def class_ap(precision: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(AP50 [K], AP@[.5:.95] [K]) from COCOeval's precision [T, R, K, A, M] (all areas, 100
    detections); NaN for a class without GT (-1 throughout)."""
    p = precision[:, :, :, 0, -1]  # [T, R, K]
    valid = p > -1
    with np.errstate(invalid="ignore", divide="ignore"):
        ap50 = np.where(valid[0], p[0], 0).sum(0) / valid[0].sum(0)
        ap = np.where(valid, p, 0).sum((0, 1)) / valid.sum((0, 1))
    return ap50, ap


@dataclass
class Diagnostics:
    names: list[str]  # [K]
    confusion: np.ndarray  # [K+1, K+1] counts, rows true, columns predicted, index K background
    confusion_conf: float
    confusion_iou: float
    curves: Curves
    index: int  # the F1-optimal threshold's index in curves.conf
    conf: float  # the F1-optimal confidence (NaN when F1 is 0 throughout)
    table: list[dict]  # the "all" row, then one per class: class, images, instances, P, R, F1, AP50, AP, conf
    calibration: Calibration
    precision: np.ndarray  # COCOeval's [T, R, K, A, M]
    figures: dict = field(default_factory=dict)  # name -> matplotlib Figure (write_diagnostics fills it)

    def to_json(self) -> dict:
        c = self.calibration
        return {"conf": _number(self.conf), "match_iou": MATCH_IOU, "per_class": [
                    {k: _number(v) for k, v in row.items()} for row in self.table],
                "calibration": {"ECE": c.ece, "edges": c.edges.tolist(), "count": c.count.tolist(),
                                "mean_score": [_number(v) for v in c.mean_score],
                                "mean_iou": [_number(v) for v in c.mean_iou]},
                "confusion_matrix": {"conf": self.confusion_conf, "iou": self.confusion_iou,
                                     "rows": "true class", "columns": "predicted class",
                                     "labels": [*self.names, "background"], "counts": self.confusion.tolist()}}


def _number(value):
    """NaN (undefined) as null, which JSON has; numpy scalars as Python numbers."""
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    return int(value) if isinstance(value, np.integer) else value


def compute_diagnostics(gt, detections: list[dict], names: list[str] | None = None, *, precision=None,
                        conf: float = CONFUSION_CONF, iou: float = CONFUSION_IOU, bins: int = CALIBRATION_BINS,
                        backend: str = "faster") -> Diagnostics:
    """Every number of the diagnostics of ``detections`` (COCO result dicts) against ``gt`` (a COCO
    json path or dict: the images scored). ``names``: the K class names in category-id order (the
    json's own names when None or of another length); ``precision``: COCOeval's array of the same
    detections (computed when None); ``conf``, ``iou``: the confusion matrix's thresholds."""
    gt = load_gt(gt)
    truth, cat_ids = ground_truth_boxes(gt)
    k = len(cat_ids)
    if names is None or len(names) != k:
        by_id = {int(c["id"]): str(c["name"]) for c in gt.get("categories", [])}
        names = [by_id[cat] for cat in cat_ids]
    images = [int(image["id"]) for image in gt.get("images", [])]
    dets = detection_boxes(detections, cat_ids)
    dets = dets.subset((dets.labels < k) & np.isin(dets.image_ids, np.asarray(images, np.int64)))
    if precision is None:
        from detector.eval.coco import coco_evaluate

        scored = set(images)
        precision = coco_evaluate(gt, [d for d in detections if d["image_id"] in scored], backend=backend).precision
    num_gt = np.bincount(truth.labels, minlength=k)
    curves = confidence_curves(dets.scores, dets.labels, true_positives(truth, dets, k), num_gt)
    has_gt = num_gt > 0
    mean_f1 = curves.f1[has_gt].mean(0) if has_gt.any() else np.zeros(len(curves.conf))
    index, best = f1_optimal(mean_f1, curves.conf)
    ap50, ap = class_ap(precision) if precision.shape[2] == k else (np.full(k, np.nan), np.full(k, np.nan))
    ap50[~has_gt], ap[~has_gt] = np.nan, np.nan  # COCOeval gives 0, not -1, when there are no detections
    pairs = np.unique(truth.image_ids * max(k, 1) + truth.labels)
    class_images = np.bincount(pairs % max(k, 1), minlength=k) if k else np.zeros(0, np.int64)
    table = [{"class": "all", "images": len(images), "instances": len(truth),
              **_means(curves, index, has_gt), "AP50": _mean(ap50[has_gt]), "AP": _mean(ap[has_gt]), "conf": best}]
    for c in range(k):
        own = f1_optimal(curves.f1[c], curves.conf)[1]
        table.append({"class": names[c], "images": int(class_images[c]), "instances": int(num_gt[c]),
                      "P": float(curves.precision[c, index]), "R": float(curves.recall[c, index]),
                      "F1": float(curves.f1[c, index]), "AP50": float(ap50[c]), "AP": float(ap[c]), "conf": own})
    reliability = calibration(dets.scores, best_same_class_iou(truth, dets, k), bins)
    return Diagnostics(list(names), confusion_matrix(truth, dets, k, conf, iou), conf, iou, curves, index, best,
                       table, reliability, precision)


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else math.nan


def _means(curves: Curves, index: int, has_gt: np.ndarray) -> dict:
    return {name: _mean(values[has_gt, index])
            for name, values in (("P", curves.precision), ("R", curves.recall), ("F1", curves.f1))}


def write_class_csv(path, table: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
                         for row in table)


def write_diagnostics(out_dir, detections: list[dict], gt, names: list[str] | None = None, *, precision=None,
                      dataset=None, conf: float = CONFUSION_CONF, iou: float = CONFUSION_IOU,
                      val_batches: int = VAL_BATCHES, batch_size: int = VAL_BATCH_SIZE,
                      bins: int = CALIBRATION_BINS) -> Diagnostics:
    """``compute_diagnostics`` written to ``out_dir``: diagnostics.json, per_class.csv,
    confusion_matrix.png, confusion_matrix_normalized.png, P_curve.png, R_curve.png, F1_curve.png,
    PR_curve.png, reliability.png, and with ``dataset`` (a data set of ours: raw images and
    targets) ``val_batches`` pictures val_batch{i}.jpg of ``batch_size`` images, ground truth left,
    predictions with score > ``conf`` right. The returned Diagnostics holds the figures
    (``.figures``: name -> matplotlib Figure, for TensorBoard)."""
    from detector.eval import plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    diagnostics = compute_diagnostics(gt, detections, names, precision=precision, conf=conf, iou=iou, bins=bins)
    (out / "diagnostics.json").write_text(json.dumps(diagnostics.to_json(), indent=1))
    write_class_csv(out / "per_class.csv", diagnostics.table)
    figures = plots.diagnostic_figures(diagnostics)
    if dataset is not None and val_batches > 0:
        figures.update(plots.draw_val_batches(dataset, detections, out, batches=val_batches,
                                              batch_size=batch_size, conf=conf))
    for name, figure in figures.items():
        if not name.startswith("val_batch"):  # written as jpg by draw_val_batches
            plots.save(figure, out / f"{name}.png")
    diagnostics.figures = figures
    return diagnostics
