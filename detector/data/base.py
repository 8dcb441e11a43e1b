"""The shared base of the data sets: a list of (image file, boxes, labels) checked once at start.

Items follow torchvision's detection convention: ``(image uint8 [3, H, W] RGB, target)`` with
target ``{"boxes": [N, 4] float32 xyxy px, "labels": [N] int64, "image_id": int, "orig_size": (H, W)}``.
Bad input is skipped and reported once (file names and counts); an image that fails to decode
at run time is reported once and replaced by the next good one, so a worker never crashes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

log = logging.getLogger("detector")
cv2.setNumThreads(0)  # DataLoader workers give the parallelism; OpenCV threads would oversubscribe


@dataclass
class Sample:
    path: Path
    image_id: int
    boxes: np.ndarray  # [N, 4] float32 xyxy px, valid (positive size, inside the image)
    labels: np.ndarray  # [N] int64, 0-based contiguous


@dataclass
class Problems:
    """Bad input found while indexing a data set, reported once as one warning."""

    source: str
    items: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, where: str) -> None:
        self.items.setdefault(kind, []).append(where)

    def report(self) -> None:
        if not self.items:
            return
        lines = [f"{self.source}: skipped bad input:"]
        for kind, places in self.items.items():
            shown = ", ".join(places[:5]) + (f" (+{len(places) - 5} more)" if len(places) > 5 else "")
            lines.append(f"  {len(places)} x {kind}: {shown}")
        log.warning("\n".join(lines))


def clean_boxes(boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Clip xyxy boxes to the image; returns (clipped boxes, mask of boxes that stay valid)."""
    boxes = boxes.astype(np.float32).reshape(-1, 4)
    finite = np.isfinite(boxes).all(1)
    boxes = np.where(finite[:, None], boxes, 0)
    clipped = boxes.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, width)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, height)
    valid = finite & (clipped[:, 2] - clipped[:, 0] >= 1) & (clipped[:, 3] - clipped[:, 1] >= 1)
    return clipped, valid


# OpenCV >= 4.10 can have libjpeg write RGB directly, which saves a colour conversion per image.
_DECODE_FLAG = getattr(cv2, "IMREAD_COLOR_RGB", cv2.IMREAD_COLOR)


JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"


def is_truncated_jpeg(data: np.ndarray) -> bool:
    """A JPEG whose last KiB holds no end-of-image marker: its file was cut short.

    OpenCV 4 decodes such a file without an error, filling the missing rows with grey, so boxes
    on the lost part would point at nothing (OpenCV 5 refuses it). The marker cannot occur inside
    compressed data (byte stuffing), and looking at the last KiB rather than the last 2 bytes
    tolerates the padding some cameras write after it.
    """
    return data[:2].tobytes() == JPEG_START and JPEG_END not in data[-1024:].tobytes()


def read_image(path: Path) -> np.ndarray | None:
    """HWC uint8 RGB, or None if the file cannot be decoded or is a truncated JPEG."""
    data = np.fromfile(str(path), dtype=np.uint8) if path.is_file() else None
    if data is None or not data.size or is_truncated_jpeg(data):
        return None
    image = cv2.imdecode(data, _DECODE_FLAG)
    if image is not None and _DECODE_FLAG == cv2.IMREAD_COLOR:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


class DetectionDataset(Dataset):
    """A checked list of samples; subclasses fill ``samples``, ``names`` and ``category_ids``."""

    def __init__(self, samples: list[Sample], names: list[str], category_ids: list[int], source: str, transforms=None):
        if not samples:
            raise ValueError(f"{source}: no valid image found (see the warnings above for what was skipped)")
        self.samples, self.names, self.category_ids = samples, list(names), list(category_ids)
        self.source, self.transforms = source, transforms
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, Sample]:
        """(HWC uint8 RGB image, sample); an undecodable image is reported and replaced by the next one."""
        for offset in range(len(self.samples)):
            i = (index + offset) % len(self.samples)
            if i in self._bad:
                continue
            sample = self.samples[i]
            image = read_image(sample.path)
            if image is not None:
                return image, sample
            self._bad.add(i)
            log.warning("%s: cannot decode %s (truncated or not an image): skipped", self.source, sample.path)
        raise RuntimeError(f"{self.source}: no image could be decoded")

    def __getitem__(self, index: int):
        image, sample = self.load(index)
        height, width = image.shape[:2]
        target = {"boxes": torch.from_numpy(sample.boxes.copy()).reshape(-1, 4),
                  "labels": torch.from_numpy(sample.labels.copy()).long(),
                  "image_id": sample.image_id, "orig_size": (height, width)}
        image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))  # [3, H, W]
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


@dataclass
class DataSplits:
    """What a data config builds: train and val data sets (no transforms), the val split's COCO
    json (image and category ids as in the data sets) and the class names."""

    train: DetectionDataset
    val: DetectionDataset
    val_ann_file: str
    names: list[str]
