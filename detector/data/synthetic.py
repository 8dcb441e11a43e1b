"""The "shapes" set: a synthetic COCO-format detection set generated deterministically.

Six classes (circle, square, triangle, star, cross, diamond), each drawn filled or outlined in
random colours, from 8 px to half the image, often overlapping and sometimes crowded, on noisy,
striped or gradient backgrounds. Boxes are the tight bounds of the drawn pixels. Generated on
first use into a cache folder whose name holds the generator version and every parameter, so a
stale set is never reused; written to a temporary folder and renamed, so an interrupted
generation is never mistaken for a complete one.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from detector.data.base import DataSplits
from detector.data.coco import CocoDetection

VERSION = 1
NAMES = ["circle", "square", "triangle", "star", "cross", "diamond"]


def default_root() -> Path:
    return Path(os.environ.get("DETECTOR_CACHE", Path.home() / ".cache" / "detector"))


def _polygon(kind: str) -> np.ndarray:
    """Unit-square outline of a shape, (x, y) in [0, 1]."""
    if kind == "square":
        return np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float)
    if kind == "triangle":
        return np.array([[0.5, 0], [1, 1], [0, 1]], float)
    if kind == "diamond":
        return np.array([[0.5, 0], [1, 0.5], [0.5, 1], [0, 0.5]], float)
    if kind == "cross":
        a, b = 0.33, 0.67
        return np.array([[a, 0], [b, 0], [b, a], [1, a], [1, b], [b, b], [b, 1], [a, 1], [a, b], [0, b], [0, a],
                         [a, a]], float)
    if kind == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radius = np.where(np.arange(10) % 2 == 0, 0.5, 0.2)
        points = np.stack([0.5 + radius * np.cos(angles), 0.5 + radius * np.sin(angles)], 1)
        points -= points.min(0)
        return points / points.max(0)
    raise ValueError(kind)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    style = rng.integers(0, 3)
    base = rng.integers(0, 256, 3).astype(np.float32)
    if style == 0:  # gradient
        other = rng.integers(0, 256, 3).astype(np.float32)
        t = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
        image = base * (1 - t) + other * t + np.zeros((height, 1, 1), np.float32)
    elif style == 1:  # stripes
        period = rng.integers(8, 40)
        other = rng.integers(0, 256, 3).astype(np.float32)
        stripes = ((np.arange(width) // period) % 2).astype(np.float32)[None, :, None]
        image = base * (1 - stripes) * 0.3 + base * 0.7 + other * stripes * 0.3 + np.zeros((height, 1, 1), np.float32)
    else:  # blotchy texture
        small = rng.normal(0, 40, (height // 16 + 1, width // 16 + 1, 3)).astype(np.float32)
        image = base + cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    image += rng.normal(0, 8, (height, width, 3)).astype(np.float32)  # sensor-like noise
    return np.clip(image, 0, 255).astype(np.uint8)


def _draw(image: np.ndarray, rng: np.random.Generator, kind: str, x: int, y: int, w: int, h: int) -> list[float] | None:
    """Draw one shape in the box (x, y, w, h); returns the tight xywh box of what was drawn."""
    region = image[y:y + h, x:x + w]  # a view: drawing here draws in the image
    colour = rng.integers(0, 256, 3)
    if np.abs(colour - region.reshape(-1, 3).mean(0)).sum() < 150:  # keep contrast with what is below
        colour = 255 - colour
    filled = rng.random() < 0.6
    thickness = -1 if filled else int(max(2, min(w, h) // 10))
    mask = np.zeros((h, w), np.uint8)  # drawn in box coordinates
    if kind == "circle":
        cv2.ellipse(mask, (w // 2, h // 2), (max(w // 2 - 1, 1), max(h // 2 - 1, 1)), 0, 0, 360, 255,
                    thickness, cv2.LINE_AA)
    else:
        pad = 0 if filled else thickness / 2
        points = _polygon(kind) * [w - 1 - 2 * pad, h - 1 - 2 * pad] + [pad, pad]
        points = np.round(points).astype(np.int32)
        if filled:
            cv2.fillPoly(mask, [points], 255, cv2.LINE_AA)
        else:
            cv2.polylines(mask, [points], True, 255, thickness, cv2.LINE_AA)
    ys, xs = np.nonzero(mask > 127)
    if len(xs) == 0:
        return None
    alpha = (mask.astype(np.float32) / 255)[..., None]
    region[:] = (region * (1 - alpha) + colour.astype(np.float32) * alpha).astype(np.uint8)
    return [float(x + xs.min()), float(y + ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def _overlap_too_much(box, boxes, limit=0.5) -> bool:
    """True if ``box`` would hide more than ``limit`` of an earlier box."""
    x, y, w, h = box
    for bx, by, bw, bh in boxes:
        iw = max(0.0, min(x + w, bx + bw) - max(x, bx))
        ih = max(0.0, min(y + h, by + bh) - max(y, by))
        if iw * ih > limit * bw * bh:
            return True
    return False


def make_image(rng: np.random.Generator, min_size: int, max_size: int):
    height, width = (int(v) for v in rng.integers(min_size, max_size + 1, 2))
    image = _background(rng, height, width)
    crowded = rng.random() < 0.15
    count = int(rng.integers(12, 30)) if crowded else int(rng.integers(1, 10))
    short = min(height, width)
    annotations = []
    for _ in range(count):
        for _attempt in range(10):
            if crowded:
                size = rng.uniform(max(8, short * 0.04), max(12, short * 0.12))
            else:
                size = np.exp(rng.uniform(np.log(max(8, short * 0.05)), np.log(short * 0.5)))
            aspect = rng.uniform(0.7, 1.4)
            w, h = int(max(8, size * aspect ** 0.5)), int(max(8, size / aspect ** 0.5))
            if w >= width or h >= height:
                continue
            x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            if not _overlap_too_much((x, y, w, h), [a[1] for a in annotations]):
                break
        else:
            continue
        label = int(rng.integers(0, len(NAMES)))
        box = _draw(image, rng, NAMES[label], x, y, w, h)
        if box is not None:
            annotations.append((label, box))
    return image, annotations


def generate_split(folder: Path, count: int, seed: int, min_size: int, max_size: int) -> Path:
    """Write ``count`` JPEGs and ``annotations.json`` into ``folder``; returns the json path."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for index in range(count):
        image, objects = make_image(rng, min_size, max_size)
        name = f"{index:06d}.jpg"
        cv2.imwrite(str(folder / "images" / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        images.append({"id": index + 1, "file_name": name, "width": image.shape[1], "height": image.shape[0]})
        for label, (x, y, w, h) in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": label + 1,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(NAMES)]
    ann_file = folder / "annotations.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return ann_file


def ensure_shapes(root: str | Path | None = None, num_train: int = 2000, num_val: int = 200, seed: int = 0,
                  min_size: int = 320, max_size: int = 640) -> Path:
    """The folder of the set with these parameters, generated if it is not there yet."""
    if min_size < 32 or max_size < min_size:
        raise ValueError(f"shapes: need 32 <= min_size <= max_size, got {min_size}, {max_size}")
    name = f"shapes-v{VERSION}-seed{seed}-n{num_train}-{num_val}-px{min_size}-{max_size}"
    folder = (Path(root).expanduser() if root else default_root()) / name
    if (folder / "val" / "annotations.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=folder.parent))
    try:
        generate_split(tmp / "train", num_train, seed, min_size, max_size)
        generate_split(tmp / "val", num_val, seed + 1_000_003, min_size, max_size)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished first
            if not (folder / "val" / "annotations.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def shapes_splits(root: str | None = None, num_train: int = 2000, num_val: int = 200, seed: int = 0,
                  min_size: int = 320, max_size: int = 640) -> DataSplits:
    folder = ensure_shapes(root, num_train, num_val, seed, min_size, max_size)
    train = CocoDetection(folder / "train" / "images", folder / "train" / "annotations.json")
    val = CocoDetection(folder / "val" / "images", folder / "val" / "annotations.json")
    return DataSplits(train=train, val=val, val_ann_file=str(folder / "val" / "annotations.json"), names=list(NAMES))
