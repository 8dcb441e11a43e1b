"""The COCO-scale index benchmark: a COCO-sized training json, and how fast and how small our index is.

    python -m benchmarks.coco_scale make runs/coco_scale    # the json + symlinked images
    python -m benchmarks.coco_scale index runs/coco_scale   # first / second build, memory
    python -m benchmarks.coco_scale hit runs/coco_scale     # a fresh start with the cache
    python -m benchmarks.coco_scale workers runs/coco_scale # 4 workers' memory over 1,000 batches
    python -m benchmarks.coco_scale workers runs/coco_scale --objects  # the same, one object per image

``make`` writes ``annotations/instances_train2017.json`` with COCO train2017's counts (118,287
images, 858,845 annotations, about 1% crowd, 1,021 images without annotations, polygons of
realistic length so the file is about COCO's size) and ``train2017/<id>.jpg`` as symlinks to one
small JPEG, so the index can be built without 19 GB of pictures.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

NUM_IMAGES, NUM_BOXES, NUM_EMPTY = 118_287, 858_845, 1_021


def make(root: Path, seed: int = 0) -> None:
    import cv2

    rng = np.random.default_rng(seed)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    image_dir = root / "train2017"
    image_dir.mkdir(exist_ok=True)
    tiny = root / "tiny.jpg"
    cv2.imwrite(str(tiny), rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
    ids = np.sort(rng.choice(600_000, NUM_IMAGES, replace=False)) + 9
    shapes = np.array([(640, 480), (480, 640), (640, 427), (640, 426), (500, 375), (612, 612)])
    sizes = shapes[rng.integers(0, len(shapes), NUM_IMAGES)]
    images = [{"license": 1, "file_name": f"{i:012d}.jpg", "coco_url": f"http://images.cocodataset.org/train2017/{i:012d}.jpg",
               "height": int(h), "width": int(w), "date_captured": "2013-11-14 11:18:45",
               "flickr_url": "http://farm4.staticflickr.com/0/0_0_z.jpg", "id": int(i)} for i, (w, h) in zip(ids, sizes)]
    owners = rng.choice(NUM_IMAGES - NUM_EMPTY, NUM_BOXES)  # images with annotations
    owners = np.concatenate([owners, np.arange(NUM_IMAGES - NUM_EMPTY)])[:NUM_BOXES]  # each at least once
    rng.shuffle(owners)
    annotations = []
    for k, owner in enumerate(owners):
        w, h = sizes[owner]
        bw, bh = rng.uniform(2, w), rng.uniform(2, h)
        x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        points = np.round(rng.uniform([x, y], [x + bw, y + bh], (int(rng.integers(4, 40)), 2)), 2)
        annotations.append({"segmentation": [points.ravel().tolist()], "area": round(bw * bh * 0.6, 2),
                            "iscrowd": int(rng.random() < 0.01), "image_id": int(ids[owner]),
                            "bbox": [round(x, 2), round(y, 2), round(bw, 2), round(bh, 2)],
                            "category_id": int(rng.integers(1, 91)), "id": k + 1})
    categories = [{"supercategory": "thing", "id": c, "name": f"class{c}"} for c in range(1, 91)]
    out = root / "annotations" / "instances_train2017.json"
    out.write_text(json.dumps({"info": {}, "licenses": [], "images": images, "annotations": annotations,
                               "categories": categories}))
    for image in images:
        link = image_dir / image["file_name"]
        if not link.exists():
            link.symlink_to(tiny)
    print(f"{out}: {out.stat().st_size / 1e6:.0f} MB, {len(images)} images, {len(annotations)} annotations")


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def private_mb(pid: int | str = "self") -> float:
    """Memory only this process holds (its own copy-on-write copies), from smaps_rollup."""
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1])
    return total / 1024


def index(root: Path) -> dict:
    """First build (no cache), second build (cache hit), and the main process's memory."""
    from detector.data.coco import CocoDetection
    from detector.data.index import cache_path

    ann = root / "annotations" / "instances_train2017.json"
    for stale in cache_path(ann, None).parent.glob(f"{ann.name}.*.cache.npz"):
        stale.unlink()
    before = rss_mb()
    start = time.perf_counter()
    first = CocoDetection(root / "train2017", ann)
    first_s = time.perf_counter() - start
    after_first = rss_mb()
    del first
    start = time.perf_counter()
    second = CocoDetection(root / "train2017", ann)
    second_s = time.perf_counter() - start
    return {"images": len(second), "boxes": int(second.index.offsets[-1]), "first_build_s": round(first_s, 1),
            "second_build_s": round(second_s, 2), "index_MB": round(second.index.nbytes / 2**20, 1),
            "rss_before_MB": round(before), "rss_after_first_MB": round(after_first),
            "rss_after_second_MB": round(rss_mb()),
            "peak_rss_MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def hit(root: Path) -> dict:
    """A start in a fresh process when the label cache exists: its time and the process's memory."""
    from detector.data.coco import CocoDetection

    before = rss_mb()
    start = time.perf_counter()
    dataset = CocoDetection(root / "train2017", root / "annotations" / "instances_train2017.json")
    return {"images": len(dataset), "build_s": round(time.perf_counter() - start, 2), "rss_before_MB": round(before),
            "rss_after_MB": round(rss_mb()), "index_MB": round(dataset.index.nbytes / 2**20, 1)}


def workers(root: Path, batches: int = 1000, num_workers: int = 4, objects: bool = False) -> dict:
    """Each worker's resident memory after ``batches`` batches of 16 (index lookups and box copies
    only: the images are one tiny file, so only the index's share of the memory can grow).
    ``objects``: serve the labels from a list of one ``Sample`` per image instead (the earlier
    index's layout), to see reference counting copy the pages of a forked worker one by one."""
    import torch
    from torch.utils.data import DataLoader

    from detector.data.coco import CocoDetection

    dataset = CocoDetection(root / "train2017", root / "annotations" / "instances_train2017.json")

    samples = list(dataset.samples) if objects else None

    class Labels(torch.utils.data.Dataset):  # what a worker reads from the index for each item
        def __len__(self):
            return len(dataset)

        def __getitem__(self, i):
            sample = samples[i] if objects else dataset.sample(i)
            return os.getpid(), len(str(sample.path)), torch.from_numpy(sample.boxes.copy())

    loader = DataLoader(Labels(), batch_size=16, shuffle=True, num_workers=num_workers, collate_fn=lambda b: b,
                        generator=torch.Generator().manual_seed(0))
    seen: dict[int, list[tuple[float, float]]] = {}
    for k, batch in enumerate(loader):
        pid = batch[0][0]
        seen.setdefault(pid, []).append((rss_mb(pid), private_mb(pid)))
        if k + 1 == batches:
            break
    return {"main_rss_MB": round(rss_mb()), "workers": [
        {"batches": len(v), "rss_first_MB": round(v[0][0]), "rss_last_MB": round(v[-1][0]),
         "private_first_MB": round(v[0][1], 1), "private_last_MB": round(v[-1][1], 1)} for v in seen.values()]}


if __name__ == "__main__":
    command, where = sys.argv[1], Path(sys.argv[2])
    if command == "make":
        make(where)
    elif command == "workers":
        print(json.dumps(workers(where, objects="--objects" in sys.argv), indent=1))
    else:
        print(json.dumps({"index": index, "hit": hit, "workers": workers}[command](where), indent=1))
