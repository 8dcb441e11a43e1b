"""The YOLOv8 training pipeline: mosaic of 4, random affine, HSV gains, horizontal flip.

Each image is first resized so that its longer side is ``imgsz`` (as YOLOv8's loader does), then
either 4 images are placed around a random centre of an imgsz x imgsz canvas (``mosaic4``) or one
image is padded to a square (``A.PadIfNeeded``); both continue through
``A.Affine`` (scale, translate, rotate, shear), ``HSVGains`` (YOLOv8's multiplicative HSV gains
through lookup tables) and ``A.HorizontalFlip``. ``bbox_params`` clips boxes to the image and
drops those mostly cropped away or smaller than 2 px, so no invalid box reaches the loss. Mosaic
and HSV are hand-written (detector/data/transforms.py says why); the rest is albumentations.

Mosaic partners: the DataLoader fetches a batch through ``__getitems__``, which by default draws
the 3 other images of each mosaic from the batch itself (3 distinct members other than the image),
so every image is decoded once per batch instead of about 4 times (``mosaic_partners="dataset"``
draws them from the whole data set; README, "Benchmarks", has the measured speed and AP of both).

Reproducibility: every random draw for item ``i`` comes from a generator seeded with
``(seed, epoch, i)``, and the batches from the sampler seeded with ``(seed, epoch)``, independent
of the worker that runs them and of what it ran before, so a resumed run sees exactly the images
an uninterrupted one would.
"""
from __future__ import annotations

import functools

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from detector.data.base import DetectionDataset
from detector.data.transforms import PAD_VALUE, HSVGains, mosaic4

MIN_BOX_SIZE = 2.0  # px: smaller boxes after augmentation are dropped


class TrainDataset(Dataset):
    """Wraps a data set (no transforms) and yields augmented (uint8 [3, imgsz, imgsz], target)."""

    def __init__(self, dataset: DetectionDataset, imgsz: int = 640, mosaic: float = 1.0, scale: float = 0.5,
                 translate: float = 0.1, degrees: float = 0.0, shear: float = 0.0, fliplr: float = 0.5,
                 hsv_h: float = 0.015, hsv_s: float = 0.7, hsv_v: float = 0.4, mosaic_partners: str = "batch",
                 seed: int = 0):
        if imgsz % 32:
            raise ValueError(f"imgsz={imgsz} must be a multiple of 32")
        if mosaic_partners not in ("batch", "dataset"):
            raise ValueError(f"augment.mosaic_partners={mosaic_partners!r}: expected 'batch' or 'dataset'")
        self.dataset, self.imgsz, self.seed, self.mosaic_partners = dataset, imgsz, seed, mosaic_partners
        self.mosaic, self.epoch = mosaic, 0
        common = [
            A.Affine(scale=(1 - scale, 1 + scale), translate_percent=(-translate, translate), rotate=(-degrees, degrees),
                     shear=(-shear, shear), border_mode=cv2.BORDER_CONSTANT, fill=PAD_VALUE, p=1.0),
            HSVGains(hgain=hsv_h, sgain=hsv_s, vgain=hsv_v, p=1.0 if max(hsv_h, hsv_s, hsv_v) > 0 else 0.0),
            A.HorizontalFlip(p=fliplr),
        ]
        bbox_params = A.BboxParams(format="pascal_voc", label_fields=["labels"], clip=True, min_visibility=0.1,
                                   min_width=MIN_BOX_SIZE, min_height=MIN_BOX_SIZE, filter_invalid_bboxes=True)
        self.mosaic_pipeline = A.Compose(common, bbox_params=bbox_params)  # after mosaic4
        self.single_pipeline = A.Compose(  # load_resized already made the longer side imgsz
            [A.PadIfNeeded(min_height=imgsz, min_width=imgsz, border_mode=cv2.BORDER_CONSTANT, fill=PAD_VALUE, p=1.0),
             *common], bbox_params=bbox_params)

    def __len__(self) -> int:
        return len(self.dataset)

    def set_mosaic(self, probability: float) -> None:
        self.mosaic = probability

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def load_resized(self, index: int) -> dict:
        """One image resized so its longer side is imgsz, with its boxes, as albumentations wants."""
        image, sample = self.dataset.load(index)
        height, width = image.shape[:2]
        ratio = self.imgsz / max(height, width)
        boxes = sample.boxes
        if ratio != 1:
            size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if ratio < 1 else cv2.INTER_LINEAR)
            boxes = np.clip(boxes * ratio, 0, [size[0], size[1], size[0], size[1]]).astype(np.float32)
        return {"image": image, "bboxes": boxes, "labels": sample.labels, "image_id": sample.image_id,
                "orig_size": (height, width)}

    def __getitem__(self, index: int):
        """One sample; its mosaic partners are drawn from the whole data set."""
        return self.augment(index, self.load_resized, pool=None)

    def __getitems__(self, indices: list[int]) -> list:
        """A batch (the DataLoader calls this in its worker when it exists). With
        ``mosaic_partners="batch"`` mosaic partners are drawn from the batch itself, so each image
        is decoded and resized once per batch rather than once per use (about 4 times with
        mosaic). YOLOv8 gets the same saving by drawing partners from a buffer of recently loaded
        images, which depends on what a worker ran before; the batch is fixed by (seed, epoch),
        so this stays exactly reproducible. ``"dataset"`` draws them from the whole data set."""
        if self.mosaic_partners == "dataset":
            return [self[i] for i in indices]
        load = functools.cache(self.load_resized)  # each image of the batch decoded once
        pool = np.asarray(indices, dtype=np.int64)
        return [self.augment(int(i), load, pool=pool) for i in indices]

    def draw_partners(self, index: int, pool: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        """The 3 other images of item ``index``'s mosaic: from the whole data set (``pool`` None,
        as YOLOv5 did), else 3 distinct other members of the batch, so that a mosaic never shows
        the same image twice unless the batch is smaller than 4."""
        if pool is None:
            return rng.integers(0, len(self.dataset), size=3)
        others = pool[pool != index]
        if not len(others):  # a batch of one
            return np.full(3, index)
        return rng.choice(others, size=3, replace=len(others) < 3)

    def augment(self, index: int, load, pool: np.ndarray | None):
        """Item ``index`` through the pipeline; ``load(i)`` gives ``load_resized(i)``, mosaic
        partners come from ``pool`` (indices), or from the whole data set when it is None."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        item = load(index)
        if rng.random() < self.mosaic:
            partners = self.draw_partners(index, pool, rng)
            items = [item] + [load(int(j)) for j in partners]
            centre = tuple(int(v) for v in rng.uniform(0.25 * self.imgsz, 0.75 * self.imgsz, 2))
            image, boxes, labels = mosaic4([it["image"] for it in items], [it["bboxes"] for it in items],
                                           [it["labels"] for it in items], self.imgsz, centre)
            pipeline, inputs = self.mosaic_pipeline, {"image": image, "bboxes": boxes, "labels": labels}
        else:
            pipeline, inputs = self.single_pipeline, {"image": item["image"], "bboxes": item["bboxes"],
                                                      "labels": item["labels"]}
        pipeline.set_random_seed(int(rng.integers(2**31)))
        out = pipeline(**inputs)
        boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
        keep = ((boxes[:, 2] - boxes[:, 0]) >= MIN_BOX_SIZE) & ((boxes[:, 3] - boxes[:, 1]) >= MIN_BOX_SIZE)
        image = torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1)))  # [3, imgsz, imgsz]
        target = {"boxes": torch.from_numpy(boxes[keep]), "labels": torch.from_numpy(labels[keep]),
                  "image_id": item["image_id"], "orig_size": item["orig_size"]}
        return image, target
