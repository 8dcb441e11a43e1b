"""A small one-class set of real photos, held out by source picture, built from a YOLO data set.

    python datasets/photo_crops.py OUT --data ../shared/data/coco128/coco128.yaml  # COCO128 persons, 160 / 40
    python datasets/photo_crops.py OUT --data D.yaml --class-name car --train 200 --val 50

COCO128 has 128 pictures, most objects in them small, and one-class sets learnt from scratch in
minutes are what a 2-core machine can compare detectors on. So: every source picture holding the
class gives itself plus a square crop around each of its boxes at least ``--min-side`` px (the box
covers 35-80% of the crop side, centre jittered); a crop keeps every box of the class with at least
40% of its area inside. Every fourth source picture (sorted by name) goes to val, so no photo is in
both splits; ``--train`` / ``--val`` pictures are drawn from each side with ``--seed``. Writes JPEGs,
YOLO label files and ``OUT/data.yaml`` for ``tools/compare.py``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from detector.data.yolo_export import yolo_lines

MIN_VISIBLE = 0.4  # a box keeps its label in a crop when this share of its area is inside


def crop_windows(boxes: np.ndarray, width: int, height: int, min_side: float,
                 rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    """[N, 4] xyxy px boxes -> the whole picture and one square window (x0, y0, x1, y1) per large box."""
    windows = [(0, 0, width, height)]
    for x0, y0, x1, y1 in boxes.tolist():
        if ((x1 - x0) * (y1 - y0)) ** 0.5 < min_side:
            continue
        side = min(max(x1 - x0, y1 - y0) / rng.uniform(0.35, 0.8), width, height)
        cx = (x0 + x1) / 2 + rng.uniform(-0.15, 0.15) * side
        cy = (y0 + y1) / 2 + rng.uniform(-0.15, 0.15) * side
        left = int(np.clip(cx - side / 2, 0, width - side))
        top = int(np.clip(cy - side / 2, 0, height - side))
        windows.append((left, top, left + int(side), top + int(side)))
    return windows


def boxes_in_window(boxes: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    """[N, 4] xyxy px -> [K, 4] xyxy px relative to the window, boxes with >= MIN_VISIBLE of their area in it."""
    x0, y0, x1, y1 = window
    clipped = np.stack([boxes[:, 0].clip(x0, x1), boxes[:, 1].clip(y0, y1),
                        boxes[:, 2].clip(x0, x1), boxes[:, 3].clip(y0, y1)], axis=1)
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    visible = area(clipped) >= MIN_VISIBLE * np.maximum(area(boxes), 1e-9)
    return clipped[visible] - np.array([x0, y0, x0, y0], dtype=clipped.dtype)


def build(data_yaml: Path, out: Path, class_name: str, n_train: int, n_val: int, min_side: float,
          seed: int) -> Path:
    from detector.data.yolo import yolo_splits

    splits = yolo_splits(data_yaml=str(data_yaml))
    if class_name not in splits.names:
        raise SystemExit(f"error: {data_yaml}: no class named {class_name!r} (names: {splits.names[:10]}...)")
    label = splits.names.index(class_name)
    index = splits.train.index
    rng = np.random.default_rng(seed)
    sources = sorted((index.path(i), i) for i in range(len(index)) if (index.labels_of(i) == label).any())
    pictures: dict[str, list] = {"train": [], "val": []}
    for rank, (path, i) in enumerate(sources):
        boxes = index.boxes_of(i)[index.labels_of(i) == label].astype(np.float64)
        image = cv2.imread(str(path))
        if image is None:
            print(f"skipped {path}: not readable as an image")
            continue
        height, width = image.shape[:2]
        split = "val" if rank % 4 == 3 else "train"
        for k, window in enumerate(crop_windows(boxes, width, height, min_side, rng)):
            kept = boxes_in_window(boxes, window)
            if len(kept):
                pictures[split].append((f"{path.stem}_{k}", image, window, kept))
    for split, limit in (("train", n_train), ("val", n_val)):
        chosen = rng.permutation(len(pictures[split]))[:limit]
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        for j in sorted(chosen.tolist()):
            name, image, (x0, y0, x1, y1), kept = pictures[split][j]
            cv2.imwrite(str(out / "images" / split / f"{name}.jpg"), image[y0:y1, x0:x1],
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
            text = yolo_lines(kept, np.zeros(len(kept), dtype=np.int64), x1 - x0, y1 - y0)
            (out / "labels" / split / f"{name}.txt").write_text(text)
        print(f"{split}: {len(chosen)} pictures of {len(pictures[split])} candidates")
    yaml = out / "data.yaml"
    yaml.write_text(f"path: {out.resolve()}\ntrain: images/train\nval: images/val\nnames:\n  0: {class_name}\n")
    return yaml


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="a YOLO data.yaml, e.g. COCO128's")
    parser.add_argument("--class-name", default="person")
    parser.add_argument("--train", type=int, default=160)
    parser.add_argument("--val", type=int, default=40)
    parser.add_argument("--min-side", type=float, default=32.0, help="boxes smaller (sqrt area, px) get no crop")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    yaml = build(args.data, args.out, args.class_name, args.train, args.val, args.min_side, args.seed)
    print(f"wrote {yaml}")
    return yaml


if __name__ == "__main__":
    main()
