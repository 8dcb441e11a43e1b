"""The shared base of the data sets: (image file, boxes, labels) checked once at start, in a flat index.

Items follow torchvision's detection convention: ``(image uint8 [3, H, W] RGB, target)`` with
target ``{"boxes": [N, 4] float32 xyxy px, "labels": [N] int64, "image_id": int, "orig_size": (H, W)}``.
Bad input is skipped and reported once (file names and counts). An image that fails to decode at
run time, or decodes to another size than its annotation gives, raises ``ImageDecodeError``
naming it; the training pipeline replaces it by the next good one (reported once), and a
``DataSplits``' val set leaves it out of its batches (``leave_out_undecodable``: the item becomes
``(None, {"image_id", "left_out": reason})``, which collate_detection drops and lists), so that
the evaluator scores it neither as detections nor as ground truth.

Image sizes are those of the picture as shown: a photo's EXIF orientation (5 to 8: turned a
quarter) swaps the stored width and height, since every decoder here (torchvision's and OpenCV's)
applies it, and labelling tools draw on the turned picture. ``image_size`` reads it from the
header (no pixel decoded), swapping PIL's size only for formats that ``read_image`` shows turned
while PIL gives the stored size (found once per format by decoding a tiny turned picture: JPEG,
PNG, WebP; PIL's TIFF size is already turned), so that sizes and pixels always agree.
ultralytics' ``exif_size`` turns JPEGs with orientation 6 and 8 only, while its OpenCV decoder
turns all eight orientations, and PNG and WebP too: where they differ we follow the pixels.
"""
from __future__ import annotations

import functools
import io
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


EXIF_ORIENTATION = 0x0112  # the EXIF tag: 1 as stored, 2-4 mirrored or turned half, 5-8 turned a quarter
QUARTER_TURNS = {5, 6, 7, 8}  # the orientations that swap width and height


class ImageDecodeError(OSError):
    """An image file that cannot be used: undecodable, cut short, or not the size its annotation gives."""

    def __init__(self, path: Path | str, reason: str = "cannot be decoded (truncated or not an image)"):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def exif_orientation(image) -> int:
    """The EXIF orientation (1-8) of an open PIL image, 1 when it has none; read from the header.
    PIL's ``getexif`` decodes a whole PNG to look for EXIF after its pixels, so it is only asked
    when the header holds EXIF (or the format keeps it in its own tags: TIFF)."""
    if "exif" not in image.info and image.format != "TIFF":
        return 1
    try:
        value = int(image.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # damaged EXIF: decoders ignore it too
        return 1
    return value if 1 <= value <= 8 else 1


@functools.cache
def _orientation_probe(image_format: str) -> tuple[tuple[int, int], tuple | None, tuple | None]:
    """(PIL's size, ``decode_image`` shape at full and at half scale) of a 16 x 8 picture of PIL
    format ``image_format`` stored with EXIF orientation 6; made and decoded once per process."""
    from PIL import Image

    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    buffer = io.BytesIO()
    try:
        Image.new("RGB", (16, 8)).save(buffer, image_format, exif=exif.tobytes())
        with Image.open(io.BytesIO(buffer.getvalue())) as image:
            size = image.size
    except Exception:  # a format PIL cannot write with EXIF
        return (16, 8), None, None
    data = np.frombuffer(buffer.getvalue(), np.uint8).copy()
    shapes = [decode_image(data, reduce) for reduce in (1, 2)]
    return size, *(None if image is None else image.shape[:2] for image in shapes)


def header_swapped(image_format: str) -> bool:
    """Whether a picture of PIL format ``image_format`` with a quarter-turn EXIF orientation is shown
    by ``read_image`` with PIL's width and height swapped: True for JPEG, PNG and WebP (OpenCV and
    torchvision apply the orientation, PIL's size is the stored one), False for TIFF (PIL's size
    already applies it) and for a decoder that ignores it."""
    image_format = "JPEG" if image_format == "MPO" else image_format  # multi-picture JPEGs decode as JPEGs
    (width, height), full, _ = _orientation_probe(image_format)
    return full is not None and full == (width, height)  # shape (H, W) == (w, h): turned


def reduced_decode_turns() -> bool:
    """Whether OpenCV's reduced JPEG decoding applies the EXIF orientation as the full decoding does."""
    _, full, half = _orientation_probe("JPEG")
    return full is not None and half == (full[0] // 2, full[1] // 2)


def header_size(path: Path | str) -> tuple[tuple[int, int], int, str] | None:
    """((width, height) as stored, EXIF orientation, PIL format) from the header, or None."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size, exif_orientation(image), image.format or ""
    except Exception:
        return None


def image_size(path: Path | str) -> tuple[int, int] | None:
    """(width, height) of the picture as ``read_image`` shows it (EXIF orientation applied), from
    the file header without decoding the pixels; None if the file is not an image."""
    found = header_size(path)
    if found is None:
        return None
    (width, height), orientation, image_format = found
    if orientation in QUARTER_TURNS and header_swapped(image_format):
        return height, width
    return width, height


def size_problem(path: Path | str, shape: tuple[int, ...], size: tuple[int, int]) -> str | None:
    """Why a decoded image of ``shape`` (height, width, ...) does not fit the (width, height) its
    annotation gives (0: unknown), or None when it fits."""
    width, height = (int(v) for v in size)
    got_h, got_w = shape[:2]
    if width <= 0 or height <= 0 or (got_w, got_h) == (width, height):
        return None
    text = f"decodes to {got_w}x{got_h}, not the {width}x{height} its annotation gives"
    found = header_size(path)
    if found is not None and found[0] == (width, height) and found[1] != 1:
        text += (f" (the file is stored {width}x{height} with EXIF orientation {found[1]}, which turns it; "
                 "the annotation gives the stored size, so its boxes may have been drawn on the unturned "
                 "picture: fix the annotation's width/height or boxes)")
    return text


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
    """HWC uint8 RGB as shown (EXIF orientation applied), or None if the file cannot be decoded or
    is a truncated JPEG; a JPEG is decoded at 1/``reduce`` of its size (``reduce`` in 1, 2, 4, 8;
    other formats ignore it)."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    return decode_image(data, reduce)


def decode_image(data: np.ndarray, reduce: int = 1) -> np.ndarray | None:
    """``read_image`` of a file's bytes."""
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


def read_checked(path: Path, size: tuple[int, int] = (0, 0)) -> np.ndarray:
    """``read_image``, raising ImageDecodeError when the file cannot be decoded or decodes to
    another size than the (width, height) ``size`` its annotation gives (0: unknown)."""
    image = read_image(path)
    if image is None:
        raise ImageDecodeError(path)
    problem = size_problem(path, image.shape, size)
    if problem:
        raise ImageDecodeError(path, problem)
    return image


def read_resized(path: Path, imgsz: int, size: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, tuple[int, int]]:
    """(HWC uint8 RGB resized so that its longer side is imgsz, original (height, width)); raises
    ImageDecodeError as ``read_checked``.

    ``size``: the image's (width, height) as shown, when known (the json, the image headers); a
    JPEG at least twice as large as needed is then decoded at 1/2, 1/4 or 1/8 scale and resized
    from there, which is several times faster than decoding every pixel of a 12-megapixel photo.
    OpenCV's reduced decoding applies the EXIF orientation as the full one does (checked once,
    ``reduced_decode_turns``), so the reduced picture is expected at the shown size / ``reduce``.
    """
    width, height = (int(v) for v in size)
    reduce = 1
    if width > 0 and height > 0 and reduced_decode_turns():
        while reduce < 8 and max(width, height) / (reduce * 2) >= imgsz:
            reduce *= 2
    if reduce == 1:
        image = read_checked(path, size)
        height, width = image.shape[:2]
    else:
        image = read_image(path, reduce)
        expected = ((height + reduce - 1) // reduce, (width + reduce - 1) // reduce)
        if image is None or image.shape[:2] not in (expected, (height, width)):  # (full size: a PNG, say)
            image = read_checked(path, size)  # damaged at this scale or not the annotation's size: decode it whole
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
        self.leave_out_undecodable = False  # True for a DataSplits' val set (see the module docstring)

    @property
    def samples(self) -> SampleView:
        return SampleView(self.index)

    def sample(self, i: int) -> Sample:
        return SampleView(self.index)[i]

    def __len__(self) -> int:
        return len(self.index)

    def load(self, index: int) -> tuple[np.ndarray, Sample]:
        """(HWC uint8 RGB image, sample); raises ImageDecodeError for an image that cannot be
        decoded or is not the size its annotation gives (never another image in its place)."""
        sample = self.sample(index)
        return read_checked(sample.path, tuple(self.index.sizes[index])), sample

    def is_bad(self, i: int) -> bool:
        """Whether item ``i`` was found unusable (the training pipeline replaces it by the next good one)."""
        return i in self._bad

    def mark_bad(self, i: int, reason: str = "cannot be decoded (truncated or not an image)") -> None:
        """Item ``i`` cannot be used: reported once; the training pipeline replaces it from now on."""
        if i not in self._bad:
            self._bad.add(i)
            log.warning("%s: %s %s: skipped", self.source, self.index.path(i), reason)

    def __getitem__(self, index: int):
        image, target = self.raw_item(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def __getitems__(self, indices: list[int]) -> list:
        """A DataLoader batch: ``self[i]`` for each, where with ``leave_out_undecodable`` an image
        that cannot be used becomes ``left_out_item`` instead of raising."""
        return items_leaving_out(self, self.__getitem__, indices)

    def raw_item(self, index: int) -> tuple[torch.Tensor, dict]:
        """Item ``index`` without ``transforms``."""
        image, sample = self.load(index)
        height, width = image.shape[:2]
        target = {"boxes": torch.from_numpy(sample.boxes.copy()).reshape(-1, 4),
                  "labels": torch.from_numpy(sample.labels.copy()).long(),
                  "image_id": sample.image_id, "orig_size": (height, width)}
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), target  # [3, H, W]


def left_out_item(image_id: int, error: ImageDecodeError) -> tuple[None, dict]:
    """The batch item of an image left out: collate_detection drops it and lists ``left_out``."""
    return None, {"image_id": int(image_id), "left_out": str(error)}


def items_leaving_out(dataset: DetectionDataset, get, indices: list[int], position=None) -> list:
    """``[get(i) for i in indices]``; with ``dataset.leave_out_undecodable`` an ImageDecodeError
    gives ``left_out_item`` instead of raising. ``get(i)`` shows ``dataset`` item ``position[i]``
    (``i`` itself by default)."""
    if not dataset.leave_out_undecodable:
        return [get(i) for i in indices]
    items = []
    for i in indices:
        try:
            items.append(get(i))
        except ImageDecodeError as error:
            j = int(i if position is None else position[i])
            items.append(left_out_item(dataset.index.image_ids[j], error))
    return items


@dataclass
class DataSplits:
    """What a data config builds: train and val data sets (no transforms), the val split's COCO
    json (image and category ids as in the data sets) and the class names. The val set leaves
    images it cannot use out of its batches (and so out of the metric), never substituting another."""

    train: DetectionDataset
    val: DetectionDataset
    val_ann_file: str
    names: list[str]

    def __post_init__(self):
        self.val.leave_out_undecodable = True
