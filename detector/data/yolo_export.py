"""Any of our data sets in ultralytics' YOLO layout, for ``tools/compare.py`` and for YOLOv8 itself.

``export_yolo(splits, out, limit_train=None)`` writes ``out/images/{train,val}`` (symbolic links to
the original pictures, or copies where links cannot be made), ``out/labels/{train,val}/<stem>.txt``
(one ``class cx cy w h`` line a box, normalised to the picture's size, 6 decimals) and
``out/data.yaml`` (``path``, ``train``, ``val``, ``names``). Class ids are our contiguous labels, in
the order of ``splits.names``. Two pictures with one file name in a split would overwrite each
other's labels, so that is refused.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch

from detector.boxes import xyxy_to_cxcywh
from detector.data.base import DataSplits, DetectionDataset
from detector.data.yolo import image_size


def yolo_lines(boxes: np.ndarray, labels: np.ndarray, width: int, height: int) -> str:
    """[N, 4] xyxy px + [N] labels -> YOLO label text."""
    scale = torch.tensor([width, height, width, height], dtype=torch.float64)
    cxcywh = xyxy_to_cxcywh(torch.from_numpy(boxes.astype(np.float64)) / scale)  # [N, 4] normalised
    return "".join(f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n"
                   for c, (x, y, w, h) in zip(labels.tolist(), cxcywh.tolist()))


def link_or_copy(source: Path, target: Path) -> None:
    """``target`` a symbolic link to ``source`` (a copy where links cannot be made), replacing what was there."""
    if target.is_symlink() or target.exists():
        target.unlink()
    try:
        os.symlink(source.resolve(), target)
    except OSError:  # no symbolic links here (some file systems, Windows without the right)
        shutil.copy2(source, target)


def export_split(dataset: DetectionDataset, images_dir: Path, labels_dir: Path, limit: int | None = None) -> int:
    """The first ``limit`` images (all by default) of ``dataset``; returns how many were written."""
    images_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    seen: dict[str, Path] = {}
    for i in range(count):
        sample = dataset.sample(i)
        path = Path(sample.path)
        if path.name in seen:
            raise ValueError(f"{dataset.source}: two images named {path.name} ({seen[path.name]} and {path}); "
                             f"the YOLO layout keys labels by file name")
        seen[path.name] = path
        width, height = (int(v) for v in dataset.index.sizes[i])
        if width <= 0 or height <= 0:
            size = image_size(path)
            if size is None:
                raise ValueError(f"{path}: cannot read the image size")
            width, height = size
        link_or_copy(path, images_dir / path.name)
        (labels_dir / f"{path.stem}.txt").write_text(yolo_lines(sample.boxes, sample.labels, width, height))
    return count


def export_yolo(splits: DataSplits, out: str | Path, limit_train: int | None = None) -> Path:
    """Write ``splits`` under ``out`` in YOLO layout; returns the data.yaml's path."""
    out = Path(out).expanduser().resolve()
    for split, dataset, limit in (("train", splits.train, limit_train), ("val", splits.val, None)):
        export_split(dataset, out / "images" / split, out / "labels" / split, limit)
    names = "".join(f"  {i}: {name}\n" for i, name in enumerate(splits.names))
    yaml = out / "data.yaml"
    yaml.write_text(f"path: {out}\ntrain: images/train\nval: images/val\nnames:\n{names}")
    return yaml
