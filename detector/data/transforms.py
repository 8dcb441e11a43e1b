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


def letterbox_params(height: int, width: int, imgsz: int, shape: tuple[int, int] | None = None
                     ) -> tuple[float, int, int, int, int]:
    """(scale, new_w, new_h, pad_x, pad_y) for an image of (height, width) with its longer side
    made imgsz, centred on an imgsz x imgsz canvas, or on a ``shape`` (height, width) canvas."""
    out_h, out_w = shape or (imgsz, imgsz)
    scale = min(imgsz / max(height, width), out_h / height, out_w / width)  # the longer side imgsz, if it fits
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    return scale, new_w, new_h, (out_w - new_w) // 2, (out_h - new_h) // 2


def letterbox_array(image: np.ndarray, imgsz: int, shape: tuple[int, int] | None = None
                    ) -> tuple[np.ndarray, tuple[float, int, int]]:
    """HWC uint8 -> (imgsz x imgsz x 3, or ``shape`` (height, width) x 3, (scale, pad_x, pad_y))."""
    height, width = image.shape[:2]
    scale, new_w, new_h, pad_x, pad_y = letterbox_params(height, width, imgsz, shape)
    if (new_w, new_h) != (width, height):
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        image = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    out_h, out_w = shape or (imgsz, imgsz)
    out = np.full((out_h, out_w, 3), PAD_VALUE, dtype=np.uint8)
    out[pad_y:pad_y + new_h, pad_x:pad_x + new_w] = image
    return out, (scale, pad_x, pad_y)


def letterbox_image(image: Tensor, imgsz: int, shape: tuple[int, int] | None = None
                    ) -> tuple[Tensor, tuple[float, int, int]]:
    """uint8 [3, H, W] -> (uint8 [3, imgsz, imgsz] or [3, *shape], (scale, pad_x, pad_y))."""
    array, params = letterbox_array(np.ascontiguousarray(image.permute(1, 2, 0).numpy()), imgsz, shape)
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


def hsv_table(gain: np.ndarray) -> np.ndarray:
    """The [256, 1, 3] uint8 lookup table multiplying hue, saturation and value by ``gain`` (3,)."""
    x = np.arange(256, dtype=np.float64)
    return np.stack([(x * gain[0]) % 180,  # OpenCV's uint8 hue is 0..179
                     np.clip(x * gain[1], 0, 255),
                     np.clip(x * gain[2], 0, 255)], axis=1).astype(np.uint8).reshape(256, 1, 3)


def hsv_gains(image: np.ndarray, gain: np.ndarray | None = None, table: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 with hue, saturation and value multiplied by ``gain`` (3,), through lookup tables
    (``table``: ``hsv_table(gain)`` made once, for a transform applied to several parts)."""
    table = hsv_table(gain) if table is None else table
    hsv = cv2.LUT(cv2.cvtColor(image, cv2.COLOR_RGB2HSV), table)  # one table per channel, no split/merge
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


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
        return hsv_gains(img, gain)

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
    canvas = np.full((imgsz, imgsz, 3), PAD_VALUE, dtype=np.uint8)
    out_boxes, out_labels = [], []
    layout = mosaic_layout([image.shape[:2] for image in images], imgsz, centre)
    for image, box, label, (x0, y0, crop) in zip(images, boxes, labels, layout):
        if crop is None:
            continue
        x1, y1, x2, y2 = crop
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


# --- the fused mosaic + affine of the training pipeline ---

def mosaic_layout(shapes: list[tuple[int, int]], imgsz: int, centre: tuple[int, int]) -> list[tuple[int, int, tuple]]:
    """Where ``mosaic4`` puts 4 images of (height, width): per image (x0, y0, (x1, y1, x2, y2)),
    its top-left corner and its visible part, in canvas px (parts cut entirely are None)."""
    cx, cy = centre
    layout = []
    for k, (height, width) in enumerate(shapes):
        x0 = cx - width if k in (0, 2) else cx
        y0 = cy - height if k in (0, 1) else cy
        x1, y1, x2, y2 = max(x0, 0), max(y0, 0), min(x0 + width, imgsz), min(y0 + height, imgsz)
        layout.append((x0, y0, (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None))
    return layout


def affine_matrix(imgsz: int, scale: float, degrees: float, shear: tuple[float, float],
                  translate: tuple[float, float], canvas: int | None = None) -> np.ndarray:
    """[2, 3] canvas -> output px: the canvas centre (``canvas`` px square, default imgsz) to the
    output's, rotate by ``degrees`` and scale, shear (x, y degrees), then move by ``translate`` px
    (YOLOv8's random_perspective without perspective; its mosaic canvas is 2 x imgsz)."""
    half = imgsz / 2
    centre = np.array([[1, 0, -(canvas or imgsz) / 2], [0, 1, -(canvas or imgsz) / 2], [0, 0, 1]])
    rotate = np.vstack([cv2.getRotationMatrix2D((0, 0), degrees, scale), [0, 0, 1]])
    shear_m = np.array([[1, np.tan(np.radians(shear[0])), 0], [np.tan(np.radians(shear[1])), 1, 0], [0, 0, 1]])
    back = np.array([[1, 0, half + translate[0]], [0, 1, half + translate[1]], [0, 0, 1]])
    return (back @ shear_m @ rotate @ centre)[:2]


def _axis_aligned_paste(out: np.ndarray, image: np.ndarray, x0: int, y0: int, crop: tuple, matrix: np.ndarray,
                        colour=None):
    """Paste ``image`` (top-left at canvas (x0, y0), visible part ``crop``) through an axis-aligned
    ``matrix`` with one cv2.resize of the part that lands in ``out`` (5x cheaper a pixel than
    cv2.warpAffine). Returns the exact map used, (a, b) with out_px = a * canvas_px + b per axis:
    output edges are rounded to whole pixels, so each image's scale differs from the drawn one by
    under a pixel across the image, and its boxes follow that exact map."""
    imgsz = out.shape[0]
    s_x, s_y, t_x, t_y = matrix[0, 0], matrix[1, 1], matrix[0, 2], matrix[1, 2]
    # the canvas part that lands inside the output, in the image's own px, widened to whole px
    lo_x = max(crop[0], int(np.floor(-t_x / s_x))) - x0
    hi_x = min(crop[2], int(np.ceil((imgsz - t_x) / s_x))) - x0
    lo_y = max(crop[1], int(np.floor(-t_y / s_y))) - y0
    hi_y = min(crop[3], int(np.ceil((imgsz - t_y) / s_y))) - y0
    if hi_x <= lo_x or hi_y <= lo_y:
        return None
    X1, X2 = round(s_x * (x0 + lo_x) + t_x), round(s_x * (x0 + hi_x) + t_x)
    Y1, Y2 = round(s_y * (y0 + lo_y) + t_y), round(s_y * (y0 + hi_y) + t_y)
    if X2 <= X1 or Y2 <= Y1:
        return None
    part = image[lo_y:hi_y, lo_x:hi_x]
    ox1, oy1, ox2, oy2 = max(X1, 0), max(Y1, 0), min(X2, imgsz), min(Y2, imgsz)
    if ox2 <= ox1 or oy2 <= oy1:
        colour = None
    elif colour is not None and part.shape[0] * part.shape[1] < (ox2 - ox1) * (oy2 - oy1):
        part, colour = colour(np.ascontiguousarray(part)), None  # enlarged: fewer pixels to colour before
    if (X2 - X1, Y2 - Y1) != (part.shape[1], part.shape[0]):  # bilinear, as cv2.warpAffine would sample
        part = cv2.resize(part, (X2 - X1, Y2 - Y1), interpolation=cv2.INTER_LINEAR)
    if ox2 > ox1 and oy2 > oy1:
        visible = part[oy1 - Y1:oy2 - Y1, ox1 - X1:ox2 - X1]
        out[oy1:oy2, ox1:ox2] = visible if colour is None else colour(np.ascontiguousarray(visible))
    a_x, a_y = (X2 - X1) / (hi_x - lo_x), (Y2 - Y1) / (hi_y - lo_y)
    return np.array([a_x, a_y, a_x, a_y]), np.array([X1 - a_x * (x0 + lo_x), Y1 - a_y * (y0 + lo_y)] * 2)


def warp_placed(images: list[np.ndarray], boxes: list[np.ndarray], labels: list[np.ndarray],
                layout: list[tuple[int, int, tuple]], matrix: np.ndarray, imgsz: int,
                min_visibility: float = 0.1, min_size: float = 2.0, colour=None, canvas: int | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images placed on a virtual ``canvas`` px square canvas (default imgsz; ``layout``:
    ``mosaic_layout``'s triples, or one for a single padded image), warped by ``matrix`` into an
    imgsz x imgsz output, in one step.

    Without rotation or shear (the default), each image is resized once straight into the output
    (no canvas is drawn); otherwise the canvas is drawn and warped with cv2.warpAffine. Boxes
    (xyxy px in their image) are cut to the image's visible part, mapped, and clipped to the
    output; a box is dropped when less than ``min_visibility`` of its mapped area stays in view
    or when it ends narrower or lower than ``min_size`` px (as YOLOv8's box_candidates).
    ``colour``: a per-pixel colour transform (HxWx3 uint8 -> same), applied as if to the whole
    output; without rotation only the pixels pasted go through it and the padding takes the
    transformed padding colour, so zooming out does not pay for converting grey, and an image
    that is enlarged is coloured before its resize (fewer pixels; the result differs from the other order only
    where the bilinear resize blends neighbouring pixels of different colours).
    """
    axis_aligned = abs(matrix[0, 1]) < 1e-12 and abs(matrix[1, 0]) < 1e-12 and matrix[0, 0] > 0 and matrix[1, 1] > 0
    out_boxes, out_labels = [], []
    if axis_aligned:
        pad = np.full((1, 1, 3), PAD_VALUE, dtype=np.uint8)
        pad = pad if colour is None else colour(pad)
        out = np.empty((imgsz, imgsz, 3), dtype=np.uint8)
        out[:] = int(pad[0, 0, 0]) if (pad == pad[0, 0, 0]).all() else pad  # a grey: a plain fill
        for image, box, label, (x0, y0, crop) in zip(images, boxes, labels, layout):
            mapped = _axis_aligned_paste(out, image, x0, y0, crop, matrix, colour) if crop is not None else None
            if mapped is None or not len(box):
                continue
            a, b = mapped
            canvas = np.clip(box.reshape(-1, 4) + np.array([x0, y0, x0, y0], np.float32), [crop[0], crop[1]] * 2,
                             [crop[2], crop[3]] * 2)
            out_boxes.append(canvas * a + b)
            out_labels.append(np.asarray(label, np.int64).reshape(-1))
        corners_to_boxes = None
    else:
        canvas_img = np.full((canvas or imgsz, canvas or imgsz, 3), PAD_VALUE, dtype=np.uint8)
        for image, box, label, (x0, y0, crop) in zip(images, boxes, labels, layout):
            if crop is None:
                continue
            x1, y1, x2, y2 = crop
            canvas_img[y1:y2, x1:x2] = image[y1 - y0:y2 - y0, x1 - x0:x2 - x0]
            if len(box):
                canvas = np.clip(box.reshape(-1, 4) + np.array([x0, y0, x0, y0], np.float32), [x1, y1] * 2, [x2, y2] * 2)
                out_boxes.append(canvas)
                out_labels.append(np.asarray(label, np.int64).reshape(-1))
        out = cv2.warpAffine(canvas_img, matrix, (imgsz, imgsz), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=(PAD_VALUE,) * 3)
        out = out if colour is None else colour(out)
        corners_to_boxes = matrix
    if not out_boxes:
        return out, np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    mapped, labels_all = np.concatenate(out_boxes).astype(np.float64), np.concatenate(out_labels)
    if corners_to_boxes is not None:  # [N, 4 corners, 2] through the matrix, then their bounds
        x1, y1, x2, y2 = mapped.T
        corners = np.stack([np.stack([x1, y1], 1), np.stack([x2, y1], 1), np.stack([x1, y2], 1), np.stack([x2, y2], 1)], 1)
        moved = corners @ corners_to_boxes[:, :2].T + corners_to_boxes[:, 2]
        mapped = np.concatenate([moved.min(1), moved.max(1)], 1)
    area = (mapped[:, 2] - mapped[:, 0]) * (mapped[:, 3] - mapped[:, 1])
    clipped = np.clip(mapped, 0, imgsz)
    w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    keep = (w >= min_size) & (h >= min_size) & (w * h >= min_visibility * np.maximum(area, 1e-6))
    return out, clipped[keep].astype(np.float32), labels_all[keep]


def blur_gray_clahe(image: np.ndarray, rng: np.random.Generator, p: float) -> np.ndarray:
    """YOLOv8's albumentations step with its defaults: Blur and MedianBlur (odd kernel 3-7), ToGray
    and CLAHE (clip 1-4, 8 x 8 tiles, on the L of Lab), each with probability ``p``, drawn from
    ``rng`` so that a sample stays a function of its seed. HWC uint8 RGB in and out."""
    draws = rng.random(7)  # one call, always 7 numbers: the stream after it does not depend on what fired
    kernels, clip = 3 + 2 * np.minimum((draws[4:6] * 3).astype(int), 2), 1.0 + 3.0 * draws[6]
    if draws[0] < p:
        image = cv2.blur(image, (int(kernels[0]),) * 2)
    if draws[1] < p:
        image = cv2.medianBlur(np.ascontiguousarray(image), int(kernels[1]))
    if draws[2] < p:
        image = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    if draws[3] < p:
        lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
        lab[..., 0] = cv2.createCLAHE(clipLimit=clip, tileGridSize=(8, 8)).apply(np.ascontiguousarray(lab[..., 0]))
        image = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    return image
