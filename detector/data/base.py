"""The shared base of the data sets: (image file, boxes, labels) checked once at start, in a flat index.

Items follow torchvision's detection convention: ``(image uint8 [3, H, W] RGB, target)`` with
target ``{"boxes": [N, 4] float32 xyxy px, "labels": [N] int64, "image_id": int, "orig_size": (H, W)}``.
Bad input is skipped and reported once (file names and counts); an image that fails to decode
at run time is reported once and replaced by the next good one, so a worker never crashes.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from detector.data.index import FlatIndex

log = logging.getLogger("detector")
try:  # libjpeg-turbo through torchvision: deprecated in 0.29 for torchcodec (not a dependency); OpenCV once it goes
    from torchvision.io import ImageReadMode, decode_jpeg

    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                            category=DeprecationWarning)
except ImportError:
    decode_jpeg = None
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


def _decode_jpeg(data: np.ndarray, reduce: int) -> np.ndarray | None:
    """A JPEG to HWC RGB: libjpeg-turbo's DCT scaling (OpenCV's IMREAD_REDUCED_*) when ``reduce``
    is 2, 4 or 8, else torchvision's decoder, about 1.4x as fast as OpenCV's at full size."""
    if reduce > 1 or decode_jpeg is None:
        flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                8: cv2.IMREAD_REDUCED_COLOR_8}[reduce]
        image = cv2.imdecode(data, flag)
        return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    try:  # EXIF orientation applied, as OpenCV does
        image = decode_jpeg(torch.from_numpy(data), mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except RuntimeError:
        return None
    return image.permute(1, 2, 0).contiguous().numpy()  # [3, H, W] -> [H, W, 3]


def read_image(path: Path, reduce: int = 1) -> np.ndarray | None:
    """HWC uint8 RGB, or None if the file cannot be decoded or is a truncated JPEG; a JPEG is
    decoded at 1/``reduce`` of its size (``reduce`` in 1, 2, 4, 8; other formats ignore it)."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    if not data.size or is_truncated_jpeg(data):
        return None
    if data[:2].tobytes() == JPEG_START:
        image = _decode_jpeg(data, reduce)
        if image is not None:
            return image
    image = cv2.imdecode(data, _DECODE_FLAG)
    if image is not None and _DECODE_FLAG == cv2.IMREAD_COLOR:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def resized_shape(width: int, height: int, imgsz: int) -> tuple[int, int]:
    """(width, height) once the longer side is imgsz, as the training pipeline resizes."""
    ratio = imgsz / max(width, height)
    return max(1, round(width * ratio)), max(1, round(height * ratio))


def read_resized(path: Path, imgsz: int, size: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, tuple[int, int]] | None:
    """(HWC uint8 RGB resized so that its longer side is imgsz, original (height, width)), or None.

    ``size``: the image's (width, height) when known (from the json); a JPEG at least twice as
    large as needed is then decoded at 1/2, 1/4 or 1/8 scale and resized from there, which is
    several times faster than decoding every pixel of a 12-megapixel photo.
    """
    width, height = size
    reduce = 1
    if width > 0 and height > 0:
        while reduce < 8 and max(width, height) / (reduce * 2) >= imgsz:
            reduce *= 2
    image = read_image(path, reduce)
    if image is None:
        return None
    if reduce > 1:
        expected = ((height + reduce - 1) // reduce, (width + reduce - 1) // reduce)
        if image.shape[:2] != expected:  # the json's size is not the file's: decode it whole
            image = read_image(path)
            if image is None:
                return None
            height, width = image.shape[:2]
    else:
        height, width = image.shape[:2]
    new_size = resized_shape(width, height, imgsz)
    if new_size != (image.shape[1], image.shape[0]):
        shrink = new_size[0] < image.shape[1]
        image = cv2.resize(image, new_size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return image, (height, width)


class SampleView:
    """``samples[i]`` and ``for sample in samples`` over a flat index, one ``Sample`` made on demand."""

    def __init__(self, index: FlatIndex):
        self.index = index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Sample:
        index = self.index
        return Sample(index.path(i), int(index.image_ids[i]), index.boxes_of(i), index.labels_of(i))

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class DetectionDataset(Dataset):
    """A checked set of images with their labels, held as a flat index (detector/data/index.py);
    subclasses pass the index (or a list of ``Sample``), ``names`` and ``category_ids``."""

    def __init__(self, samples: FlatIndex | list[Sample], names: list[str], category_ids: list[int], source: str,
                 transforms=None):
        if not len(samples):
            raise ValueError(f"{source}: no valid image found (see the warnings above for what was skipped)")
        if not isinstance(samples, FlatIndex):
            samples = FlatIndex.from_lists("", [str(s.path) for s in samples], [s.image_id for s in samples],
                                           [s.boxes for s in samples], [s.labels for s in samples])  # sizes unknown: 0
        self.index, self.names, self.category_ids = samples, list(names), list(category_ids)
        self.source, self.transforms = source, transforms
        self._bad: set[int] = set()

    @property
    def samples(self) -> SampleView:
        return SampleView(self.index)

    def sample(self, i: int) -> Sample:
        return SampleView(self.index)[i]

    def __len__(self) -> int:
        return len(self.index)

    def load(self, index: int) -> tuple[np.ndarray, Sample]:
        """(HWC uint8 RGB image, sample); an undecodable image is reported and replaced by the next one."""
        for offset in range(len(self)):
            i = (index + offset) % len(self)
            if i in self._bad:
                continue
            sample = self.sample(i)
            image = read_image(sample.path)
            if image is not None:
                return image, sample
            self.mark_bad(i)
        raise RuntimeError(f"{self.source}: no image could be decoded")

    def is_bad(self, i: int) -> bool:
        """Whether item ``i`` was found undecodable (it is replaced by the next good one)."""
        return i in self._bad

    def mark_bad(self, i: int) -> None:
        """Item ``i`` cannot be decoded: reported once, and replaced by the next good one from now on."""
        if i not in self._bad:
            self._bad.add(i)
            log.warning("%s: cannot decode %s (truncated or not an image): skipped", self.source, self.index.path(i))

    def __getitem__(self, index: int):
        image, target = self.raw_item(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def raw_item(self, index: int) -> tuple[torch.Tensor, dict]:
        """Item ``index`` without ``transforms``."""
        image, sample = self.load(index)
        height, width = image.shape[:2]
        target = {"boxes": torch.from_numpy(sample.boxes.copy()).reshape(-1, 4),
                  "labels": torch.from_numpy(sample.labels.copy()).long(),
                  "image_id": sample.image_id, "orig_size": (height, width)}
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), target  # [3, H, W]


@dataclass
class DataSplits:
    """What a data config builds: train and val data sets (no transforms), the val split's COCO
    json (image and category ids as in the data sets) and the class names."""

    train: DetectionDataset
    val: DetectionDataset
    val_ann_file: str
    names: list[str]
