"""Thin loss modules: one hyper-parameter set and one ``loss_weight`` per config option.

Each module wraps a pure function of ``detector.losses.functional`` and returns the
*elementwise* loss; the criterion owns normalisation. ``loss_weight`` is the factor the
criterion applies when it sums the losses, carried by the option itself so that swapping
``loss_cls=focal`` for ``loss_cls=qfl`` is a fair comparison out of the box (docs/ablations.md, "Loss
weights").
"""
from __future__ import annotations

from torch import Tensor, nn

from detector.losses import functional as F


class QualityFocalLoss(nn.Module):
    """GFL quality focal loss on soft targets (the joint class-IoU score)."""

    def __init__(self, *, beta: float = 2.0, loss_weight: float = 1.0):
        super().__init__()
        self.beta, self.loss_weight = beta, loss_weight

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.quality_focal_loss(logits, targets, beta=self.beta)


class VarifocalLoss(nn.Module):
    """VarifocalNet loss: positives weighted by their IoU-aware target, negatives by alpha p^gamma.

    ``detach_weight=False`` is the reference gradient (VarifocalNet, mmdetection, ultralytics);
    ``True`` detaches the negatives' weight (RT-DETR's form). The values are the same.
    """

    def __init__(self, *, alpha: float = 0.75, gamma: float = 2.0, detach_weight: bool = False,
                 loss_weight: float = 1.0):
        super().__init__()
        self.alpha, self.gamma, self.loss_weight = alpha, gamma, loss_weight
        self.detach_weight = detach_weight

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.varifocal_loss(logits, targets, alpha=self.alpha, gamma=self.gamma,
                                detach_weight=self.detach_weight)


class FocalLoss(nn.Module):
    """RetinaNet focal loss; with ``binary_targets`` the soft targets become 0/1 (the classic form)."""

    def __init__(self, *, alpha: float = 0.25, gamma: float = 2.0, binary_targets: bool = True,
                 loss_weight: float = 1.0):
        super().__init__()
        self.alpha, self.gamma, self.loss_weight = alpha, gamma, loss_weight
        self.binary_targets = binary_targets

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        if self.binary_targets:
            targets = (targets > 0).to(logits.dtype)
        return F.focal_loss(logits, targets, alpha=self.alpha, gamma=self.gamma)


class BCELoss(nn.Module):
    """Binary cross-entropy to the soft targets (YOLOv8's classification loss)."""

    def __init__(self, *, loss_weight: float = 1.0):
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")


class IoULoss(nn.Module):
    """1 - IoU-family overlap between aligned xyxy boxes; ``kind`` in iou/giou/diou/ciou."""

    def __init__(self, *, kind: str = "ciou", loss_weight: float = 1.0):
        super().__init__()
        if kind not in ("iou", "giou", "diou", "ciou"):
            raise ValueError(f"IoULoss: kind must be one of iou/giou/diou/ciou, got {kind!r}")
        self.kind, self.loss_weight = kind, loss_weight

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return F.iou_loss(pred.float(), target.float(), kind=self.kind)


class DistributionFocalLoss(nn.Module):
    """GFL distribution focal loss on the box branch's bins."""

    def __init__(self, *, loss_weight: float = 1.0):
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, pred_dist: Tensor, target: Tensor) -> Tensor:
        return F.distribution_focal_loss(pred_dist.float(), target)
