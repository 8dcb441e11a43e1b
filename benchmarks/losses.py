"""Benchmark of the loss functions: forward + backward time against a plain formulation.

For each loss of ``detector.losses.functional`` the same formula is also written the
straightforward way ("plain": sigmoid then explicit logs, one ``F.cross_entropy`` per DFL bin,
torchvision's IoU-family losses), and both are timed on YOLOv8-sized inputs at 640 px:
B=16 images, A=8400 anchors, C=80 classes, reg_max=16 bins.

Columns: ``ours_ms`` and ``plain_ms`` are medians over the repeats of one forward + backward
(reduction "sum"), ``ratio`` = ours_ms / plain_ms (below 1: ours is faster), ``max_diff`` is the
largest elementwise difference between the two forward values on these (finite-for-both) inputs.
Runs on CUDA when available, else on CPU with the current thread count.

    python tools/bench.py losses [--quick]
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torchvision import ops

from detector.losses.functional import (
    distribution_focal_loss,
    focal_loss,
    iou_loss,
    quality_focal_loss,
    varifocal_loss,
)

# Index convention: B images, A anchors, C classes, N rows (anchor sides or boxes).


def plain_focal(logits, targets, alpha=0.25, gamma=2.0):
    p = torch.sigmoid(logits)
    ce = -(targets * torch.log(p) + (1 - targets) * torch.log(1 - p))
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * (1 - p_t) ** gamma * ce


def plain_quality_focal(logits, targets, beta=2.0):
    p = torch.sigmoid(logits)
    ce = -(targets * torch.log(p) + (1 - targets) * torch.log(1 - p))
    return (targets - p).abs() ** beta * ce


def plain_varifocal(logits, targets, alpha=0.75, gamma=2.0):
    p = torch.sigmoid(logits)
    ce = -(targets * torch.log(p) + (1 - targets) * torch.log(1 - p))
    positive = (targets > 0).float()
    weight = targets * positive + alpha * p ** gamma * (1 - positive)  # the reference gradient (not detached)
    return weight * ce


def plain_distribution_focal(pred_dist, target):
    left = target.long()
    right = left + 1
    ce_left = F.cross_entropy(pred_dist, left, reduction="none")
    ce_right = F.cross_entropy(pred_dist, right, reduction="none")
    return ce_left * (right - target) + ce_right * (target - left)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_forward_backward(fn: Callable, pred: torch.Tensor, other: torch.Tensor, repeats: int) -> float:
    """Median milliseconds of fn(pred, other).sum().backward(), after one warm-up run."""
    times = []
    for i in range(repeats + 1):
        x = pred.detach().requires_grad_(True)
        _sync(pred.device)
        start = time.perf_counter()
        fn(x, other).sum().backward()
        _sync(pred.device)
        if i > 0:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _row(name, shape, ours, plain, plain_name, pred, other, repeats) -> dict:
    with torch.no_grad():
        max_diff = (ours(pred, other) - plain(pred, other)).abs().max().item()
    ours_ms = _time_forward_backward(ours, pred, other, repeats)
    plain_ms = _time_forward_backward(plain, pred, other, repeats)
    return {"loss": name, "shape": "x".join(map(str, shape)), "plain": plain_name,
            "ours_ms": ours_ms, "plain_ms": plain_ms, "ratio": ours_ms / plain_ms, "max_diff": max_diff}


def _cls_inputs(batch, anchors, classes, positives, generator, device):
    """Logits of a detector in training (mostly confident negatives) and sparse soft targets."""
    logits = torch.randn(batch, anchors, classes, generator=generator) * 2 - 4  # [B, A, C]
    targets = torch.zeros(batch, anchors, classes)
    for b in range(batch):
        anchor_idx = torch.randperm(anchors, generator=generator)[:positives]
        class_idx = torch.randint(classes, (positives,), generator=generator)
        targets[b, anchor_idx, class_idx] = torch.rand(positives, generator=generator) * 0.9 + 0.05
    return logits.to(device), targets.to(device)


def _boxes(n, generator, device):
    """Targets in a 640 px frame and predictions jittered around them (mostly overlapping)."""
    xy = torch.rand(n, 2, generator=generator) * 600
    target = torch.cat((xy, xy + 4 + torch.rand(n, 2, generator=generator) * 200), dim=-1)  # [N, 4]
    pred = target + torch.randn(n, 4, generator=generator) * 10
    pred[:, 2:] = torch.maximum(pred[:, 2:], pred[:, :2] + 1)
    return pred.to(device), target.to(device)


def run(quick: bool = False) -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator().manual_seed(0)
    if quick:
        batch, anchors, classes, positives, repeats = 2, 2100, 80, 100, 3
    else:
        batch, anchors, classes, positives, repeats = 16, 8400, 80, 300, 5
    reg_max = 16
    rows = []

    logits, targets = _cls_inputs(batch, anchors, classes, positives, g, device)
    shape = (batch, anchors, classes)
    for name, ours, plain in [
        ("focal_loss", focal_loss, plain_focal),
        ("quality_focal_loss", quality_focal_loss, plain_quality_focal),
        ("varifocal_loss", varifocal_loss, plain_varifocal),
    ]:
        rows.append(_row(name, shape, ours, plain, "sigmoid + log", logits, targets, repeats))
    del logits, targets

    # Every anchor side (an upper bound) and only the positives' sides (what training computes).
    for n in (batch * anchors * 4, batch * 200 * 4):
        pred_dist = (torch.randn(n, reg_max, generator=g) * 3).to(device)  # [N, reg_max]
        target = (torch.rand(n, generator=g) * (reg_max - 1.01)).to(device)  # [N] bin units
        rows.append(_row("distribution_focal_loss", (n, reg_max), distribution_focal_loss,
                         plain_distribution_focal, "2x F.cross_entropy", pred_dist, target, repeats))

    pred, target = _boxes(batch * anchors, g, device)
    for kind, reference in [("ciou", ops.complete_box_iou_loss), ("giou", ops.generalized_box_iou_loss)]:
        rows.append(_row(f"iou_loss[{kind}]", (batch * anchors, 4),
                         lambda p, t, kind=kind: iou_loss(p, t, kind=kind),
                         reference, f"torchvision {reference.__name__}", pred, target, repeats))
    return rows
