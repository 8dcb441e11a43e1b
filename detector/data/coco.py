"""COCO-format data sets (pycocotools): contiguous 0-based labels, crowd boxes out of the targets,
images without annotations kept as background."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from detector.data.base import DataSplits, DetectionDataset, Problems, Sample, clean_boxes


def _quiet_coco(ann_file: str | Path) -> COCO:
    import contextlib
    import io

    if not Path(ann_file).is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {ann_file}")
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(ann_file))


class CocoDetection(DetectionDataset):
    """``CocoDetection(img_dir, ann_file, transforms=None)``; ``category_ids[label]`` is the
    original COCO category id of a contiguous label."""

    def __init__(self, img_dir: str | Path, ann_file: str | Path, transforms=None):
        img_dir = Path(img_dir)
        coco = _quiet_coco(ann_file)
        category_ids = sorted(coco.getCatIds())
        to_label = {cat: i for i, cat in enumerate(category_ids)}
        names = [coco.cats[c]["name"] for c in category_ids]
        problems = Problems(str(ann_file))
        known_images = set(coco.imgs)
        for ann in coco.dataset.get("annotations", []):
            if ann["image_id"] not in known_images:
                problems.add("annotations pointing at an image id not in the json", f"id {ann['id']}")
        samples = []
        for image_id in sorted(coco.imgs):
            info = coco.imgs[image_id]
            path = img_dir / info["file_name"]
            if not path.is_file():
                problems.add("images missing on disk", str(path))
                continue
            anns = [a for a in coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
            boxes = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
            boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
            boxes, valid = clean_boxes(boxes, info["width"], info["height"])
            for ann, ok in zip(anns, valid):
                if not ok:
                    problems.add("boxes of non-positive size or outside the image", f"{info['file_name']} ann {ann['id']}")
            labels = np.array([to_label[a["category_id"]] for a in anns], dtype=np.int64)
            samples.append(Sample(path, int(image_id), boxes[valid], labels[valid]))
        problems.report()
        super().__init__(samples, names, category_ids, source=str(ann_file), transforms=transforms)


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
