"""The four tasks as Hydra job functions: ``train``, ``evaluate``, ``predict`` and ``export`` take
the task's config (configs/<task>.yaml, composed) and run inside a Hydra job (``HydraConfig``
set, the run folder made). The ``detector`` command (``@hydra.main``), ``tools/*.py`` and the
Python API (``detector.engine.compose.run_task``) all call these, so each task has one
implementation.
"""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from detector.engine.compose import log_to, run_dir_of_job

log = logging.getLogger("detector")


def train(cfg: DictConfig) -> dict:
    """Train (or resume: the run continues in its own folder); returns the trainer's summary."""
    from hydra.core.hydra_config import HydraConfig

    from detector.engine.run import resume_config
    from detector.engine.trainer import train as run_training

    run_dir = run_dir_of_job()
    if cfg.resume:
        cfg, run_dir = resume_config(cfg, list(HydraConfig.get().overrides.task))
    with log_to(run_dir, "train"):
        summary = run_training(cfg, run_dir)
        for line in next_steps(summary):
            log.info(line)
    return summary


def next_steps(summary: dict) -> list[str]:
    """What a run says at its end: where best.pt is, the commands that use it, and why AP is 0
    when it is. Lines of text."""
    run_dir = Path(summary["run_dir"])
    best = run_dir / "checkpoints" / "best.pt"
    if not best.is_file():
        best = run_dir / "checkpoints" / "last.pt"
    lines = [f"best checkpoint: {best} (val AP {summary['best_AP']:.4f})", "next:",
             f"  detector val ckpt={best}", f"  detector predict ckpt={best} source=path/to/images",
             f"  detector export ckpt={best} nms=true"]
    if summary["best_AP"] <= 0:
        steps = summary.get("optimizer_steps")
        lines.append(f"val AP stayed 0 after {summary['epochs']} epochs ({steps} optimiser steps): a detector needs "
                     "hundreds to thousands of steps; train longer (epochs=...), use a smaller batch_size on a small "
                     "set, start from weights (pretrained=yolov8n.pt), and check the labels with detector show-data")
    return lines


def evaluate(cfg: DictConfig, model=None, train_cfg: dict | None = None, source: str | None = None):
    """COCO evaluation of ``cfg.ckpt`` (a checkpoint, or an exported ONNX/OpenVINO model run on
    its runtime) or of ``model`` with its ``train_cfg``; returns the EvalResult."""
    from hydra.core.hydra_config import HydraConfig

    from detector.engine.checkpoint import load_checkpoint
    from detector.engine.evaluation import evaluate_from_config, overrides_name_data
    from detector.predict import is_exported, load_predictor, resolve_imgsz

    run_dir = run_dir_of_job()
    with log_to(run_dir, "eval"):
        if model is None and is_exported(cfg.ckpt):
            model = load_predictor(cfg.ckpt)  # records names and imgsz, not the data set: data= applies
            train_cfg, source = {"imgsz": resolve_imgsz(model, cfg.imgsz)}, f"exported model {cfg.ckpt}"
        elif model is None:
            model, train_cfg = load_checkpoint(cfg.ckpt)
            source = f"checkpoint {cfg.ckpt}"
        return evaluate_from_config(cfg, model, train_cfg or {}, run_dir, source=source or "the model",
                                    data_given=overrides_name_data(HydraConfig.get().overrides.task))


def export(cfg: DictConfig, model=None, train_cfg: dict | None = None, stem: str | None = None):
    """Export ``cfg.ckpt`` (or ``model``) to ONNX or OpenVINO (``format``; INT8 with ``int8``) and
    check it; returns the ExportReport."""
    from hydra.core.hydra_config import HydraConfig

    from detector.engine.checkpoint import load_checkpoint
    from detector.engine.evaluation import overrides_name_data
    from detector.engine.exporting import export_from_config

    run_dir = run_dir_of_job()
    with log_to(run_dir, "export"):
        if model is None:
            model, train_cfg = load_checkpoint(cfg.ckpt)
            stem = Path(cfg.ckpt).stem
        return export_from_config(cfg, model, train_cfg or {}, run_dir, stem=stem or "model",
                                  data_given=overrides_name_data(HydraConfig.get().overrides.task))


def predict(cfg: DictConfig, predictor=None, items=None, save: bool = True) -> tuple[list[dict], list[dict]]:
    """Predict ``cfg.source`` with ``cfg.ckpt`` (or ``items`` with ``predictor``); pictures and
    detections.json go to the run folder when ``save``, and each video, camera or stream of the
    source its .jsonl and annotated video (detector.sources). Returns (detections, records) of the
    images: see detector.predict.predict_items."""
    from detector.engine.build import resolve_device
    from detector.predict import load_predictor, predict_items, resolve_imgsz
    from detector.sources import collect_sources, predict_videos

    run_dir = run_dir_of_job()
    with log_to(run_dir, "predict"):
        videos = []
        if predictor is None:
            images, videos = collect_sources(cfg.source)
            items = [(str(path), path) for path in images]
            predictor = load_predictor(cfg.ckpt, device=resolve_device(cfg.device))
        imgsz = resolve_imgsz(predictor, cfg.imgsz)
        if videos:
            predict_videos(predictor, videos, run_dir, imgsz, cfg.conf, cfg.iou, cfg.max_det,
                           save_video=cfg.get("save_images", True), timeout=cfg.stream_timeout,
                           max_frames=cfg.max_frames)
            if not items:
                return [], []
        detections, records = predict_items(predictor, items, run_dir if save else None, imgsz=imgsz, conf=cfg.conf,
                                            iou=cfg.iou, max_det=cfg.max_det,
                                            save_images=save and cfg.get("save_images", True))
        if save:
            log.info("%d detections in %d images (imgsz=%d, conf=%s); wrote %sdetections.json to %s",
                     sum(len(r["detections"]) for r in records), len(records), imgsz, cfg.conf,
                     "pictures and " if cfg.get("save_images", True) else "", run_dir)
        return detections, records
