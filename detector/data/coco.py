"""COCO-format data sets: contiguous 0-based labels, crowd boxes out of the targets, images without
annotations kept as background.

The json is read once into a flat index with vectorised numpy (detector/data/index.py) and kept in
a label cache keyed by the json's path, size and modification time, so a second start on COCO's
118k images reads a 20 MB file instead of parsing 450 MB of json. Image sizes come from the json:
those of the picture as shown (EXIF orientation applied), as labelling tools write them; image
files are not opened or stat-ed up front: one listing per image folder finds missing ones, and an
image that decodes to another size than the json's is named and left out when it is read
(detector/data/base.py ``size_problem``; it says so when the json gives the stored, unturned size
of a photo with an EXIF orientation). A json that is not a COCO detection file is refused with
CocoFormatError naming the json and the record at fault (``read_coco_index``).
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


class CocoFormatError(ValueError):
    """A json that is not a usable COCO detection file; the message names the json and the record."""


def _is_int(value) -> bool:
    """An integer that fits an int64 (a boolean is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and -2**63 <= value < 2**63


def _size(value) -> int | None:
    """A width or height: a positive integer under 2^31 (an integral float such as 640.0 too), else None."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if _is_int(value) and 0 < value < 2**31 else None


def _encodable(name: str) -> bool:
    """Whether a json string is text (a lone surrogate such as "\\ud800" is not)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def load_json(ann_file: Path) -> dict:
    """The json's top-level object; CocoFormatError naming the file when it is not valid JSON or not an object."""
    try:
        with open(ann_file, "rb") as handle:
            data = json.load(handle)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError, too deeply nested
        raise CocoFormatError(f"{ann_file}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise CocoFormatError(f"{ann_file}: expected an object with 'images', 'annotations' and 'categories', "
                              f"got a {type(data).__name__}")
    return data


def _records(data: dict, key: str, ann_file: Path, required: bool) -> list[dict]:
    value = data.get(key)
    if value is None:
        if required:
            raise CocoFormatError(f"{ann_file}: no '{key}' list (a COCO json has 'images', 'annotations' and "
                                  "'categories')")
        return []
    if not isinstance(value, list):
        raise CocoFormatError(f"{ann_file}: '{key}' must be a list, got a {type(value).__name__}")
    for k, record in enumerate(value):
        if not isinstance(record, dict):
            raise CocoFormatError(f"{ann_file}: {key}[{k}] must be an object, got {record!r:.80}")
    return value


def check_images(images: list[dict], ann_file: Path) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(ids [M], file names [M], sizes [M, 2] (width, height)) in json order; CocoFormatError for an
    image without an integer id, a file name or a positive width and height (those of the picture
    as shown, EXIF orientation applied, as labelling tools write them), and for an id given twice."""
    ids, names, sizes, seen = [], [], [], {}
    for k, image in enumerate(images):
        image_id, name = image.get("id"), image.get("file_name")
        if not _is_int(image_id):
            raise CocoFormatError(f"{ann_file}: images[{k}] ({name!r:.80}) has no integer 'id' (got {image_id!r:.80})")
        if not isinstance(name, str) or not name:
            raise CocoFormatError(f"{ann_file}: image id {image_id} has no 'file_name' (got {name!r:.80})")
        if "\0" in name or not _encodable(name):
            raise CocoFormatError(f"{ann_file}: image id {image_id}: 'file_name' {name!r:.80} is not a file name")
        width, height = _size(image.get("width")), _size(image.get("height"))
        if width is None or height is None:
            raise CocoFormatError(f"{ann_file}: image id {image_id} ({name}) needs a positive integer 'width' and "
                                  f"'height' (got {image.get('width')!r:.40} and {image.get('height')!r:.40})")
        if image_id in seen:
            raise CocoFormatError(f"{ann_file}: two images have the id {image_id} ({seen[image_id]} and {name}); "
                                  "an id names one image")
        seen[image_id] = name
        ids.append(image_id)
        names.append(name)
        sizes.append((width, height))
    return (np.array(ids, dtype=np.int64), names, np.array(sizes, dtype=np.int32).reshape(-1, 2))


def check_categories(categories: list[dict], ann_file: Path) -> list[dict]:
    """The categories sorted by id; CocoFormatError for one without an integer id or a name, or an id given twice."""
    seen = set()
    for k, category in enumerate(categories):
        category_id, name = category.get("id"), category.get("name")
        if not _is_int(category_id):
            raise CocoFormatError(f"{ann_file}: categories[{k}] ({name!r:.80}) has no integer 'id'")
        if not isinstance(name, (str, int, float)) or isinstance(name, bool):
            raise CocoFormatError(f"{ann_file}: category id {category_id} has no 'name' (got {name!r:.80})")
        if category_id in seen:
            raise CocoFormatError(f"{ann_file}: two categories have the id {category_id}")
        seen.add(category_id)
    return sorted(categories, key=lambda c: c["id"])


def check_annotations(anns: list[dict], image_ids: set, category_ids: set, ann_file: Path
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ids [K], image ids [K], category ids [K], crowd [K] bool); CocoFormatError for an
    annotation without an integer id, of an image or a category the json does not have, or whose
    iscrowd is not 0 or 1."""
    ids, owners, cats = (np.empty(len(anns), np.int64) for _ in range(3))
    crowd = np.zeros(len(anns), bool)
    for k, ann in enumerate(anns):
        ann_id, image_id, category_id = ann.get("id"), ann.get("image_id"), ann.get("category_id")
        if not _is_int(ann_id):
            raise CocoFormatError(f"{ann_file}: annotations[{k}] has no integer 'id' (got {ann_id!r:.80})")
        if not _is_int(image_id) or image_id not in image_ids:
            raise CocoFormatError(f"{ann_file}: annotation id {ann_id}: image_id {image_id!r:.80} is not the id of "
                                  "an image of the json")
        if not _is_int(category_id) or category_id not in category_ids:
            raise CocoFormatError(f"{ann_file}: annotation id {ann_id}: category_id {category_id!r:.80} is not the "
                                  "id of a category of the json")
        is_crowd = ann.get("iscrowd", 0)
        if not isinstance(is_crowd, (int, float)) or is_crowd not in (0, 1):  # (True and False are 1 and 0)
            raise CocoFormatError(f"{ann_file}: annotation id {ann_id}: iscrowd must be 0 or 1, got {is_crowd!r:.80}")
        ids[k], owners[k], cats[k], crowd[k] = ann_id, image_id, category_id, bool(is_crowd)
    return ids, owners, cats, crowd


def read_coco_index(ann_file: Path, img_dir: Path) -> tuple[FlatIndex, dict, dict]:
    """(index over every image of the json, bad input {kind: [places]}, {"names", "category_ids"}).

    A json that is not a COCO detection file (invalid JSON, no images or categories, an image
    without id, file_name, width or height, two images with one id, an annotation of an unknown
    image or category) raises CocoFormatError naming the json and the record; boxes that are not
    4 numbers, of no size or outside the image are skipped and reported."""
    data = load_json(ann_file)
    images = _records(data, "images", ann_file, required=True)
    categories = check_categories(_records(data, "categories", ann_file, required=True), ann_file)
    anns = _records(data, "annotations", ann_file, required=False)  # a json without is all background
    del data
    category_ids = np.array([c["id"] for c in categories], dtype=np.int64)
    problems: dict[str, list[str]] = {}

    image_ids, file_names, sizes = check_images(images, ann_file)
    order = np.argsort(image_ids, kind="stable")  # images in id order
    image_ids, sizes = image_ids[order], sizes[order]
    files = np.array([file_names[i].encode() for i in order], dtype=bytes).reshape(-1)
    del images, file_names

    # [K] per annotation
    ann_ids, owner_ids, cats, crowd = check_annotations(anns, set(image_ids.tolist()), set(category_ids.tolist()),
                                                        ann_file)
    try:
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float32)
        if xywh.shape != (len(anns), 4):  # e.g. every bbox [] (shape [K, 0])
            raise ValueError("not K x 4")
    except (KeyError, TypeError, ValueError, OverflowError):  # a bbox missing or not 4 numbers: found one by one
        xywh = np.full((len(anns), 4), np.nan, np.float32)
        for k, a in enumerate(anns):
            try:
                xywh[k] = np.asarray(a["bbox"], dtype=np.float32).reshape(4)
            except (KeyError, TypeError, ValueError, OverflowError):
                problems.setdefault("annotations without a bbox of 4 numbers", []).append(f"id {ann_ids[k]}")
    del anns
    unique, counts = np.unique(ann_ids, return_counts=True)
    for ann_id in unique[counts > 1]:
        problems.setdefault("annotation ids given twice (pycocotools keeps only the last of each)", []).append(
            f"id {ann_id}")

    owner = np.searchsorted(image_ids, owner_ids)  # [K] image position (every owner is an image: checked)
    label = np.searchsorted(category_ids, cats)  # [K] contiguous label

    keep = ~crowd
    boxes = xywh.copy()
    boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
    width, height = sizes[owner, 0].astype(np.float32), sizes[owner, 1].astype(np.float32)
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
    return index, problems, {"names": [str(c["name"]) for c in categories], "category_ids": category_ids.tolist()}


def missing_files(index: FlatIndex) -> np.ndarray:
    """[M] bool, True for files not on disk: one directory listing per folder, no stat per file."""
    listed: dict[str, set[str]] = {}
    missing = np.zeros(len(index), bool)
    for i, name in enumerate(index.files):
        folder, _, base = name.decode().rpartition("/")
        if folder not in listed:
            try:
                listed[folder] = set(os.listdir(Path(index.root, folder)))
            except (OSError, ValueError):  # ValueError: a name the system refuses
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
