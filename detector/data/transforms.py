"""Validation-time transforms: the letterbox (resize keeping aspect, pad to a square, centred).

``Letterbox`` records ``target["letterbox"] = (scale, pad_x, pad_y)`` so that predictions map
back to original pixels as ``original = (box - [pad_x, pad_y, pad_x, pad_y]) / scale``. It is
hand-written (cv2.resize + pad) rather than albumentations' LongestMaxSize + PadIfNeeded because
evaluation needs the exact scale and padding that were applied, in both directions.
"""
from __future__ import annotations

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
