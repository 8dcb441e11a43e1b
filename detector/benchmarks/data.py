"""Training-pipeline throughput: images/s of one worker at 640 with mosaic, and its peak memory.

Runs what one DataLoader worker does, in this process, over COCO128 when ../shared/data/coco128
(or $COCO128) exists, else over the shapes set: batches of 16 indices in a shuffled order through
``TrainDataset.__getitems__`` (mosaic partners drawn from the batch, each image decoded once).
The ``per_item`` row calls ``__getitem__`` once per index instead (partners drawn from the whole
data set, so a mosaic decodes 4 images: ``augment.mosaic_partners=dataset``).

When ``ultralytics`` is importable (it is not a dependency), YOLOv8's own training pipeline
(``YOLODataset`` with its default hyper-parameters at 640: mosaic from a buffer of recently decoded
images, random perspective, HSV, flip, its albumentations blur/CLAHE at p=0.01) is timed the same
way, per item as its workers fetch, over a copy of COCO128 (it writes a label cache beside the labels).

Two more rows run the DataLoader itself, with 1 and with min(8, CPU count) worker processes
(collate and the transfer to the main process included), per worker, to show how it scales.

The machine drifts, so the rows are timed in interleaved rounds and each figure is the median
over rounds, with the slowest and fastest round beside it.
Memory: the peak of what one batch allocates (tracemalloc sees numpy and OpenCV arrays) and the
process's peak resident size (which includes torch itself).
"""
from __future__ import annotations

import os
import resource
import shutil
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from detector.benchmarks.train import base_dataset, coco128_root
from detector.data.collate import collate_detection
from detector.data.pipeline import TrainDataset

BATCH_SIZE = 16  # configs/train.yaml's default


def batches_of(length: int, count: int) -> list[list[int]]:
    """``count`` indices in a shuffled order, cycled if the set is smaller, as batches of 16."""
    order = np.random.default_rng(0).permutation(length).tolist()
    indices = [order[i % length] for i in range(count)]
    return [indices[i:i + BATCH_SIZE] for i in range(0, count, BATCH_SIZE)]


def images_per_second(fetch, length: int, count: int) -> float:
    """Images/s of ``fetch(batch_of_indices)`` over ``count`` images, after one warm-up batch."""
    batches = batches_of(length, count + BATCH_SIZE)
    fetch(batches[0])  # warm-up: file cache, OpenCV
    start = time.perf_counter()
    for batch in batches[1:]:
        fetch(batch)
    return count / (time.perf_counter() - start)


def loader_images_per_second(train: TrainDataset, workers: int, count: int) -> float:
    """Images/s out of a DataLoader with ``workers`` processes (collate and the copy to the main
    process included), from the first batch received, so worker start-up does not count."""
    batches = batches_of(len(train), count + BATCH_SIZE * max(workers, 1))
    loader = DataLoader(train, batch_sampler=batches, num_workers=workers, collate_fn=collate_detection)
    received = 0
    for batch in loader:
        if received == 0:
            start = time.perf_counter()
        received += len(batch["images"])
    first = len(batches[0])
    return (received - first) / (time.perf_counter() - start)


def batch_peak_mb(fetch, length: int) -> float:
    """Peak of what fetching one batch allocates (numpy and OpenCV arrays), in MB."""
    batch = list(range(min(BATCH_SIZE, length)))
    fetch(batch)  # warm-up, so one-time allocations do not count
    tracemalloc.start()
    fetch(batch)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def reference_fetch(root: Path, workdir: Path):
    """(YOLOv8's per-item fetch over a copy of ``root`` at 640, its length), or None without ultralytics."""
    os.environ.setdefault("YOLO_VERBOSE", "False")
    try:
        import yaml
        from ultralytics.cfg import get_cfg
        from ultralytics.data.dataset import YOLODataset
    except ImportError:
        return None
    copy = workdir / "coco128"
    shutil.copytree(root / "images", copy / "images")
    shutil.copytree(root / "labels", copy / "labels", ignore=shutil.ignore_patterns("*.cache"))
    names = yaml.safe_load((root / "coco128.yaml").read_text())["names"] if (root / "coco128.yaml").is_file() \
        else {i: str(i) for i in range(80)}
    dataset = YOLODataset(img_path=str(copy / "images" / "train2017"), imgsz=640, batch_size=BATCH_SIZE, augment=True,
                          hyp=get_cfg(), rect=False, cache=False, single_cls=False, stride=32, pad=0.0, prefix="",
                          task="detect", classes=None, data={"names": names, "nc": len(names), "channels": 3})
    return (lambda batch: [dataset[i] for i in batch]), len(dataset)


def run(quick: bool = False) -> list[dict]:
    name, dataset = base_dataset()
    count, rounds = (32, 1) if quick else (384, 3)
    default = TrainDataset(dataset, imgsz=640, mosaic=1.0, seed=0)  # also what the DataLoader rows run
    timed = []  # (row fields, fetch, data set length), timed in interleaved rounds
    for imgsz, mosaic, batched in ((640, 1.0, True), (640, 1.0, False), (640, 0.0, True), (320, 1.0, True)):
        train = default if (imgsz, mosaic) == (640, 1.0) else TrainDataset(dataset, imgsz=imgsz, mosaic=mosaic, seed=0)
        fetch = train.__getitems__ if batched else (lambda batch, train=train: [train[i] for i in batch])
        timed.append(({"pipeline": "ours", "data_set": name, "imgsz": imgsz, "mosaic": mosaic,
                       "partners": ("batch" if batched else "dataset") if mosaic else "-"}, fetch, len(train)))
    workdir = Path(tempfile.mkdtemp(prefix="detector-bench-"))
    try:
        root = coco128_root()
        reference = reference_fetch(root, workdir) if root is not None and not quick else None
        if reference is not None:
            timed.append(({"pipeline": "YOLOv8 (ultralytics)", "data_set": name, "imgsz": 640, "mosaic": 1.0,
                           "partners": "buffer"}, *reference))
        rates = [[] for _ in timed]
        for _ in range(rounds):
            for rate, (_, fetch, length) in zip(rates, timed):
                rate.append(images_per_second(fetch, length, count))
        rows = [{**fields, "images_per_s_per_worker": statistics.median(rate), "slowest_round": min(rate),
                 "fastest_round": max(rate), "batch_peak_MB": batch_peak_mb(fetch, length)}
                for rate, (fields, fetch, length) in zip(rates, timed)]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for row in rows:
        row["peak_rss_MB_process"] = peak_mb
    for workers in sorted({1, min(8, os.cpu_count() or 1)}):
        rate = loader_images_per_second(default, workers, count * workers)
        rows.append({"pipeline": f"ours, DataLoader with {workers} worker(s), collated", "data_set": name, "imgsz": 640,
                     "mosaic": 1.0, "partners": "batch", "images_per_s_per_worker": rate / workers})
    if reference is None and not quick:
        rows.append({"pipeline": "YOLOv8 (ultralytics not installed, or no COCO128: skipped)"})
    return rows
