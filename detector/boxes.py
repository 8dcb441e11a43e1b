"""Box formats, the aligned IoU family, anchor points and the distance <-> box transforms.

Conventions used across the project:
- ``xyxy``: (x1, y1, x2, y2); ``xywh``: (x1, y1, w, h) as COCO writes it; ``cxcywh``: centre and size.
- Every function works on the last dimension and broadcasts over any leading ones.
- Units are whatever the caller passes (pixels or stride units); the two arguments of one call
  must share a unit.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

IOU_KINDS = ("iou", "giou", "diou", "ciou")


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((x1, y1, x2 - x1, y2 - y1), dim=-1)


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    x, y, w, h = boxes.unbind(-1)
    return torch.stack((x, y, x + w, y + h), dim=-1)


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def aligned_iou(pred: Tensor, target: Tensor, kind: str = "ciou", eps: float = 1e-7) -> Tensor:
    """IoU and its generalisations between aligned pairs of xyxy boxes: [..., 4] x [..., 4] -> [...].

    - ``iou``: intersection over union.
    - ``giou``: IoU - |C \\ (A u B)| / |C|, C the smallest enclosing box (Rezatofighi et al. 2019).
    - ``diou``: IoU - rho^2 / c^2, rho the centre distance, c the enclosing box diagonal (Zheng et
      al. 2020).
    - ``ciou``: DIoU - alpha * v, v the aspect-ratio term (4/pi^2)(atan(wt/ht) - atan(wp/hp))^2 and
      alpha = v / (1 - IoU + v), treated as a constant in the gradient as in the paper.

    Zero-area boxes are allowed: widths and heights are clamped at 0 and ``eps`` keeps every
    denominator positive, so values and gradients stay finite.
    """
    if kind not in IOU_KINDS:
        raise ValueError(f"aligned_iou: kind must be one of {IOU_KINDS}, got {kind!r}")
    px1, py1, px2, py2 = pred.unbind(-1)
    tx1, ty1, tx2, ty2 = target.unbind(-1)
    pw, ph = (px2 - px1).clamp(min=0), (py2 - py1).clamp(min=0)
    tw, th = (tx2 - tx1).clamp(min=0), (ty2 - ty1).clamp(min=0)

    inter = (torch.min(px2, tx2) - torch.max(px1, tx1)).clamp(min=0) * (
        torch.min(py2, ty2) - torch.max(py1, ty1)
    ).clamp(min=0)
    union = pw * ph + tw * th - inter + eps
    iou = inter / union
    if kind == "iou":
        return iou

    cw = torch.max(px2, tx2) - torch.min(px1, tx1)  # enclosing box width
    ch = torch.max(py2, ty2) - torch.min(py1, ty1)
    if kind == "giou":
        enclosing = cw * ch + eps
        return iou - (enclosing - union) / enclosing

    diag2 = cw**2 + ch**2 + eps
    rho2 = ((px1 + px2 - tx1 - tx2) ** 2 + (py1 + py2 - ty1 - ty2) ** 2) / 4
    if kind == "diou":
        return iou - rho2 / diag2

    v = (4 / math.pi**2) * (torch.atan(tw / (th + eps)) - torch.atan(pw / (ph + eps))) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / diag2 + v * alpha)


def make_anchors(
    feature_sizes: list[tuple[int, int]],
    strides: list[int],
    offset: float = 0.5,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Anchor points at grid-cell centres of every level, in pixels.

    Args:
        feature_sizes: (H_l, W_l) of each level's feature map.
        strides: pixel stride of each level.
    Returns:
        anchor_points [A, 2] (x, y) px with A = sum_l H_l * W_l, level-major then row-major,
        and the stride of each anchor [A].
    """
    if len(feature_sizes) != len(strides):
        raise ValueError(
            f"make_anchors: one stride per feature map is needed, got {len(feature_sizes)} "
            f"feature sizes and {len(strides)} strides"
        )
    points, anchor_strides = [], []
    for (h, w), stride in zip(feature_sizes, strides):
        xs = (torch.arange(w, device=device, dtype=dtype) + offset) * stride
        ys = (torch.arange(h, device=device, dtype=dtype) + offset) * stride
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((grid_x, grid_y), dim=-1).reshape(-1, 2))  # [H*W, 2]
        anchor_strides.append(torch.full((h * w,), float(stride), device=device, dtype=dtype))
    return torch.cat(points), torch.cat(anchor_strides)


def dist2bbox(distance: Tensor, anchor_points: Tensor) -> Tensor:
    """(left, top, right, bottom) distances from anchor points [..., 4] -> xyxy boxes [..., 4]."""
    lt, rb = distance.chunk(2, dim=-1)
    return torch.cat((anchor_points - lt, anchor_points + rb), dim=-1)


def bbox2dist(anchor_points: Tensor, bbox: Tensor, reg_max: int) -> Tensor:
    """xyxy boxes -> (l, t, r, b) distances from the anchor points, clamped to [0, reg_max - 1.01].

    The upper clamp keeps a DFL target strictly below the last bin so that both of its
    neighbouring bins exist.
    """
    x1y1, x2y2 = bbox.chunk(2, dim=-1)
    dist = torch.cat((anchor_points - x1y1, x2y2 - anchor_points), dim=-1)
    return dist.clamp(min=0, max=reg_max - 1 - 0.01)


def distribution_to_distance(box_dist: Tensor, dim: int = -1) -> Tensor:
    """Decode the box branch: logits with reg_max bins along ``dim`` -> distances in stride units,
    ``dim`` removed ([..., 4, reg_max] -> [..., 4] by default; [B, 4, reg_max, A] -> [B, 4, A] with
    dim=2, the channel-first layout of an ultralytics-layout export).

    With reg_max > 1 this is the integral of GFL: the expectation of the softmax over bins
    0..reg_max-1. With reg_max == 1 (DFL off) the branch regresses each distance directly; a
    softplus keeps it non-negative so that decoded boxes are never inverted.
    """
    reg_max = box_dist.shape[dim]
    if reg_max == 1:
        return torch.nn.functional.softplus(box_dist.squeeze(dim))
    shape = [1] * box_dist.dim()
    shape[dim] = reg_max
    bins = torch.arange(reg_max, device=box_dist.device, dtype=box_dist.dtype).view(shape)
    # An elementwise product rather than a matmul: autocast runs matmuls in fp16/bf16, which would
    # round a float32 expectation to ~0.03 stride units (about a pixel at stride 32).
    return (box_dist.softmax(dim=dim) * bins).sum(dim=dim)


def decode_boxes(box_dist: Tensor, anchor_points: Tensor, strides: Tensor) -> Tensor:
    """Head box output [B, A, 4, reg_max] -> xyxy boxes in pixels [B, A, 4].

    anchor_points [A, 2] px and strides [A] as returned by ``make_anchors``.
    """
    distance = distribution_to_distance(box_dist)  # [B, A, 4] stride units
    return dist2bbox(distance * strides[:, None], anchor_points)
