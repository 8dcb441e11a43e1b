"""YOLO-format data sets (Ultralytics layout): ``images/<split>/*`` and ``labels/<split>/*.txt``
with one ``cls cx cy w h`` line per object, normalised to [0, 1]; and the conversion to a COCO
json so that COCO evaluation works on YOLO data (image ids = index in the sorted image list,
category ids = label + 1)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import yaml

from detector.data.base import DataSplits, DetectionDataset, Problems, Sample, clean_boxes

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def read_names(data_yaml: str | Path | None, names: list[str] | None) -> list[str] | None:
    if names:
        return list(names)
    if data_yaml is None:
        return None
    content = yaml.safe_load(Path(data_yaml).read_text())
    raw = content.get("names") if isinstance(content, dict) else None
    if isinstance(raw, dict):
        return [str(raw[k]) for k in sorted(raw, key=int)]
    if isinstance(raw, list):
        return [str(n) for n in raw]
    raise ValueError(f"{data_yaml}: no 'names' list or mapping")


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file header, without decoding the pixels."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except Exception:
        return None


def parse_label_file(path: Path, width: int, height: int, num_classes: int | None, problems: Problems):
    boxes, labels = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        where = f"{path.name}:{number}"
        if len(parts) < 5:
            problems.add("label lines with fewer than 5 fields", where)
            continue
        try:
            cls, cx, cy, w, h = int(float(parts[0])), *map(float, parts[1:5])
        except ValueError:
            problems.add("label lines that are not numbers", where)
            continue
        if not np.isfinite([cx, cy, w, h]).all():
            problems.add("label lines with NaN or inf", where)
            continue
        if w <= 0 or h <= 0:
            problems.add("label lines of non-positive size", where)
            continue
        if cls < 0 or (num_classes is not None and cls >= num_classes):
            problems.add(f"label lines with a class id outside [0, {num_classes})", where)
            continue
        box = np.array([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height])
        clipped, valid = clean_boxes(box, width, height)
        if not valid[0]:
            problems.add("label lines outside the image", where)
            continue
        boxes.append(clipped[0])
        labels.append(cls)
    return np.array(boxes, dtype=np.float32).reshape(-1, 4), np.array(labels, dtype=np.int64)


class YoloDetection(DetectionDataset):
    """``YoloDetection(root, split, transforms=None, names=None)``; class names from ``names``,
    else ``class<i>`` up to the largest id found."""

    def __init__(self, root: str | Path, split: str, transforms=None, names: list[str] | None = None):
        root = Path(root).expanduser()
        image_dir, label_dir = root / "images" / split, root / "labels" / split
        if not image_dir.is_dir():
            raise FileNotFoundError(f"YOLO data set: no image folder {image_dir}")
        problems = Problems(str(root / "labels" / split))
        images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        stems = {p.stem for p in images}
        if label_dir.is_dir():
            for orphan in sorted(p for p in label_dir.glob("*.txt") if p.stem not in stems):
                problems.add("label files without an image", orphan.name)
        num_classes = len(names) if names else None
        samples, sizes = [], {}
        for image_id, path in enumerate(images):
            size = image_size(path)
            if size is None:
                problems.add("unreadable images", path.name)
                continue
            label_path = label_dir / f"{path.stem}.txt"
            if label_path.is_file():
                boxes, labels = parse_label_file(label_path, *size, num_classes, problems)
            else:  # YOLO's convention for a background image, reported in case the file was lost
                problems.add("images without a label file (kept as background)", path.name)
                boxes, labels = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
            samples.append(Sample(path, image_id, boxes, labels))
            sizes[image_id] = size
        problems.report()
        if not names:
            top = max((int(s.labels.max()) for s in samples if len(s.labels)), default=-1)
            names = [f"class{i}" for i in range(top + 1)] or ["class0"]
        self.image_sizes = sizes  # image_id -> (width, height)
        super().__init__(samples, names, [i + 1 for i in range(len(names))], source=str(root / "images" / split),
                         transforms=transforms)


def yolo_to_coco(root: str | Path, split: str, names: list[str] | None, out_file: str | Path) -> str:
    """Write the COCO json of one split (image ids and category ids as ``YoloDetection``)."""
    dataset = YoloDetection(root, split, names=names)
    images, annotations = [], []
    for sample in dataset.samples:
        width, height = dataset.image_sizes[sample.image_id]
        images.append({"id": sample.image_id, "file_name": sample.path.name, "width": width, "height": height})
        for box, label in zip(sample.boxes.tolist(), sample.labels.tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": sample.image_id, "category_id": label + 1,
                                "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0})
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(dataset.names)]
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    os.replace(tmp, out_file)
    return str(out_file)


def _labels_fingerprint(root: Path, split: str, names) -> str:
    digest = hashlib.sha1(json.dumps(names).encode())
    for path in sorted((root / "labels" / split).glob("*.txt")) + sorted((root / "images" / split).iterdir()):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def yolo_splits(root: str, train_split: str = "train", val_split: str = "val", data_yaml: str | None = None,
                names: list[str] | None = None, cache_dir: str | None = None) -> DataSplits:
    """Train/val YOLO data sets plus the val split's COCO json, cached until the labels change."""
    root_path = Path(root).expanduser()
    names = read_names(data_yaml, names)
    train = YoloDetection(root_path, train_split, names=names)
    val = YoloDetection(root_path, val_split, names=names or train.names)
    fingerprint = _labels_fingerprint(root_path, val_split, val.names)
    folder = Path(cache_dir) if cache_dir else root_path / "annotations_coco"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write_test"
        probe.touch()
        probe.unlink()
    except OSError:  # a read-only data set
        folder = Path(os.environ.get("DETECTOR_CACHE", Path.home() / ".cache" / "detector")) / "yolo_coco"
        folder.mkdir(parents=True, exist_ok=True)
    ann_file = folder / f"{root_path.name}_{val_split}_{fingerprint}.json"
    if not ann_file.is_file():
        yolo_to_coco(root_path, val_split, val.names, ann_file)
    return DataSplits(train=train, val=val, val_ann_file=str(ann_file), names=val.names)
