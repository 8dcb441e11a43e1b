"""The YOLOv8 training pipeline: mosaic of 4, random affine, HSV gains, horizontal flip.

Each image is first resized so that its longer side is ``imgsz`` (as YOLOv8's loader does; the
``cache=ram|disk`` modes keep exactly that, detector/data/cache.py), then either 4 images are
placed around a random centre of a 2 imgsz x 2 imgsz canvas, the centre anywhere in its middle
imgsz square (mosaic, as YOLOv8), or one image is centred on an imgsz square canvas, and the
canvas goes through a random affine (scale, translate, rotate, shear: YOLOv8's
random_perspective without perspective), HSV gains (YOLOv8's, through lookup tables) and a
horizontal flip, then (``blur_gray_clahe``, 0.01 in configs/train.yaml) YOLOv8's rare Blur,
MedianBlur, ToGray and CLAHE. Boxes are clipped to the output and dropped when less than 10% of
their area stays in view or when they end under 2 px wide or high, so no invalid box reaches the
loss.

Mosaic and affine are one step (``transforms.warp_placed``): without rotation or shear (the
default) each image is resized once straight into the output, which costs a fifth of drawing the
canvas and warping it with cv2.warpAffine; with rotation or shear the canvas is drawn and warped.
This replaced albumentations' Affine (plus its per-call box bookkeeping) as the largest cost at
640 px; docs/benchmarks.md has the figures.

Mosaic partners: the DataLoader fetches a batch through ``__getitems__``. With
``mosaic_partners="batch"`` the 3 other images of each mosaic come from the batch itself (3
distinct members other than the image), so every image is decoded once per batch instead of about
4 times; ``"dataset"`` draws them from the whole data set, as YOLOv5 did (more diverse: YOLOv8 gets
the same from a buffer of recent images). ``"auto"`` (the default) is ``"dataset"`` when the images
are cached (``cache=ram|disk``, or ``cache=auto`` keeping a small set in RAM), where a partner costs
no decode, else ``"batch"``. docs/comparison.md and docs/benchmarks.md have the measured AP
and speed of both.

Reproducibility: every random draw for item ``i`` comes from a generator seeded with
``(seed, epoch, i)``, and the batches from the sampler seeded with ``(seed, epoch)``, independent
of the worker that runs them and of what it ran before, so a resumed run sees exactly the images
an uninterrupted one would, with or without a cache.
"""
from __future__ import annotations

import functools

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from detector.data.base import DetectionDataset, ImageDecodeError, read_resized
from detector.data.cache import ImageCache, cache_mode
from detector.data.transforms import affine_matrix, blur_gray_clahe, hsv_gains, hsv_table, mosaic_layout, warp_placed

MIN_BOX_SIZE = 2.0  # px: smaller boxes after augmentation are dropped


class TrainDataset(Dataset):
    """Wraps a data set (no transforms) and yields augmented (uint8 [3, imgsz, imgsz], target)."""

    def __init__(self, dataset: DetectionDataset, imgsz: int = 640, mosaic: float = 1.0, scale: float = 0.5,
                 translate: float = 0.1, degrees: float = 0.0, shear: float = 0.0, fliplr: float = 0.5,
                 hsv_h: float = 0.015, hsv_s: float = 0.7, hsv_v: float = 0.4, mosaic_partners: str = "auto",
                 seed: int = 0, cache: str = "off", blur_gray_clahe: float = 0.0):
        if imgsz % 32:
            raise ValueError(f"imgsz={imgsz} must be a multiple of 32")
        if mosaic_partners not in ("auto", "batch", "dataset"):
            raise ValueError(f"augment.mosaic_partners={mosaic_partners!r}: expected 'auto', 'batch' or 'dataset'")
        self.dataset, self.imgsz, self.seed = dataset, imgsz, seed
        self.mosaic, self.epoch = mosaic, 0
        self.scale, self.translate, self.degrees, self.shear, self.fliplr = scale, translate, degrees, shear, fliplr
        self.hsv = (hsv_h, hsv_s, hsv_v)
        self.blur_gray_clahe = blur_gray_clahe
        self.cache = ImageCache(dataset, imgsz, cache) if cache_mode(cache) != "off" else None
        if self.cache is not None and self.cache.mode == "off":  # cache=auto chose not to
            self.cache = None
        if mosaic_partners == "auto":  # whole-set partners where decoding them costs nothing
            mosaic_partners = "dataset" if self.cache is not None else "batch"
        self.mosaic_partners = mosaic_partners

    def __len__(self) -> int:
        return len(self.dataset)

    def set_mosaic(self, probability: float) -> None:
        self.mosaic = probability

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resized(self, i: int) -> tuple[np.ndarray, tuple[int, int]]:
        """Image i with its longer side imgsz, and its original (height, width); from the cache
        when it holds it, else decoded (``read_resized``: the same pixels either way). Raises
        ImageDecodeError."""
        got = self.cache.get(i) if self.cache is not None else None
        if got is None:
            got = read_resized(self.dataset.index.path(i), self.imgsz, tuple(int(v) for v in self.dataset.index.sizes[i]))
        return got

    def load_resized(self, index: int) -> dict:
        """One image resized so its longer side is imgsz, with its boxes; an image that cannot be
        used is reported once and replaced by the next good one (harmless in training)."""
        dataset = self.dataset
        for offset in range(len(dataset)):
            i = (index + offset) % len(dataset)
            if dataset.is_bad(i):
                continue
            try:
                got = self.resized(i)
                break
            except ImageDecodeError as error:
                dataset.mark_bad(i, error.reason)
        else:
            raise RuntimeError(f"{dataset.source}: no image could be decoded")
        image, (height, width) = got
        sample = dataset.sample(i)
        ratio = self.imgsz / max(height, width)
        boxes = sample.boxes
        if ratio != 1:
            boxes = np.clip(boxes * ratio, 0, [image.shape[1], image.shape[0]] * 2).astype(np.float32)
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
        imgsz = self.imgsz
        item = load(index)
        if rng.random() < self.mosaic:
            partners = self.draw_partners(index, pool, rng)
            items = [item] + [load(int(j)) for j in partners]
            canvas = 2 * imgsz  # YOLOv8's: the centre anywhere in the middle imgsz square
            centre = tuple(int(v) for v in rng.uniform(0.5 * imgsz, 1.5 * imgsz, 2))
            layout = mosaic_layout([it["image"].shape[:2] for it in items], canvas, centre)
        else:  # centred on the canvas, as a padded square
            items, canvas = [item], imgsz
            height, width = item["image"].shape[:2]
            x0, y0 = (imgsz - width) // 2, (imgsz - height) // 2
            layout = [(x0, y0, (x0, y0, x0 + width, y0 + height))]
        matrix = affine_matrix(imgsz, scale=rng.uniform(1 - self.scale, 1 + self.scale),
                               degrees=rng.uniform(-self.degrees, self.degrees),
                               shear=tuple(rng.uniform(-self.shear, self.shear, 2)),
                               translate=tuple(rng.uniform(-self.translate, self.translate, 2) * imgsz),
                               canvas=canvas)
        gain = rng.uniform(-1, 1, 3) * np.asarray(self.hsv) + 1
        colour = functools.partial(hsv_gains, table=hsv_table(gain)) if max(self.hsv) > 0 else None
        image, boxes, labels = warp_placed([it["image"] for it in items], [it["bboxes"] for it in items],
                                           [it["labels"] for it in items], layout, matrix, imgsz,
                                           min_visibility=0.1, min_size=MIN_BOX_SIZE, colour=colour, canvas=canvas)
        if rng.random() < self.fliplr:
            image = cv2.flip(image, 1)
            boxes = np.stack([imgsz - boxes[:, 2], boxes[:, 1], imgsz - boxes[:, 0], boxes[:, 3]], 1).reshape(-1, 4)
        if self.blur_gray_clahe > 0:  # after the flip's draw, so that the draws before it are unchanged
            image = blur_gray_clahe(image, rng, self.blur_gray_clahe)
        target = {"boxes": torch.from_numpy(boxes.astype(np.float32)), "labels": torch.from_numpy(labels),
                  "image_id": item["image_id"], "orig_size": item["orig_size"]}
        return torch.from_numpy(image).permute(2, 0, 1), target  # [3, imgsz, imgsz], a view: collate copies once
