"""Transforms: the validation letterbox, and the two training transforms written by hand (YOLOv8's
HSV gains and 4-image mosaic; see each for why albumentations' own was not used).

The letterbox resizes keeping aspect and pads to a square, centred.

``Letterbox`` records ``target["letterbox"] = (scale, pad_x, pad_y)`` so that predictions map
back to original pixels as ``original = (box - [pad_x, pad_y, pad_x, pad_y]) / scale``. It is
hand-written (cv2.resize + pad) rather than albumentations' LongestMaxSize + PadIfNeeded because
evaluation needs the exact scale and padding that were applied, in both directions.
"""
from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import torch
from torch import Tensor

PAD_VALUE = 114


def letterbox_params(height: int, width: int, imgsz: int) -> tuple[float, int, int, int, int]:
    """(scale, new_w, new_h, pad_x, pad_y) for an image of (height, width) into imgsz x imgsz."""
    scale = imgsz / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    return scale, new_w, new_h, (imgsz - new_w) // 2, (imgsz - new_h) // 2


def letterbox_array(image: np.ndarray, imgsz: int) -> tuple[np.ndarray, tuple[float, int, int]]:
    """HWC uint8 -> (imgsz x imgsz x 3, (scale, pad_x, pad_y))."""
    height, width = image.shape[:2]
    scale, new_w, new_h, pad_x, pad_y = letterbox_params(height, width, imgsz)
    if (new_w, new_h) != (width, height):
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        image = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    out = np.full((imgsz, imgsz, 3), PAD_VALUE, dtype=np.uint8)
    out[pad_y:pad_y + new_h, pad_x:pad_x + new_w] = image
    return out, (scale, pad_x, pad_y)


def letterbox_image(image: Tensor, imgsz: int) -> tuple[Tensor, tuple[float, int, int]]:
    """uint8 [3, H, W] -> (uint8 [3, imgsz, imgsz], (scale, pad_x, pad_y))."""
    array, params = letterbox_array(np.ascontiguousarray(image.permute(1, 2, 0).numpy()), imgsz)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))), params


def to_letterbox(boxes: Tensor, params: tuple[float, int, int]) -> Tensor:
    scale, pad_x, pad_y = params
    return boxes * scale + boxes.new_tensor([pad_x, pad_y, pad_x, pad_y])


def from_letterbox(boxes: Tensor, params: tuple[float, int, int]) -> Tensor:
    scale, pad_x, pad_y = params
    return (boxes - boxes.new_tensor([pad_x, pad_y, pad_x, pad_y])) / scale


class Letterbox:
    """``(image uint8 [3,H,W], target) -> (uint8 [3,imgsz,imgsz], target)`` with boxes moved along."""

    def __init__(self, imgsz: int):
        if imgsz % 32:
            raise ValueError(f"imgsz={imgsz} must be a multiple of 32")
        self.imgsz = imgsz

    def __call__(self, image: Tensor, target: dict) -> tuple[Tensor, dict]:
        image, params = letterbox_image(image, self.imgsz)
        target = dict(target, boxes=to_letterbox(target["boxes"], params), letterbox=params)
        return image, target


class HSVGains(A.ImageOnlyTransform):
    """YOLOv8's HSV jitter: hue, saturation and value each multiplied by a random gain in
    [1 - g, 1 + g], applied through one lookup table per channel (cv2.LUT).

    Hand-written because albumentations' HueSaturationValue *adds* shifts (a different
    distribution from YOLOv8's gains) and costs about 4x as much per 640 px image.
    """

    def __init__(self, hgain: float = 0.015, sgain: float = 0.7, vgain: float = 0.4, p: float = 1.0):
        super().__init__(p=p)
        self.hgain, self.sgain, self.vgain = hgain, sgain, vgain

    def get_params(self) -> dict:
        gains = np.array([self.hgain, self.sgain, self.vgain], dtype=np.float64)
        return {"gain": self.random_generator.uniform(-1, 1, 3) * gains + 1}

    def apply(self, img: np.ndarray, gain: np.ndarray, **params) -> np.ndarray:
        x = np.arange(256, dtype=np.float64)
        lut = np.stack([(x * gain[0]) % 180,  # OpenCV's uint8 hue is 0..179
                        np.clip(x * gain[1], 0, 255),
                        np.clip(x * gain[2], 0, 255)], axis=1).astype(np.uint8).reshape(256, 1, 3)
        hsv = cv2.LUT(cv2.cvtColor(img, cv2.COLOR_RGB2HSV), lut)  # one table per channel, no split/merge
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("hgain", "sgain", "vgain")


def mosaic4(images: list[np.ndarray], boxes: list[np.ndarray], labels: list[np.ndarray], imgsz: int,
            centre: tuple[int, int], min_visibility: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """YOLOv8's 4-image mosaic on an imgsz x imgsz canvas.

    images: 4 HWC uint8 images (already resized to a longer side of imgsz), placed top-left,
    top-right, bottom-left and bottom-right of ``centre`` (x, y) px, each cut by the canvas.
    boxes: 4 arrays [N_i, 4] xyxy px in their image; labels: 4 arrays [N_i].
    Returns (canvas, boxes [N, 4] xyxy px in the canvas, clipped to each image's visible part,
    labels [N]); a box with less than ``min_visibility`` of its area left is dropped.

    Hand-written because albumentations' Mosaic rebuilds its per-cell transforms on every call,
    which made it about half of the pipeline's time at 640 px; the placement is four slice copies.
    """
    cx, cy = centre
    canvas = np.full((imgsz, imgsz, 3), PAD_VALUE, dtype=np.uint8)
    out_boxes, out_labels = [], []
    for k, (image, box, label) in enumerate(zip(images, boxes, labels)):
        height, width = image.shape[:2]
        x0 = cx - width if k in (0, 2) else cx  # where the image's top-left corner lands
        y0 = cy - height if k in (0, 1) else cy
        x1, y1, x2, y2 = max(x0, 0), max(y0, 0), min(x0 + width, imgsz), min(y0 + height, imgsz)
        if x2 <= x1 or y2 <= y1:
            continue
        canvas[y1:y2, x1:x2] = image[y1 - y0:y2 - y0, x1 - x0:x2 - x0]
        shifted = box.reshape(-1, 4).astype(np.float32) + np.array([x0, y0, x0, y0], np.float32)
        clipped = np.clip(shifted, [x1, y1, x1, y1], [x2, y2, x2, y2]).astype(np.float32)
        area = (shifted[:, 2] - shifted[:, 0]) * (shifted[:, 3] - shifted[:, 1])
        kept = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
        visible = kept >= min_visibility * np.maximum(area, 1e-6)
        out_boxes.append(clipped[visible])
        out_labels.append(np.asarray(label, dtype=np.int64).reshape(-1)[visible])
    if not out_boxes:
        return canvas, np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    return canvas, np.concatenate(out_boxes), np.concatenate(out_labels)
