"""COCO metric speed: faster-coco-eval against pycocotools on a COCO-val-sized generated set
(5,000 images, ~35k GTs over 80 classes, 500k detections), and the largest difference between
their 12 numbers."""
from __future__ import annotations

import time

import numpy as np

from detector.eval.coco import METRIC_NAMES, coco_metrics


def generate(images: int, detections_per_image: int = 100, seed: int = 0):
    rng = np.random.default_rng(seed)
    gt_per_image = rng.poisson(7, images)
    n = int(gt_per_image.sum())
    image_of = np.repeat(np.arange(1, images + 1), gt_per_image)
    wh = np.exp(rng.uniform(np.log(4), np.log(400), (n, 2)))
    xy = rng.uniform(0, 1, (n, 2)) * (np.array([640, 480]) - wh).clip(min=1)
    cats = rng.integers(1, 81, n)
    gt = {"images": [{"id": i, "width": 640, "height": 480} for i in range(1, images + 1)],
          "categories": [{"id": c, "name": str(c)} for c in range(1, 81)],
          "annotations": [{"id": k + 1, "image_id": int(image_of[k]), "category_id": int(cats[k]),
                           "bbox": [*map(float, xy[k]), *map(float, wh[k])], "area": float(wh[k].prod()),
                           "iscrowd": int(rng.random() < 0.01)} for k in range(n)]}
    total = images * detections_per_image
    source = rng.integers(0, n, total)  # noisy copies of GTs, some of the wrong class, plus clutter
    noise = rng.normal(0, 0.1, (total, 4)) * np.repeat(wh[source], 2, axis=1)
    boxes = np.concatenate([xy[source], wh[source]], 1) + noise
    clutter = rng.random(total) < 0.5
    boxes[clutter] = np.concatenate([rng.uniform(0, 500, (clutter.sum(), 2)), rng.uniform(4, 200, (clutter.sum(), 2))], 1)
    boxes[:, 2:] = boxes[:, 2:].clip(min=1)
    det_images = np.where(clutter, rng.integers(1, images + 1, total), image_of[source])
    det_cats = np.where(rng.random(total) < 0.9, cats[source], rng.integers(1, 81, total))
    scores = np.where(clutter, rng.uniform(0, 0.6, total), rng.uniform(0.2, 1.0, total))
    detections = [{"image_id": int(i), "category_id": int(c), "bbox": b, "score": float(s)}
                  for i, c, b, s in zip(det_images, det_cats, boxes.tolist(), scores)]
    return gt, detections


def run(quick: bool = False) -> list[dict]:
    gt, detections = generate(500 if quick else 5000)
    rows, results = [], {}
    for backend in ("pycocotools", "faster"):
        start = time.perf_counter()
        results[backend] = coco_metrics(gt, detections, backend=backend)
        rows.append({"backend": backend, "images": len(gt["images"]), "gts": len(gt["annotations"]),
                     "detections": len(detections), "seconds": time.perf_counter() - start})
    diff = max(abs(results["faster"][k] - results["pycocotools"][k]) for k in METRIC_NAMES)
    for row in rows:
        row["speedup"] = rows[0]["seconds"] / row["seconds"]
        row["max_abs_diff"] = diff
        row["AP"] = results[row["backend"]]["AP"]
    return rows
