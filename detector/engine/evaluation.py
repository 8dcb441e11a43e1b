"""Evaluate a model with the COCO metric from configs/eval.yaml's keys: the one implementation
behind tools/eval.py and ``detector.Detector.evaluate``.

Without a ``data`` override the checkpoint's own data set (and imgsz) is used, so that
``ckpt=best.pt`` alone reproduces the run's last validation.
"""
from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("detector")


class EvalDataError(ValueError):
    """A data set that does not fit the model (another class count)."""


def overrides_name_data(overrides) -> bool:
    """Whether any of the Hydra ``overrides`` (``data=yolo``, ``data.root=...``, ``+data.x=...``) sets the data set."""
    return any(str(o).split("=")[0].split(".")[0].lstrip("+~") == "data" for o in overrides)


def chosen_data(data_cfg: DictConfig, train_cfg: dict, data_given: bool) -> DictConfig:
    """The data config to use: ``data_cfg`` when the user gave one, else the checkpoint's own
    (``train_cfg["data"]``; a converted file records none, and ``data_cfg`` is used)."""
    saved_data = train_cfg.get("data")
    own_data = isinstance(saved_data, dict) and "_target_" in saved_data  # a converted file records no data set
    return OmegaConf.create(saved_data) if own_data and not data_given else data_cfg


def evaluate_from_config(cfg: DictConfig, model, train_cfg: dict, run_dir: str | os.PathLike, *,
                         data_given: bool, source: str = "the model"):
    """Score ``model`` (a fused copy; the argument is left untouched; or an exported model, a
    detector.predict.OnnxPredictor, as it is) on the validation split, print
    the metric and per-class tables and write detections.json, metrics.json and the pictures to
    ``run_dir``; with ``diagnostics`` (default true) also diagnostics.json, per_class.csv, the
    confusion matrices (``confusion_conf``, ``confusion_iou``: 0.25, 0.45), the P, R, F1 and PR
    curves, the reliability diagram and ``val_batches`` (3) pictures of val images
    (detector/eval/diagnostics.py). ``train_cfg``: the checkpoint's config ({} for none). Returns
    the EvalResult. Raises EvalDataError when the data set's class count is not the model's."""
    from detector.engine.build import build_val_loader, resolve_device
    from detector.eval.diagnostics import CONFUSION_CONF, CONFUSION_IOU, VAL_BATCHES, write_diagnostics
    from detector.eval.evaluator import evaluate
    from detector.eval.report import (format_class_table, format_metrics_table, format_per_class_table,
                                      write_eval_outputs)

    data_cfg = chosen_data(cfg.data, train_cfg, data_given)
    imgsz = cfg.imgsz or train_cfg.get("imgsz", 640)
    splits = instantiate(data_cfg)
    if len(splits.names) != model.num_classes:
        raise EvalDataError(f"{source} predicts {model.num_classes} classes but the data set has "
                            f"{len(splits.names)} ({', '.join(splits.names[:10])}...); "
                            "pass the data set it was trained on")
    loader = build_val_loader(OmegaConf.create({"imgsz": imgsz, "val_batch_size": cfg.batch_size,
                                                "workers": cfg.workers}), splits.val,
                              rect=bool(cfg.get("rect", False)))
    device = resolve_device(cfg.device)
    # an exported model (detector.predict.OnnxPredictor) runs as it is, on its own runtime
    fused = copy.deepcopy(model).for_inference(device) if isinstance(model, torch.nn.Module) else model
    result = evaluate(fused, loader, splits.val_ann_file, list(splits.val.category_ids), device=device,
                      conf=cfg.conf, iou=cfg.iou, max_det=cfg.max_det, backend=cfg.backend)
    # a val set without labelled boxes, and val images left out, are said by evaluate (once)
    if not result.detections and not result.undefined:
        log.warning("the model made no detections above conf=%s on %d images: every metric is 0", cfg.conf,
                    len(splits.val))
    print(format_metrics_table(result.metrics))
    write_eval_outputs(run_dir, result, list(splits.names))
    if cfg.get("diagnostics", True):
        diagnostics = write_diagnostics(run_dir, result.detections, result.gt, list(splits.names),
                                        precision=result.precision, dataset=splits.val,
                                        conf=cfg.get("confusion_conf", CONFUSION_CONF),
                                        iou=cfg.get("confusion_iou", CONFUSION_IOU),
                                        val_batches=cfg.get("val_batches", VAL_BATCHES))
        print(format_class_table(diagnostics))
        log.info("wrote detections.json, metrics.json, diagnostics.json, per_class.csv and pictures to %s",
                 Path(run_dir))
    else:
        print(format_per_class_table(result.per_class))
        log.info("wrote detections.json, metrics.json and pictures to %s", Path(run_dir))
    return result
