"""How large each classification loss and its gradient are, next to YOLOv8's BCE.

The criterion divides every classification loss by the sum of the soft targets. BCE then has a
gradient on every negative logit; the focal family scales negatives down by p^gamma, so at equal
weight they are orders of magnitude weaker. This benchmark measures the ratio on a realistic
dense prediction ([B=8, A=2100, C=6]: a 320 px image, about 10 positives per image with TAL-like
soft targets) at three stages of training (negatives at mean logit -4, -6, -8), and prints the
weight that would match BCE's (weight 0.5) gradient norm on the logits. The weights in
configs/loss_cls/ are chosen from it (docs/ablations.md, "Loss weights").
"""
from __future__ import annotations

import torch

from detector.losses import functional as F

STAGES = {"early": -4.0, "middle": -6.0, "late": -8.0}
BCE_WEIGHT = 0.5


def make_state(negative_logit: float, seed: int = 0, batch: int = 8, anchors: int = 2100, classes: int = 6):
    gen = torch.Generator().manual_seed(seed)
    logits = negative_logit + 1.5 * torch.randn(batch, anchors, classes, generator=gen)
    targets = torch.zeros(batch, anchors, classes)
    positives = torch.randint(0, anchors, (batch, 100), generator=gen)  # ~10 GTs x top-10 anchors
    cls = torch.randint(0, classes, (batch, 100), generator=gen)
    quality = torch.rand(batch, 100, generator=gen) * 0.8 + 0.1
    targets[torch.arange(batch)[:, None], positives, cls] = quality
    # positives predicted around their target (what the model learns to do)
    p = (quality + 0.15 * torch.randn(batch, 100, generator=gen)).clamp(0.02, 0.98)
    logits[torch.arange(batch)[:, None], positives, cls] = torch.log(p / (1 - p))
    return logits, targets


def cls_losses():
    return {
        "bce": lambda x, t: torch.nn.functional.binary_cross_entropy_with_logits(x, t, reduction="none"),
        "qfl": lambda x, t: F.quality_focal_loss(x, t, beta=2.0),
        "vfl": lambda x, t: F.varifocal_loss(x, t, alpha=0.75, gamma=2.0),
        "focal": lambda x, t: F.focal_loss(x, (t > 0).float(), alpha=0.25, gamma=2.0),
    }


def measure(negative_logit: float, seed: int = 0) -> dict[str, tuple[float, float]]:
    """{loss: (normalised loss value, gradient L2 norm on the logits)}."""
    logits, targets = make_state(negative_logit, seed)
    normaliser = targets.sum().clamp(min=1)
    out = {}
    for name, fn in cls_losses().items():
        x = logits.clone().requires_grad_(True)
        loss = fn(x, targets).sum() / normaliser
        loss.backward()
        out[name] = (float(loss.detach()), float(x.grad.norm()))
    return out


def run(quick: bool = False) -> list[dict]:
    rows = []
    seeds = [0] if quick else [0, 1, 2]
    for stage, negative_logit in STAGES.items():
        per_seed = [measure(negative_logit, s) for s in seeds]
        for name in cls_losses():
            loss = sum(m[name][0] for m in per_seed) / len(seeds)
            grad = sum(m[name][1] for m in per_seed) / len(seeds)
            bce_grad = sum(m["bce"][1] for m in per_seed) / len(seeds)
            rows.append({"stage": stage, "loss": name, "value": loss, "grad_norm": grad,
                         "weight_matching_bce": BCE_WEIGHT * bce_grad / grad})
    return rows
