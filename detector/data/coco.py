"""COCO-format data sets: contiguous 0-based labels, crowd boxes out of the targets, images without
annotations kept as background.

The json is read once into a flat index with vectorised numpy (detector/data/index.py) and kept in
a label cache keyed by the json's path, size and modification time, so a second start on COCO's
118k images reads a 20 MB file instead of parsing 450 MB of json. Image sizes come from the json;
image files are not opened or stat-ed up front: one listing per image folder finds missing ones.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from detector.data.base import DataSplits, DetectionDataset, Problems
from detector.data.index import FlatIndex, load_cache, save_cache

# The options that change the index: part of the cache key (with the json's path, size and mtime).
INDEX_OPTIONS = {"crowd": "dropped", "min_box_px": 1}


def _column(records: list[dict], key: str, default, dtype) -> np.ndarray:
    return np.fromiter((r.get(key, default) for r in records), dtype=dtype, count=len(records))


def read_coco_index(ann_file: Path, img_dir: Path) -> tuple[FlatIndex, dict, dict]:
    """(index over every image of the json, bad input {kind: [places]}, {"names", "category_ids"})."""
    with open(ann_file, "rb") as handle:
        data = json.load(handle)
    images, anns = data.get("images", []), data.get("annotations", [])
    categories = sorted(data.get("categories", []), key=lambda c: c["id"])
    del data
    category_ids = np.array([c["id"] for c in categories], dtype=np.int64)
    problems: dict[str, list[str]] = {}

    image_ids = _column(images, "id", -1, np.int64)
    order = np.argsort(image_ids, kind="stable")  # images in id order
    image_ids = image_ids[order]
    files = np.array([images[i]["file_name"].encode() for i in order], dtype=bytes).reshape(-1)
    sizes = np.stack([_column(images, "width", 0, np.int32), _column(images, "height", 0, np.int32)], 1)[order]
    del images

    # [K] per annotation
    ann_ids = _column(anns, "id", -1, np.int64)
    owner_ids = _column(anns, "image_id", -1, np.int64)
    crowd = _column(anns, "iscrowd", 0, np.int8).astype(bool)
    cats = _column(anns, "category_id", -1, np.int64)
    try:
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
    except (KeyError, TypeError, ValueError):  # a bbox missing or not 4 numbers: found one by one
        xywh = np.full((len(anns), 4), np.nan, np.float32)
        for k, a in enumerate(anns):
            try:
                xywh[k] = np.asarray(a["bbox"], dtype=np.float32).reshape(4)
            except (KeyError, TypeError, ValueError):
                problems.setdefault("annotations without a bbox of 4 numbers", []).append(f"id {ann_ids[k]}")
    del anns

    owner = np.searchsorted(image_ids, owner_ids).clip(max=max(len(image_ids) - 1, 0))  # [K] image position
    known = (image_ids[owner] == owner_ids) if len(image_ids) else np.zeros(len(owner_ids), bool)
    for k in np.flatnonzero(~known):
        problems.setdefault("annotations pointing at an image id not in the json", []).append(f"id {ann_ids[k]}")
    label = np.searchsorted(category_ids, cats).clip(max=max(len(category_ids) - 1, 0))  # [K] contiguous label
    known_cat = (category_ids[label] == cats) if len(category_ids) else np.zeros(len(cats), bool)
    for k in np.flatnonzero(known & ~known_cat):
        problems.setdefault("annotations of a category not in the json", []).append(f"id {ann_ids[k]}")

    keep = known & known_cat & ~crowd
    boxes = xywh.copy()
    boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
    width, height = sizes[owner, 0].astype(np.float32), sizes[owner, 1].astype(np.float32)
    width[width <= 0], height[height <= 0] = np.inf, np.inf  # size unknown: no upper clip
    finite = np.isfinite(boxes).all(1)
    boxes = np.where(finite[:, None], boxes, 0)
    boxes = np.clip(boxes, 0, np.stack([width, height, width, height], 1))
    valid = finite & (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
    for k in np.flatnonzero(keep & ~valid):
        problems.setdefault("boxes of non-positive size or outside the image", []).append(
            f"{files[owner[k]].decode()} ann {ann_ids[k]}")
    keep &= valid

    rows = np.flatnonzero(keep)
    rows = rows[np.argsort(owner[rows], kind="stable")]  # grouped by image, json order inside an image
    counts = np.bincount(owner[rows], minlength=len(image_ids))
    index = FlatIndex(root=str(img_dir), files=files, image_ids=image_ids, sizes=sizes,
                      offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                      boxes=np.ascontiguousarray(boxes[rows]), labels=label[rows].astype(np.int64))
    return index, problems, {"names": [c["name"] for c in categories], "category_ids": category_ids.tolist()}


def missing_files(index: FlatIndex) -> np.ndarray:
    """[M] bool, True for files not on disk: one directory listing per folder, no stat per file."""
    listed: dict[str, set[str]] = {}
    missing = np.zeros(len(index), bool)
    for i, name in enumerate(index.files):
        folder, _, base = name.decode().rpartition("/")
        if folder not in listed:
            try:
                listed[folder] = set(os.listdir(Path(index.root, folder)))
            except OSError:
                listed[folder] = set()
        missing[i] = base not in listed[folder]
    return missing


class CocoDetection(DetectionDataset):
    """``CocoDetection(img_dir, ann_file, transforms=None)``; ``category_ids[label]`` is the
    original COCO category id of a contiguous label."""

    def __init__(self, img_dir: str | Path, ann_file: str | Path, transforms=None):
        img_dir, ann_file = Path(img_dir), Path(ann_file)
        if not ann_file.is_file():
            raise FileNotFoundError(f"COCO annotation file not found: {ann_file}")
        cached = load_cache(ann_file, INDEX_OPTIONS)
        if cached is None:
            index, found, extra = read_coco_index(ann_file, img_dir)
            save_cache(ann_file, INDEX_OPTIONS, index, found, extra)
        else:
            index, found, extra = cached
        index.root = str(img_dir)
        problems = Problems(str(ann_file))
        problems.items = {kind: list(places) for kind, places in found.items()}
        missing = missing_files(index)
        for i in np.flatnonzero(missing):
            problems.add("images missing on disk", str(index.path(i)))
        problems.report()
        if missing.any():
            index = index.select(~missing)
        super().__init__(index, extra["names"], extra["category_ids"], source=str(ann_file), transforms=transforms)


def coco_splits(root: str, train_images: str = "train2017", val_images: str = "val2017",
                train_ann: str = "annotations/instances_train2017.json",
                val_ann: str = "annotations/instances_val2017.json") -> DataSplits:
    """COCO 2017 layout under ``root`` (see datasets/README.md)."""
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise FileNotFoundError(f"data.root={root}: no such folder")
    train = CocoDetection(root_path / train_images, root_path / train_ann)
    val = CocoDetection(root_path / val_images, root_path / val_ann)
    return DataSplits(train=train, val=val, val_ann_file=str(root_path / val_ann), names=val.names)
