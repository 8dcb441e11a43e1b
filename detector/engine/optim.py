"""Optimiser parameter groups, learning-rate schedules and the YOLOv8 warmup.

The schedule is a pure function of (epoch, iteration): nothing to save or restore on resume,
and a resumed run sees exactly the learning rates of an uninterrupted one.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from torch import nn
from torch.optim import Optimizer


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Three groups, as YOLOv8: [0] conv/linear weights (decayed), [1] normalisation weights
    (no decay), [2] biases (no decay; warmup starts their lr high)."""
    decay, norm, bias = [], [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if name == "bias":
                bias.append(param)
            elif isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
                norm.append(param)
            else:
                decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "weights"},
        {"params": norm, "weight_decay": 0.0, "name": "norm"},
        {"params": bias, "weight_decay": 0.0, "name": "bias"},
    ]


def auto_lr(num_classes: int) -> float:
    """YOLOv8's ``optimizer=auto`` lr for AdamW: 0.002 x 5 / (4 + classes), to 6 decimals
    (0.002 at 1 class, 0.001 at 6, 0.000119 at 80)."""
    return round(0.002 * 5 / (4 + num_classes), 6)


YOLOV8_NBS = 64  # YOLOv8's nominal batch, whose lr x optimiser steps a run from weights keeps


def resolve_nbs(nbs: int | str, batch_size: int, pretrained: bool, finetune_nbs: int | str = "auto") -> int:
    """The nominal batch of a run: ``nbs`` itself, or for ``auto`` ``batch_size`` from scratch (a step per
    batch: measured ahead of YOLOv8's 64 at small budgets) and ``finetune_nbs`` from weights (its
    ``auto``: ``batch_size`` too, with the lr scaled by ``finetune_lr_scale``)."""
    if nbs != "auto":
        return int(nbs)
    if pretrained and finetune_nbs != "auto":
        return int(finetune_nbs)
    return int(batch_size)


WARMUP_EPOCHS = 3.0  # YOLOv8's warmup_epochs: the warm-up of a run from scratch
# From weights, the most a longer warm-up raises the lr above nbs / 64 of it: twice (30 epochs at batch 16: half the
# lr) ended level with or ahead of ultralytics; four times (60 epochs: the full lr, a step per batch) broke a YOLO11n
# start in its 14th epoch (AP 0.33 -> 0.01), as the full lr at a step per batch did at 3 epochs (docs/recipe.md)
FINETUNE_MAX_LR_GAIN = 2.0


def resolve_warmup_epochs(warmup_epochs: float | str, epochs: int, pretrained: bool,
                          finetune_warmup_epochs: float | str = "auto") -> float:
    """The warm-up length of a run in epochs: ``warmup_epochs`` itself, or for ``auto`` WARMUP_EPOCHS from
    scratch and ``finetune_warmup_epochs`` from weights (its ``auto``: a fifth of the run, at least
    WARMUP_EPOCHS; with the lr scale of ``resolve_lr`` the lr climbs at the same rate for longer)."""
    if warmup_epochs != "auto":
        return float(warmup_epochs)
    if not pretrained:
        return WARMUP_EPOCHS
    if finetune_warmup_epochs != "auto":
        return float(finetune_warmup_epochs)
    return max(WARMUP_EPOCHS, epochs / 5)


def resolve_lr(lr: float | str, num_classes: int, pretrained: bool, finetune_lr_scale: float | str = "auto",
               nbs: int = YOLOV8_NBS, warmup_epochs: float = WARMUP_EPOCHS) -> float:
    """The initial lr of a run: ``lr`` itself, or for ``auto`` ``auto_lr(num_classes)``, times
    ``finetune_lr_scale`` when starting from weights (rounded to 6 decimals, as ``auto_lr``). Its ``auto``
    is min(1, nbs / 64 x min(2, max(1, warmup_epochs / 3))). nbs / 64: a step every ``nbs`` images at that
    fraction of the lr moves the weights as far as YOLOv8's steps every 64 images do, in smaller steps (a
    step per batch at the full lr collapsed a pretrained model; a quarter of it at batch 16 did not).
    warmup_epochs / 3: a longer warm-up climbs at that same rate to a higher peak, so that a long run
    is not held at the short run's lr; at most twice (FINETUNE_MAX_LR_GAIN), beyond which it climbs
    more slowly to that peak (docs/recipe.md)."""
    if lr != "auto":
        return float(lr)
    if not pretrained:
        return auto_lr(num_classes)
    if finetune_lr_scale == "auto":
        gain = min(FINETUNE_MAX_LR_GAIN, max(1.0, warmup_epochs / WARMUP_EPOCHS))
        scale = min(1.0, nbs / YOLOV8_NBS * gain)
    else:
        scale = float(finetune_lr_scale)
    return round(auto_lr(num_classes) * scale, 6)


WARMUP_MOMENTUM = 0.8  # YOLOv8's warmup_momentum: where momentum (AdamW: beta1) starts a run from scratch


def resolve_warmup_momentum(momentum: float | str | None, pretrained: bool,
                            finetune_momentum: float | None) -> float | None:
    """Where momentum starts its warmup: ``momentum`` itself, or for ``auto`` WARMUP_MOMENTUM from scratch
    and ``finetune_momentum`` from weights. None: no momentum warmup, the optimiser's own value throughout
    (what ultralytics' AdamW gets, whose warmup only touches SGD's ``momentum``: a beta1 of 0.8 moved a
    pretrained model 15% further in 3 epochs, docs/recipe.md)."""
    if momentum != "auto":
        return None if momentum is None else float(momentum)
    if pretrained:
        return None if finetune_momentum is None else float(finetune_momentum)
    return WARMUP_MOMENTUM


def auto_warmup_bias_lr(optimizer: Optimizer) -> float:
    """YOLOv8's warmup bias lr: 0.1, but 0 under Adam-type optimisers (what its ``optimizer=auto``
    sets when it picks AdamW: a bias lr of 0.1 would move every bias by about 0.1 a step)."""
    return 0.0 if any("betas" in group for group in optimizer.param_groups) else 0.1


def warmup_iterations(warmup_epochs: float, min_iters: int, epochs: int, batches: int) -> int:
    """YOLOv8 (8.4): ``warmup_epochs`` capped at ``epochs - 1``, in iterations; at least ``min_iters``."""
    return max(round(min(warmup_epochs, max(epochs - 1, 0)) * batches), min_iters)


def build_optimizer(factory: Callable[..., Optimizer], model: nn.Module, weight_decay: float) -> Optimizer:
    """``factory`` is the partially applied optimiser class from the ``optim`` config option."""
    optimizer = factory(param_groups(model, weight_decay))
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
        group["initial_momentum"] = _momentum(group)
    return optimizer


class LinearSchedule:
    """lr factor falling linearly from 1 at progress 0 to ``lrf`` at progress 1."""

    def __init__(self, *, lrf: float = 0.01):
        self.lrf = lrf

    def __call__(self, progress: float) -> float:
        return (1 - progress) * (1.0 - self.lrf) + self.lrf


class CosineSchedule:
    """lr factor following half a cosine from 1 to ``lrf``."""

    def __init__(self, *, lrf: float = 0.01):
        self.lrf = lrf

    def __call__(self, progress: float) -> float:
        return ((1 - math.cos(progress * math.pi)) / 2) * (self.lrf - 1) + 1


def _momentum(group: dict) -> float:
    return group["betas"][0] if "betas" in group else group.get("momentum", 0.0)


def _set_momentum(group: dict, value: float) -> None:
    if "betas" in group:
        group["betas"] = (value, group["betas"][1])
    elif "momentum" in group:
        group["momentum"] = value


def apply_schedule(
    optimizer: Optimizer,
    schedule: Callable[[float], float],
    *,
    epoch: int,
    iteration: int,
    epochs: int,
    warmup_iters: int,
    warmup_bias_lr: float,
    warmup_momentum: float | None,
) -> None:
    """Set every group's lr (and momentum during warmup) for global ``iteration`` in ``epoch``.

    After warmup: lr = initial_lr * schedule(epoch / epochs), stepped per epoch as YOLOv8.
    During warmup: lr rises linearly from 0 (the bias group falls from ``warmup_bias_lr``) to
    that value, and momentum rises from ``warmup_momentum`` to the optimiser's own (None: it stays there).
    """
    factor = schedule(epoch / max(epochs, 1))
    for index, group in enumerate(optimizer.param_groups):
        target = group["initial_lr"] * factor
        if iteration < warmup_iters:
            start = warmup_bias_lr if group.get("name") == "bias" or index == 2 else 0.0
            group["lr"] = float(np.interp(iteration, [0, warmup_iters], [start, target]))
            momentum = group["initial_momentum"] if warmup_momentum is None else warmup_momentum
            _set_momentum(group, float(np.interp(iteration, [0, warmup_iters], [momentum, group["initial_momentum"]])))
        else:
            group["lr"] = target
            _set_momentum(group, group["initial_momentum"])
