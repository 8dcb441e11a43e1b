"""Training-pipeline throughput: images/s of one worker at 640 with mosaic, and its peak memory.

Runs ``TrainDataset.__getitem__`` in this process (what one DataLoader worker does) over COCO128
when ../shared/data/coco128 (or $COCO128) exists, else over the shapes set.
"""
from __future__ import annotations

import resource
import time

from detector.benchmarks.train import base_dataset
from detector.data.pipeline import TrainDataset


def images_per_second(train: TrainDataset, count: int) -> float:
    for i in range(3):  # warm-up: file cache, OpenCV
        train[i]
    start = time.perf_counter()
    for i in range(count):
        train[i % len(train)]
    return count / (time.perf_counter() - start)


def run(quick: bool = False) -> list[dict]:
    name, dataset = base_dataset()
    count = 32 if quick else 256
    rows = []
    for imgsz, mosaic in ((640, 1.0), (640, 0.0), (320, 1.0)):
        train = TrainDataset(dataset, imgsz=imgsz, mosaic=mosaic, seed=0)
        rows.append({"data_set": name, "imgsz": imgsz, "mosaic": mosaic,
                     "images_per_s_per_worker": images_per_second(train, count)})
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for row in rows:
        row["peak_rss_MB_process"] = peak_mb
    return rows
