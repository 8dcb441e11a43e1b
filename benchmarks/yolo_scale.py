"""The YOLO-format index benchmark: a large ``images/train`` + ``labels/train`` set, built without
and with the label cache, each in a fresh process.

    python -m benchmarks.yolo_scale make runs/yolo_scale   # 20,000 symlinked images, 7 boxes each
    python -m benchmarks.yolo_scale make runs/yolo_coco 118287  # as many images as COCO train2017
    python -m benchmarks.yolo_scale first runs/yolo_scale  # caches removed: every header and label read
    python -m benchmarks.yolo_scale hit runs/yolo_scale    # a fresh start with the cache

The images are symlinks to one small JPEG (640 x 480), so the build reads real headers and label
files without gigabytes of pictures; the cache key still stats every image and label file.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

NUM_IMAGES, BOXES_PER_IMAGE, NUM_CLASSES = 20_000, 7, 80


def make(root: Path, num_images: int = NUM_IMAGES, seed: int = 0) -> None:
    import cv2

    rng = np.random.default_rng(seed)
    image_dir, label_dir = root / "images" / "train", root / "labels" / "train"
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    tiny = root / "tiny.jpg"
    cv2.imwrite(str(tiny), rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
    for i in range(num_images):
        link = image_dir / f"{i:012d}.jpg"
        if not link.exists():
            link.symlink_to(tiny)
        wh = rng.uniform(0.02, 0.5, (BOXES_PER_IMAGE, 2))
        centres = rng.uniform(wh / 2, 1 - wh / 2)
        classes = rng.integers(0, NUM_CLASSES, BOXES_PER_IMAGE)
        (label_dir / f"{i:012d}.txt").write_text("".join(
            f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, (x, y), (w, h) in zip(classes, centres, wh)))
    print(f"{root}: {num_images} images, {num_images * BOXES_PER_IMAGE} boxes")


def build(root: Path, fresh: bool) -> dict:
    """One build of ``YoloDetection(root, "train")`` with 80 names; ``fresh``: caches removed first."""
    from detector.data.yolo import YoloDetection

    if fresh:
        for stale in (root / "labels").glob("train.*.cache.npz"):
            stale.unlink()
    start = time.perf_counter()
    dataset = YoloDetection(root, "train", names=[f"class{i}" for i in range(NUM_CLASSES)])
    seconds = time.perf_counter() - start
    return {"images": len(dataset), "boxes": int(dataset.index.offsets[-1]), "build_s": round(seconds, 2),
            "cache": [p.name for p in (root / "labels").glob("train.*.cache.npz")],
            "index_MB": round(dataset.index.nbytes / 2**20, 1)}


if __name__ == "__main__":
    command, where = sys.argv[1], Path(sys.argv[2])
    if command == "make":
        make(where, int(sys.argv[3]) if len(sys.argv) > 3 else NUM_IMAGES)
    else:
        print(json.dumps(build(where, fresh={"first": True, "hit": False}[command]), indent=1))
