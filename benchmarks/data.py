"""Training-pipeline throughput: images/s of one worker at 640 with mosaic, ours beside YOLOv8's.

Over COCO128 when ../shared/data/coco128 (or $COCO128) exists, else over the shapes set.

The fair comparison is the ``DataLoader`` rows: each pipeline in one worker process, as its
trainer builds it (ours: ``TrainDataset`` fetching whole batches through ``__getitems__``, our
collate; YOLOv8: ``YOLODataset`` with its default training hyper-parameters, its own collate),
fed the same batches of 16 indices, counting from the first batch received so that worker
start-up is left out; collate and the copy to the main process are included, as in training.
Each runs without a cache and with its RAM cache (``cache="ram"`` in both).

The in-process rows run the same fetches in this process, without a DataLoader (no collate, no
inter-process copy): useful to see the augmentation cost alone, but they leave out what a worker
pays to hand a batch over, which is not the same for the two (ours sends uint8 images and padded
targets; YOLOv8 sends a dict it builds in its collate).

When ``ultralytics`` is importable (it is not a dependency), YOLOv8's pipeline runs over a copy of
COCO128 (it writes a label cache beside the labels). The machine drifts, so the rows are timed in
interleaved rounds and each figure is the median over rounds, with the slowest and fastest.
Memory: the peak of what one in-process batch allocates (tracemalloc) and the process's peak RSS.
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

from benchmarks.train import base_dataset
from detector.data.collate import collate_detection
from detector.data.pipeline import TrainDataset
from tests.reference.coco128 import coco128_root

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


def loader_images_per_second(dataset, workers: int, count: int, collate=collate_detection) -> float:
    """Images/s out of a DataLoader with ``workers`` processes (collate and the copy to the main
    process included), from the first batch received, so worker start-up does not count."""
    batches = batches_of(len(dataset), count + BATCH_SIZE * max(workers, 1))
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate)
    received = 0
    for batch in loader:
        if received == 0:
            start = time.perf_counter()
        received += len(batch["img"] if "img" in batch else batch["images"])
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


def reference_dataset(root: Path, workdir: Path, cache: bool):
    """YOLOv8's training YOLODataset over a copy of ``root`` at 640, or None without ultralytics."""
    os.environ.setdefault("YOLO_VERBOSE", "False")
    try:
        import yaml
        from ultralytics.cfg import get_cfg
        from ultralytics.data.dataset import YOLODataset
    except ImportError:
        return None
    copy = workdir / "coco128"
    if not copy.is_dir():
        shutil.copytree(root / "images", copy / "images")
        shutil.copytree(root / "labels", copy / "labels", ignore=shutil.ignore_patterns("*.cache"))
    names = yaml.safe_load((root / "coco128.yaml").read_text())["names"] if (root / "coco128.yaml").is_file() \
        else {i: str(i) for i in range(80)}
    return YOLODataset(img_path=str(copy / "images" / "train2017"), imgsz=640, batch_size=BATCH_SIZE, augment=True,
                       hyp=get_cfg(), rect=False, cache="ram" if cache else False, single_cls=False, stride=32,
                       pad=0.0, prefix="", task="detect", classes=None,
                       data={"names": names, "nc": len(names), "channels": 3})


def interleaved(timed: list, rounds: int) -> list[list[float]]:
    """``timed``: (fields, function returning images/s); the rates of each, round after round."""
    rates = [[] for _ in timed]
    for _ in range(rounds):
        for rate, (_, measure) in zip(rates, timed):
            rate.append(measure())
    return rates


def run(quick: bool = False) -> list[dict]:
    name, dataset = base_dataset()
    count, rounds = (32, 1) if quick else (384, 3)
    # as configs/train.yaml (mosaic_partners=auto: the batch without a cache, the whole set with one)
    default = TrainDataset(dataset, imgsz=640, mosaic=1.0, seed=0, blur_gray_clahe=0.01)
    cached = TrainDataset(dataset, imgsz=640, mosaic=1.0, seed=0, cache="ram", blur_gray_clahe=0.01)
    workdir = Path(tempfile.mkdtemp(prefix="detector-bench-"))
    try:
        root = coco128_root()
        references = {} if root is None or quick else {
            cache: reference_dataset(root, workdir, cache) for cache in (False, True)}
        references = {k: v for k, v in references.items() if v is not None}
        # in this process: the augmentation alone
        in_process = []
        for imgsz, mosaic, batched, cache in ((640, 1.0, True, "off"), (640, 1.0, True, "ram"), (640, 1.0, False, "off"),
                                              (640, 0.0, True, "off"), (320, 1.0, True, "off")):
            train = {"off": default, "ram": cached}[cache] if (imgsz, mosaic) == (640, 1.0) else \
                TrainDataset(dataset, imgsz=imgsz, mosaic=mosaic, seed=0, blur_gray_clahe=0.01)
            fetch = train.__getitems__ if batched else (lambda batch, train=train: [train[i] for i in batch])
            in_process.append(({"pipeline": "ours", "run": "in process", "cache": cache, "imgsz": imgsz, "mosaic": mosaic,
                                "partners": (train.mosaic_partners if batched else "dataset") if mosaic else "-"}, fetch, len(train)))
        for cache, reference in references.items():
            fetch = lambda batch, reference=reference: [reference[i] for i in batch]  # noqa: E731
            in_process.append(({"pipeline": "YOLOv8 (ultralytics)", "run": "in process", "cache": "ram" if cache else "off",
                                "imgsz": 640, "mosaic": 1.0, "partners": "buffer"}, fetch, len(reference)))
        # one DataLoader worker each, collate and transfer included: the fair comparison
        loaders = [({"pipeline": "ours", "run": "DataLoader, 1 worker", "cache": cache, "imgsz": 640, "mosaic": 1.0,
                     "partners": train.mosaic_partners}, train, collate_detection)
                   for cache, train in (("off", default), ("ram", cached))]
        loaders += [({"pipeline": "YOLOv8 (ultralytics)", "run": "DataLoader, 1 worker", "cache": "ram" if cache else "off",
                      "imgsz": 640, "mosaic": 1.0, "partners": "buffer"}, reference, reference.collate_fn)
                    for cache, reference in references.items()]
        timed = [(fields, lambda fetch=fetch, length=length: images_per_second(fetch, length, count))
                 for fields, fetch, length in in_process]
        timed += [(fields, lambda data=data, collate=collate: loader_images_per_second(data, 1, count, collate))
                  for fields, data, collate in loaders]
        rates = interleaved(timed, rounds)
        rows = [{"data_set": name, **fields, "images_per_s_per_worker": statistics.median(rate),
                 "slowest_round": min(rate), "fastest_round": max(rate)} for rate, (fields, _) in zip(rates, timed)]
        for row, (_, fetch, length) in zip(rows, in_process):
            row["batch_peak_MB"] = batch_peak_mb(fetch, length)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for row in rows:
        row["peak_rss_MB_process"] = peak_mb
    workers = min(8, os.cpu_count() or 1)
    if workers > 1:
        rate = loader_images_per_second(default, workers, count * workers)
        rows.append({"data_set": name, "pipeline": "ours", "run": f"DataLoader, {workers} workers", "cache": "off",
                     "imgsz": 640, "mosaic": 1.0, "partners": "batch", "images_per_s_per_worker": rate / workers})
    if not references and not quick:
        rows.append({"pipeline": "YOLOv8 (ultralytics not installed, or no COCO128: skipped)"})
    return rows
