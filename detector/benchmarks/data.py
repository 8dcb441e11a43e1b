"""Training-pipeline throughput: images/s of one worker at 640 with mosaic, and its peak memory.

Runs what one DataLoader worker does, in this process, over COCO128 when ../shared/data/coco128
(or $COCO128) exists, else over the shapes set: batches of 16 indices in a shuffled order through
``TrainDataset.__getitems__`` (mosaic partners drawn from the batch, each image decoded once).
Memory: the peak of what a worker allocates for one batch (tracemalloc sees numpy and OpenCV
arrays) and the process's peak resident size (which includes torch itself).
The ``per_item`` row calls ``__getitem__`` once per index instead (partners drawn from the whole
data set, so a mosaic decodes 4 images), for comparison.
"""
from __future__ import annotations

import resource
import time
import tracemalloc

import numpy as np

from detector.benchmarks.train import base_dataset
from detector.data.pipeline import TrainDataset

BATCH_SIZE = 16  # configs/train.yaml's default


def fetcher(train: TrainDataset, batched: bool):
    """What a worker calls for a batch of indices: ``__getitems__``, or ``__getitem__`` per index."""
    return train.__getitems__ if batched else (lambda batch: [train[i] for i in batch])


def images_per_second(train: TrainDataset, count: int, batched: bool) -> float:
    fetch = fetcher(train, batched)
    order = np.random.default_rng(0).permutation(len(train)).tolist()
    indices = [order[i % len(order)] for i in range(count + BATCH_SIZE)]
    fetch(indices[:BATCH_SIZE])  # warm-up: file cache, OpenCV
    batches = [indices[BATCH_SIZE + i:BATCH_SIZE + i + BATCH_SIZE] for i in range(0, count, BATCH_SIZE)]
    start = time.perf_counter()
    for batch in batches:
        fetch(batch)
    return count / (time.perf_counter() - start)


def batch_peak_mb(train: TrainDataset, batched: bool) -> float:
    """Peak of what fetching one batch of BATCH_SIZE allocates (numpy and OpenCV arrays), in MB."""
    fetch, batch = fetcher(train, batched), list(range(min(BATCH_SIZE, len(train))))
    fetch(batch)  # warm-up, so one-time allocations do not count
    tracemalloc.start()
    fetch(batch)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def run(quick: bool = False) -> list[dict]:
    name, dataset = base_dataset()
    count = 32 if quick else 512
    rows = []
    for imgsz, mosaic, batched in ((640, 1.0, True), (640, 1.0, False), (640, 0.0, True), (320, 1.0, True)):
        train = TrainDataset(dataset, imgsz=imgsz, mosaic=mosaic, seed=0)
        rows.append({"data_set": name, "imgsz": imgsz, "mosaic": mosaic, "fetch": "batch" if batched else "per_item",
                     "images_per_s_per_worker": images_per_second(train, count, batched),
                     "batch_peak_MB": batch_peak_mb(train, batched)})
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for row in rows:
        row["peak_rss_MB_process"] = peak_mb
    return rows
