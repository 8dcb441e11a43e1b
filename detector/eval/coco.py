"""The official COCO box metric, on faster-coco-eval (default) or pycocotools.

Both backends give the same 12 numbers (to 1e-6); faster-coco-eval runs the matching in C++.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
BACKENDS = ("faster", "pycocotools")


@dataclass
class CocoEvalResult:
    stats: dict[str, float]  # the 12 standard numbers
    precision: np.ndarray  # [T=10 IoUs, R=101 recalls, K classes, A=4 areas, M=3 max_dets], -1 where undefined
    cat_ids: list[int]
    per_class: dict[int, float]  # category id -> AP@[.5:.95] (-1 for a class without GT)


def load_gt(gt) -> dict:
    if isinstance(gt, (str, Path)):
        return json.loads(Path(gt).read_text())
    return gt


def coco_evaluate(gt, detections: list[dict], backend: str = "faster") -> CocoEvalResult:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    dataset = copy.deepcopy(load_gt(gt))
    dataset.setdefault("info", {})
    dataset.setdefault("licenses", [])
    cat_ids = sorted(c["id"] for c in dataset.get("categories", []))
    if not detections:  # both libraries refuse an empty result list; every number is then 0
        zeros = {name: 0.0 for name in METRIC_NAMES}
        return CocoEvalResult(zeros, np.zeros((10, 101, len(cat_ids), 4, 3)), cat_ids, {c: 0.0 for c in cat_ids})
    if backend == "faster":
        from faster_coco_eval import COCO, COCOeval_faster as COCOeval

        logging.getLogger("faster_coco_eval").setLevel(logging.ERROR)
    else:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(detections))
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = {name: float(value) for name, value in zip(METRIC_NAMES, evaluator.stats[:12])}
    precision = np.asarray(evaluator.eval["precision"])
    per_class = {}
    for k, cat in enumerate(cat_ids):
        p = precision[:, :, k, 0, -1]  # all areas, maxDets 100
        per_class[cat] = float(p[p > -1].mean()) if (p > -1).any() else -1.0
    return CocoEvalResult(stats, precision, cat_ids, per_class)


def coco_metrics(gt, detections: list[dict], backend: str = "faster") -> dict[str, float]:
    """The 12 standard COCO box numbers: AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl.

    gt: a COCO json path or dict; detections: COCO result dicts (image_id, category_id,
    bbox xywh px, score).
    """
    return coco_evaluate(gt, detections, backend).stats
