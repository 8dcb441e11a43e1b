"""Validation during training: COCO metrics of the EMA weights, logged with their pictures."""
from __future__ import annotations

import logging

import torch

from detector.eval.evaluator import evaluate

log = logging.getLogger("detector")


def validate(cfg, model, loader, splits, device: torch.device, dtype, logger, step: int):
    """Evaluate ``model`` on the val loader; scalars and figures go to TensorBoard. Val images
    that could not be decoded are left out of the metric (evaluate names them in the log) and
    counted as ``val/images_left_out``."""
    result = evaluate(
        model, loader, splits.val_ann_file, list(splits.val.category_ids), device=device,
        conf=cfg.eval.conf, iou=cfg.eval.iou, max_det=cfg.eval.max_det, backend=cfg.eval.backend,
        amp=dtype is not None, progress=False,
    )
    scalars = {f"val/{k}": v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    if result.left_out:
        scalars["val/images_left_out"] = len(result.left_out)
    logger.scalars(scalars, step)
    try:
        from detector.eval.plots import figure_pr_curves, figure_score_vs_iou

        logger.figure("val/pr_curves", figure_pr_curves(result.precision, list(splits.names)), step)
        logger.figure("val/score_vs_iou", figure_score_vs_iou(*result.score_iou), step)
    except Exception as error:  # pictures are a convenience; never fail a run over them
        log.debug("validation figures skipped: %s", error)
    return result
