"""Pure loss functions of the detector: classification (FL, QFL, VFL) and box (DFL, IoU family).

Every function has the same shape of signature, ``(pred, target, <hyper-parameters>, weight=None,
reduction="none")``, so that the losses of one family are drop-in replacements for each other.

- Classification losses take raw logits ``[..., C]`` and targets of the same shape (one-hot or
  soft scores in [0, 1]) and return the elementwise loss ``[..., C]`` with ``reduction="none"``.
- ``distribution_focal_loss`` takes bin logits ``[..., n_bins]`` and a float target ``[...]``.
- ``iou_loss`` takes aligned xyxy boxes ``[..., 4]`` (any unit, the same for both) -> ``[...]``.

Numerics: losses are computed in float32 (inputs are cast with ``.float()``, so fp16/bf16 inputs
and autocast regions give float32 losses) and from logits through ``binary_cross_entropy_with_logits``
and ``log_softmax``, never as ``log(sigmoid(x))``: values and gradients stay finite for
|logit| up to 100 and beyond.

``weight`` multiplies the elementwise loss (broadcasting); ``reduction`` is then applied:
``"none"`` (elementwise), ``"sum"``, or ``"mean"`` (sum over the number of elements of the weighted
loss; 0 on an empty input, with a gradient path, rather than NaN).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from detector.boxes import aligned_iou

REDUCTIONS = ("none", "mean", "sum")

__all__ = [
    "REDUCTIONS",
    "focal_loss",
    "quality_focal_loss",
    "varifocal_loss",
    "distribution_focal_loss",
    "iou_loss",
]


def _check_reduction(reduction: str, name: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _weight_and_reduce(loss: Tensor, weight: Tensor | None, reduction: str) -> Tensor:
    """Apply the optional elementwise ``weight`` and the reduction (already validated)."""
    if weight is not None:
        loss = loss * weight
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    # "mean": divide by a Python int so that an empty loss gives 0 (sum of nothing) with a grad path.
    return total / max(loss.numel(), 1)


def _check_same_shape(pred: Tensor, target: Tensor, name: str, what: str) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"{name}: {what} must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )


def focal_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    weight: Tensor | None = None,
    reduction: str = "none",
) -> Tensor:
    """Sigmoid focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017).

    FL = alpha_t * (1 - p_t)^gamma * BCE(p, t), with p = sigmoid(logits),
    p_t = p * t + (1 - p) * (1 - t) and alpha_t = alpha * t + (1 - alpha) * (1 - t). For hard
    targets this is the RetinaNet loss; soft targets in [0, 1] use the same expressions.

    Args:
        logits: [..., C] raw scores.
        targets: [..., C] in [0, 1] (one-hot or soft), same shape as ``logits``.
        alpha: weight of the positive term; ``None`` or a negative value disables alpha weighting.
        gamma: focusing parameter; 0 gives (alpha-weighted) BCE.
        weight: optional, broadcast against the [..., C] loss.
        reduction: "none" -> [..., C]; "sum"; "mean" over the elements.
    """
    _check_reduction(reduction, "focal_loss")
    _check_same_shape(logits, targets, "focal_loss", "logits and targets")
    x, t = logits.float(), targets.float()
    loss = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    if gamma != 0:
        # 1 - p_t = p (1 - t) + (1 - p) t, with sigmoid(-x) as 1 - p (no cancellation at large x);
        # lerp returns its end points exactly at t = 0 and t = 1.
        one_minus_pt = torch.lerp(torch.sigmoid(x), torch.sigmoid(-x), t)
        loss = loss * one_minus_pt.pow(gamma)
    if alpha is not None and alpha >= 0:
        loss = loss * (t * (2 * alpha - 1) + (1 - alpha))  # alpha_t = alpha t + (1 - alpha)(1 - t)
    return _weight_and_reduce(loss, weight, reduction)


def quality_focal_loss(
    logits: Tensor,
    targets: Tensor,
    beta: float = 2.0,
    weight: Tensor | None = None,
    reduction: str = "none",
) -> Tensor:
    """Quality focal loss (Li et al., "Generalized Focal Loss", NeurIPS 2020).

    QFL = |y - sigmoid(x)|^beta * BCE(sigmoid(x), y), elementwise over all classes: y is the
    quality (e.g. IoU) score of the assigned class of a positive and 0 everywhere else. The
    modulating factor is part of the loss (not detached), so for a fixed y the loss is minimised
    at sigmoid(x) == y. Use beta >= 1 (the paper uses 2): below 1 the factor's gradient is
    infinite where sigmoid(x) == y.

    Args:
        logits: [..., C] raw scores.
        targets: [..., C] soft scores in [0, 1], same shape as ``logits``.
        beta: focusing parameter; 0 gives BCE.
        weight: optional, broadcast against the [..., C] loss.
        reduction: "none" -> [..., C]; "sum"; "mean" over the elements.
    """
    _check_reduction(reduction, "quality_focal_loss")
    _check_same_shape(logits, targets, "quality_focal_loss", "logits and targets")
    x, y = logits.float(), targets.float()
    loss = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    if beta != 0:
        loss = loss * (y - torch.sigmoid(x)).abs().pow(beta)
    return _weight_and_reduce(loss, weight, reduction)


def varifocal_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float = 0.75,
    gamma: float = 2.0,
    detach_weight: bool = False,
    weight: Tensor | None = None,
    reduction: str = "none",
) -> Tensor:
    """Varifocal loss (Zhang et al., "VarifocalNet: An IoU-aware Dense Object Detector", CVPR 2021).

    VFL = q * BCE(p, q) where q > 0 (positives, weighted by their target score) and
    alpha * p^gamma * BCE(p, 0) where q == 0 (negatives, down-weighted like focal loss),
    p = sigmoid(logits).

    Gradient. By default (``detach_weight=False``) the negative weight alpha * p^gamma is part of
    the loss, as in VarifocalNet's code, mmdetection's ``varifocal_loss`` and ultralytics'
    ``VarifocalLoss``: on a negative, dVFL/dx = alpha * p^gamma * (p + gamma * (1 - p) * softplus(x)).
    ``detach_weight=True`` treats the weight as a constant (RT-DETR's form): dVFL/dx =
    alpha * p^gamma * p. The values are the same; on positives both give q * (p - q).

    Args:
        logits: [..., C] raw scores.
        targets: [..., C] IoU-aware scores q in [0, 1] (0 for negatives), same shape as ``logits``.
        alpha: weight of the negatives.
        gamma: focusing parameter of the negatives.
        detach_weight: detach the negatives' weight alpha * p^gamma from the graph.
        weight: optional, broadcast against the [..., C] loss.
        reduction: "none" -> [..., C]; "sum"; "mean" over the elements.
    """
    _check_reduction(reduction, "varifocal_loss")
    _check_same_shape(logits, targets, "varifocal_loss", "logits and targets")
    x, q = logits.float(), targets.float()
    # p^gamma as exp(gamma * log p): finite gradient gamma * (1 - p) * p^gamma even where p
    # underflows to 0 (pow's gamma * p^(gamma - 1) is inf * 0 there for gamma < 1).
    negative_weight = alpha * torch.exp(gamma * F.logsigmoid(x))
    if detach_weight:
        negative_weight = negative_weight.detach()
    focal_weight = torch.where(q > 0, q, negative_weight)
    loss = F.binary_cross_entropy_with_logits(x, q, reduction="none") * focal_weight
    return _weight_and_reduce(loss, weight, reduction)


def distribution_focal_loss(
    pred_dist: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    reduction: str = "none",
) -> Tensor:
    """Distribution focal loss (Li et al., "Generalized Focal Loss", NeurIPS 2020).

    A continuous target y between bins i = floor(y) and i + 1 is learnt as the cross-entropy mix
    DFL = (i + 1 - y) * CE(pred, i) + (y - i) * CE(pred, i + 1), which is minimised by a
    distribution whose mass sits on the two bins in that proportion (its expectation is y).
    On an integer y the loss is the CE of bin y alone, the last bin (y == n_bins - 1) included.

    Args:
        pred_dist: [..., n_bins] logits over the bins 0..n_bins-1 (n_bins >= 2).
        target: [...] float in [0, n_bins - 1] (bin units, e.g. stride units for a box side);
            values outside are clamped into that range.
        weight: optional, broadcast against the [...] loss.
        reduction: "none" -> [...] (the shape of ``target``); "sum"; "mean" over the elements.
    """
    _check_reduction(reduction, "distribution_focal_loss")
    n_bins = pred_dist.shape[-1] if pred_dist.dim() > 0 else 0
    if n_bins < 2:
        raise ValueError(f"distribution_focal_loss: pred_dist needs >= 2 bins on its last dim, got {n_bins}")
    if pred_dist.shape[:-1] != target.shape:
        raise ValueError(
            "distribution_focal_loss: target must have the shape of pred_dist without its bin dim, "
            f"got pred_dist {tuple(pred_dist.shape)} and target {tuple(target.shape)}"
        )
    log_prob = pred_dist.float().log_softmax(dim=-1)  # [..., n_bins]
    y = target.float().clamp(0, n_bins - 1)
    # Clamping the left bin to n_bins - 2 keeps both neighbours valid on the last bin, where the
    # weights become (0, 1).
    left = y.detach().floor().long().clamp(max=n_bins - 2)
    right = left + 1
    weight_left = right.float() - y
    weight_right = 1 - weight_left
    loss = -(
        log_prob.gather(-1, left.unsqueeze(-1)).squeeze(-1) * weight_left
        + log_prob.gather(-1, right.unsqueeze(-1)).squeeze(-1) * weight_right
    )  # [...]
    return _weight_and_reduce(loss, weight, reduction)


def iou_loss(
    pred: Tensor,
    target: Tensor,
    kind: str = "ciou",
    weight: Tensor | None = None,
    reduction: str = "none",
) -> Tensor:
    """IoU-family box loss: 1 - IoU / GIoU / DIoU / CIoU between aligned pairs of xyxy boxes.

    IoU (Yu et al. 2016), GIoU (Rezatofighi et al., CVPR 2019), DIoU and CIoU (Zheng et al.,
    AAAI 2020); see ``detector.boxes.aligned_iou`` for the formulas and the degenerate-box handling.
    The loss lies in [0, 1] for IoU, [0, 2] for GIoU and DIoU, and [0, 2.5) for CIoU.

    Args:
        pred: [..., 4] xyxy boxes, in the same unit as ``target`` (pixels or stride units).
        target: [..., 4] xyxy boxes.
        kind: "iou" | "giou" | "diou" | "ciou".
        weight: optional, broadcast against the [...] loss (e.g. the target score of each box).
        reduction: "none" -> [...]; "sum"; "mean" over the elements.
    """
    _check_reduction(reduction, "iou_loss")
    if pred.shape[-1:] != (4,) or target.shape[-1:] != (4,):
        raise ValueError(
            f"iou_loss: boxes must be [..., 4] xyxy, got pred {tuple(pred.shape)} and target {tuple(target.shape)}"
        )
    loss = 1 - aligned_iou(pred.float(), target.float(), kind=kind)
    return _weight_and_reduce(loss, weight, reduction)
