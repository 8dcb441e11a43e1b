"""YOLO-format data sets (Ultralytics layout): ``images/<split>/*`` and ``labels/<split>/*.txt``
with one ``cls cx cy w h`` line per object, normalised to [0, 1], or any set an ultralytics
data.yaml describes (detector/data/data_yaml.py); and the conversion to a COCO json so that COCO
evaluation works on YOLO data (image ids = index in the sorted image list, category ids = label + 1).

Without class names the class count is inferred from the largest class id, and the log says so
with the number of classes that have no instances; a class id that would leave more than half of
the inferred classes empty is refused, naming the label file and line (a stray ``999`` line would
otherwise train a 1000-class model without a word).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from detector.data import data_yaml as dy
from detector.data.base import DataSplits, DetectionDataset, Problems, Sample, clean_boxes

IMAGE_SUFFIXES = dy.IMAGE_SUFFIXES
log = logging.getLogger("detector")


def read_names(data_yaml: str | Path | None, names: list[str] | None) -> list[str] | None:
    """``names`` if given, else the names of ``data_yaml`` (a list or a mapping), else None."""
    if names:
        return list(names)
    if data_yaml is None:
        return None
    return dy.parse_names(dy.load_mapping(data_yaml), data_yaml)


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file header, without decoding the pixels."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except Exception:
        return None


def parse_label_file(path: Path, width: int, height: int, num_classes: int | None, problems: Problems):
    """(boxes [N, 4] float32 xyxy px, labels [N] int64, line numbers [N]) of the valid lines."""
    boxes, labels, numbers = [], [], []
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
        numbers.append(number)
    return (np.array(boxes, dtype=np.float32).reshape(-1, 4), np.array(labels, dtype=np.int64),
            np.array(numbers, dtype=np.int64))


def infer_names(first_seen: dict[int, str], source: str) -> list[str]:
    """``class<i>`` up to the largest class id; first_seen maps each id to its first ``file:line``.

    Raises ValueError naming the file and line of the largest id when more than half of the
    classes it implies would have no instance."""
    if not first_seen:
        log.info("%s: no class names given and no labels: 1 class assumed", source)
        return ["class0"]
    top = max(first_seen)
    count, empty = top + 1, top + 1 - len(first_seen)
    if empty > count / 2:
        raise ValueError(
            f"{first_seen[top]}: class id {top} implies {count} classes, {empty} of them without any "
            f"instance; no class names were given to confirm it. Fix the label, or give the names "
            "(data.names=[...] or a data.yaml with names)")
    log.info("%s: no class names given: %d classes inferred from the largest class id, %d of them "
             "without instances", source, count, empty)
    return [f"class{i}" for i in range(count)]


class YoloDetection(DetectionDataset):
    """``YoloDetection(root, split, transforms=None, names=None)`` over ``root/images/<split>``;
    ``YoloDetection.from_images(...)`` over any list of images (a data.yaml's). Class names from
    ``names``, else inferred from the labels (``infer_names``)."""

    def __init__(self, root: str | Path, split: str, transforms=None, names: list[str] | None = None):
        root = Path(root).expanduser()
        image_dir, label_dir = root / "images" / split, root / "labels" / split
        if not image_dir.is_dir():
            raise FileNotFoundError(f"YOLO data set: no image folder {image_dir}")
        problems = Problems(str(label_dir))
        images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        stems = {p.stem for p in images}
        if label_dir.is_dir():
            for orphan in sorted(p for p in label_dir.glob("*.txt") if p.stem not in stems):
                problems.add("label files without an image", orphan.name)
        self._index(images, [label_dir / f"{p.stem}.txt" for p in images], names, problems, str(image_dir),
                    transforms)

    @classmethod
    def from_images(cls, images: list[Path], source: str, transforms=None, names: list[str] | None = None,
                    missing: list[str] = ()) -> "YoloDetection":
        """A data set over ``images`` (labels by ultralytics' rule, ``data_yaml.label_path``);
        ``missing`` (``file:line`` of listed images that do not exist) joins the bad-input report."""
        problems = Problems(source)
        for where in missing:
            problems.add("listed images that do not exist", where)
        dataset = cls.__new__(cls)
        dataset._index(list(images), [dy.label_path(p) for p in images], names, problems, source, transforms)
        return dataset

    def _index(self, images: list[Path], label_files: list[Path], names: list[str] | None, problems: Problems,
               source: str, transforms) -> None:
        num_classes = len(names) if names else None
        samples, sizes, first_seen = [], {}, {}
        for image_id, (path, label_path) in enumerate(zip(images, label_files)):
            size = image_size(path)
            if size is None:
                problems.add("unreadable images", path.name)
                continue
            if label_path.is_file():
                boxes, labels, numbers = parse_label_file(label_path, *size, num_classes, problems)
                if not names:
                    for label, number in zip(labels.tolist(), numbers.tolist()):
                        first_seen.setdefault(label, f"{label_path}:{number}")
            else:  # YOLO's convention for a background image, reported in case the file was lost
                problems.add("images without a label file (kept as background)", path.name)
                boxes, labels = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
            samples.append(Sample(path, image_id, boxes, labels))
            sizes[image_id] = size
        problems.report()
        if not names:
            names = infer_names(first_seen, source)
        self.image_sizes = sizes  # image_id -> (width, height)
        self.input_files = list(images) + list(label_files)  # what the cache fingerprint covers
        super().__init__(samples, names, [i + 1 for i in range(len(names))], source=source, transforms=transforms)


def dataset_to_coco(dataset: YoloDetection, out_file: str | Path) -> str:
    """Write the COCO json of a YOLO data set (image ids and category ids as the data set's)."""
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


def yolo_to_coco(root: str | Path, split: str, names: list[str] | None, out_file: str | Path) -> str:
    """Write the COCO json of one split (image ids and category ids as ``YoloDetection``)."""
    return dataset_to_coco(YoloDetection(root, split, names=names), out_file)


def _fingerprint(files: list[Path], names: list[str]) -> str:
    digest = hashlib.sha1(json.dumps(names).encode())
    for path in files:
        try:
            stat = path.stat()
            digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        except OSError:
            digest.update(f"{path}:-".encode())
    return digest.hexdigest()[:16]


def _val_json(val: YoloDetection, root: Path, val_split: str, cache_dir: str | None) -> str:
    """The val split's COCO json, cached under root/annotations_coco until its files change."""
    folder = Path(cache_dir) if cache_dir else root / "annotations_coco"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write_test"
        probe.touch()
        probe.unlink()
    except OSError:  # a read-only data set
        folder = Path(os.environ.get("DETECTOR_CACHE", Path.home() / ".cache" / "detector")) / "yolo_coco"
        folder.mkdir(parents=True, exist_ok=True)
    ann_file = folder / f"{root.name}_{val_split}_{_fingerprint(val.input_files, val.names)}.json"
    if not ann_file.is_file():
        dataset_to_coco(val, ann_file)
    return str(ann_file)


def yolo_splits(root: str | None = None, train_split: str = "train", val_split: str = "val",
                data_yaml: str | None = None, names: list[str] | None = None,
                cache_dir: str | None = None) -> DataSplits:
    """Train/val YOLO data sets plus the val split's COCO json, cached until the labels change.

    With a ``data_yaml`` that names its splits (ultralytics' data.yaml), the splits are its keys
    ``train_split`` and ``val_split`` (default train and val) and ``root``, optional, replaces its
    ``path``. Otherwise ``root`` holds ``images/<split>`` and ``labels/<split>`` and a data_yaml
    only gives the names. ``names`` overrides the yaml's.
    """
    if data_yaml is not None:
        content = dy.load_mapping(data_yaml)
        if dy.has_splits(content):
            data = dy.read_data_yaml(data_yaml, root=root)
            names = list(names) if names else data.names
            train_images, val_images = dy.split_images(data, train_split), dy.split_images(data, val_split)
            train = YoloDetection.from_images(train_images.images, f"{data.file} '{train_split}'", names=names,
                                              missing=train_images.missing)
            val = YoloDetection.from_images(val_images.images, f"{data.file} '{val_split}'", names=names,
                                            missing=val_images.missing)
            return DataSplits(train=train, val=val, val_ann_file=_val_json(val, data.root, val_split, cache_dir),
                              names=val.names)
        if root is None:
            raise dy.DataYamlError(f"data.yaml {data_yaml}: no 'train'/'val' keys, and no data.root to find the "
                                   "images/<split> folders in")
    if root is None:
        raise ValueError("data=yolo: set data.data_yaml=path/to/data.yaml (ultralytics' format) or "
                         "data.root=path/to/set (images/<split>, labels/<split>)")
    root_path = Path(root).expanduser()
    names = read_names(data_yaml, names)
    train = YoloDetection(root_path, train_split, names=names)
    val = YoloDetection(root_path, val_split, names=names or train.names)
    return DataSplits(train=train, val=val, val_ann_file=_val_json(val, root_path, val_split, cache_dir),
                      names=val.names)
