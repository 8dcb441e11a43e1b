"""YOLO-format data sets (Ultralytics layout): ``images/<split>/*`` and ``labels/<split>/*.txt``
with one ``cls cx cy w h`` line per object, normalised to [0, 1], or any set an ultralytics
data.yaml describes (detector/data/data_yaml.py); and the conversion to a COCO json so that COCO
evaluation works on YOLO data (image ids = index in the sorted image list, category ids = label + 1).

Without class names the class count is inferred from the largest class id, and the log says so
with the number of classes that have no instances; a class id that would leave more than half of
the inferred classes empty is refused, naming the label file and line (a stray ``999`` line would
otherwise train a 1000-class model without a word).

Label files: a line ``cls cx cy w h`` is a box, a line ``cls x1 y1 ... xk yk`` (k >= 3) a polygon
read as its bounding box (``parse_label_lines``); values are normalised by the picture as shown,
its EXIF orientation applied (``image_size``, detector/data/base.py, which says where ultralytics'
exif_size differs). A UTF-8 byte-order mark is ignored; a label file that is not UTF-8 is reported and its image
left out.

The index is a flat index (detector/data/index.py) kept in a label cache like ultralytics'
``labels.cache``: ``labels/<split>.<key hash>.cache.npz`` (a data.yaml split: beside the folder of
its first label file, ``<folder>.<split key>.<hash>.cache.npz``). Its key is every image and label
file's path, size and modification time (one stat per file), the class count and the format
version; a hit opens no image and reads no label file, and repeats the bad-input report.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from functools import cached_property
from pathlib import Path

import numpy as np

from detector.data import data_yaml as dy
from detector.data.base import DataSplits, DetectionDataset, Problems, clean_boxes, image_size
from detector.data.index import FlatIndex, files_fingerprint, load_cache, save_cache

IMAGE_SUFFIXES = dy.IMAGE_SUFFIXES
# What changes the index besides the files and the class count: part of the label cache's key.
INDEX_OPTIONS = {"format": "yolo", "min_box_px": 1}
log = logging.getLogger("detector")


def read_names(data_yaml: str | Path | None, names: list[str] | None) -> list[str] | None:
    """``names`` if given, else the names of ``data_yaml`` (a list or a mapping), else None."""
    if names:
        return list(names)
    if data_yaml is None:
        return None
    return dy.parse_names(dy.load_mapping(data_yaml), data_yaml)


def read_label_text(path: Path, problems: Problems) -> str | None:
    """The text of a label file (a UTF-8 byte-order mark ignored), or None, with the problem added,
    when it cannot be read or is not UTF-8: its image is then left out, as ultralytics leaves out
    an image whose label file it cannot read (kept, it would teach its objects as background)."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        problems.add("label files that are not UTF-8 text (image left out)", f"{path.name} (byte {error.start})")
    except OSError as error:
        problems.add("label files that cannot be read (image left out)", f"{path.name} ({error.strerror or error})")
    return None


def parse_label_file(path: Path, width: int, height: int, num_classes: int | None, problems: Problems):
    """``parse_label_lines`` of a label file, or None when it cannot be read (``read_label_text``)."""
    text = read_label_text(path, problems)
    if text is None:
        return None
    return parse_label_lines(text, path.name, width, height, num_classes, problems)


def parse_label_lines(text: str, name: str, width: int, height: int, num_classes: int | None, problems: Problems):
    """(boxes [N, 4] float32 xyxy px, labels [N] int64, line numbers [N]) of the valid lines of a
    label file's ``text``; ``name`` is the file's, for the report (``name:line``).

    A line of 5 values is a box ``cls cx cy w h``; a line of 1 + 2k values, k >= 3, is a polygon
    ``cls x1 y1 ... xk yk`` (ultralytics' segmentation format), read as its bounding box (the
    min and max of its points, ultralytics' segments2boxes); every other count is reported.
    ultralytics decides per file (any line of more than 6 values makes every line of the file a
    polygon, a box line then being read as 2 points) and leaves out a file with a 6-value line;
    here each line is read by its own count. A value outside [0, 1] is clipped and reported
    (ultralytics leaves such an image out beyond 1%). All values are normalised by the picture as
    shown (``width``, ``height``: EXIF orientation applied).

    The lines are checked one by one in Python and the boxes clipped together (one ``clean_boxes``
    per file, not one per line); problems are still added in line order."""
    lines = []  # (line number, "file:line", problem kind or None for the next row of ``candidates``)
    candidates, classes, clipped_values = [], [], []  # [K] xyxy px boxes (float64), class ids, a value clipped
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        where = f"{name}:{number}"
        count = len(parts)
        if count < 5:
            lines.append((number, where, "label lines with fewer than 5 fields"))
            continue
        if count != 5 and (count < 7 or count % 2 == 0):
            lines.append((number, where, "label lines of 6 or an even number of values (neither a box "
                                         "'cls cx cy w h' nor a polygon 'cls x1 y1 x2 y2 x3 y3 ...')"))
            continue
        try:
            cls, values = int(float(parts[0])), [float(v) for v in parts[1:]]
        except (ValueError, OverflowError):  # OverflowError: a class id of inf
            lines.append((number, where, "label lines that are not numbers"))
            continue
        outside = not all(0.0 <= v <= 1.0 for v in values)  # False for NaN too: found below
        if count == 5:
            cx, cy, w, h = values
            x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        else:  # a polygon's bounding box: its points clipped to the picture first, so min/max of the clipped points
            xs, ys = [min(max(v, 0.0), 1.0) for v in values[0::2]], [min(max(v, 0.0), 1.0) for v in values[1::2]]
            x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
            w, h = x2 - x1, y2 - y1
        if not all(map(math.isfinite, values)):
            kind = "label lines with NaN or inf"
        elif w <= 0 or h <= 0:
            kind = "label lines of non-positive size"
        elif cls < 0 or (num_classes is not None and cls >= num_classes):
            kind = f"label lines with a class id outside [0, {num_classes})"
        else:
            kind = None
            candidates.append((x1 * width, y1 * height, x2 * width, y2 * height))
            classes.append(cls)
            clipped_values.append(outside)
        lines.append((number, where, kind))
    clipped, valid = clean_boxes(np.array(candidates, dtype=np.float64).reshape(-1, 4), width, height)
    keep, numbers, row = [], [], 0
    for number, where, kind in lines:
        if kind is None:
            if valid[row]:
                keep.append(row)
                numbers.append(number)
                if clipped_values[row]:
                    problems.add("label lines with values outside [0, 1] (clipped to the image)", where)
            else:
                problems.add("label lines outside the image", where)
            row += 1
        else:
            problems.add(kind, where)
    return (clipped[keep].reshape(-1, 4), np.array(classes, dtype=np.int64)[keep].reshape(-1),
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


def read_yolo_index(images: list[str | Path], label_files: list[str | Path], num_classes: int | None,
                    root: str = "") -> tuple[FlatIndex, dict, dict]:
    """(index, bad input {kind: [places]}, {"first_seen": [[class id, "file:line"], ...]}) of
    ``images`` (image id = position in the list) and their label files; ``root``: the folder the
    index's file names are relative to ("" keeps the paths as given). Opens every image's header."""
    problems = Problems("")
    prefix = os.path.join(root, "") if root else ""
    files, image_ids, sizes, boxes, labels, first_seen = [], [], [], [], [], {}
    for image_id, (path, label_path) in enumerate(zip(images, label_files)):
        path, label_path = Path(path), Path(label_path)
        size = image_size(path)
        if size is None:
            problems.add("unreadable images", path.name)
            continue
        if label_path.is_file():
            parsed = parse_label_file(label_path, *size, num_classes, problems)
            if parsed is None:  # not UTF-8, or unreadable: reported, the image left out
                continue
            found, classes, numbers = parsed
            if num_classes is None:
                for label, number in zip(classes.tolist(), numbers.tolist()):
                    first_seen.setdefault(label, f"{label_path}:{number}")
        else:  # YOLO's convention for a background image, reported in case the file was lost
            problems.add("images without a label file (kept as background)", path.name)
            found, classes = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
        name = str(path)
        files.append(name[len(prefix):] if name.startswith(prefix) else os.path.relpath(name, root))
        image_ids.append(image_id)
        sizes.append(size)
        boxes.append(found)
        labels.append(classes)
    index = FlatIndex.from_lists(root, files, image_ids, boxes, labels, sizes=sizes)
    return index, problems.items, {"first_seen": [[label, where] for label, where in first_seen.items()]}


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
        # file names as strings, not Path objects: at 100k images pathlib alone costs a second a start
        names_found = sorted(n for n in os.listdir(image_dir) if os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES)
        stems = [os.path.splitext(n)[0] for n in names_found]
        if label_dir.is_dir():
            known = set(stems)
            for orphan in sorted(n for n in os.listdir(label_dir) if n.endswith(".txt") and n[:-4] not in known):
                problems.add("label files without an image", orphan)
        image_prefix, label_prefix = os.path.join(image_dir, ""), os.path.join(label_dir, "")
        images = [image_prefix + n for n in names_found]
        label_files = [f"{label_prefix}{stem}.txt" for stem in stems]
        cache_source = label_dir if label_dir.parent.is_dir() else image_dir  # labels/<split>.<hash>.cache.npz
        self._index(images, label_files, names, problems, str(image_dir), transforms, cache_source,
                    root=str(image_dir))

    @classmethod
    def from_images(cls, images: list[Path], source: str, transforms=None, names: list[str] | None = None,
                    missing: list[str] = (), split: str | None = None) -> "YoloDetection":
        """A data set over ``images`` (labels by ultralytics' rule, ``data_yaml.label_path``);
        ``missing`` (``file:line`` of listed images that do not exist) joins the bad-input report;
        ``split`` (the data.yaml key) names the label cache, so that two splits never share one."""
        problems = Problems(source)
        for where in missing:
            problems.add("listed images that do not exist", where)
        images = list(images)
        label_files = [dy.label_path(p) for p in images]
        cache_source = None
        if images:
            folder = label_files[0].parent if label_files[0].parent.parent.is_dir() else images[0].parent
            cache_source = folder.with_name(f"{folder.name}.{split}") if split else folder
        dataset = cls.__new__(cls)
        dataset._index(images, label_files, names, problems, source, transforms, cache_source)
        return dataset

    def _index(self, images: list[str | Path], label_files: list[str | Path], names: list[str] | None,
               problems: Problems, source: str, transforms, cache_source: Path | None, root: str = "") -> None:
        num_classes = len(names) if names else None
        options = {**INDEX_OPTIONS, "num_classes": num_classes}
        listed = images + label_files
        self.files_digest = files_fingerprint(listed)
        cached = load_cache(cache_source, options, self.files_digest) if cache_source else None
        if cached is None:
            index, found, extra = read_yolo_index(images, label_files, num_classes, root)
            if cache_source:
                save_cache(cache_source, options, index, found, extra, self.files_digest)
        else:
            index, found, extra = cached
        for kind, places in found.items():  # after the listing's own (orphans, missing), as when built
            problems.items.setdefault(kind, []).extend(places)
        problems.report()
        if not names:
            names = infer_names({int(label): where for label, where in extra["first_seen"]}, source)
        # every image listed and its label file (unreadable images too): no Path object per file kept
        self._input_files = np.array([os.fsencode(p) for p in listed], dtype=bytes)
        super().__init__(index, names, [i + 1 for i in range(len(names))], source=source, transforms=transforms)

    @cached_property
    def image_sizes(self) -> dict[int, tuple[int, int]]:
        """{image_id: (width, height)} of the indexed images, built on first use from ``index.sizes``."""
        return {int(i): (int(w), int(h)) for i, (w, h) in zip(self.index.image_ids, self.index.sizes)}

    @property
    def input_files(self) -> list[Path]:
        """Every image listed, then their label files (present or not): what ``files_digest`` covers."""
        return [Path(os.fsdecode(p)) for p in self._input_files]


def dataset_to_coco(dataset: DetectionDataset, out_file: str | Path) -> str:
    """Write the COCO json of a YOLO data set (image ids and category ids as the data set's)."""
    index = dataset.index
    images, annotations = [], []
    for i in range(len(index)):
        image_id, (width, height) = int(index.image_ids[i]), index.sizes[i].tolist()
        images.append({"id": image_id, "file_name": index.path(i).name, "width": width, "height": height})
        for box, label in zip(index.boxes_of(i).tolist(), index.labels_of(i).tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1,
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
    digest = hashlib.sha1(json.dumps([val.files_digest, val.names]).encode()).hexdigest()[:16]
    ann_file = folder / f"{root.name}_{val_split}_{digest}.json"
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
                                              missing=train_images.missing, split=train_split)
            val = YoloDetection.from_images(val_images.images, f"{data.file} '{val_split}'", names=names,
                                            missing=val_images.missing, split=val_split)
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
