"""Evaluate a checkpoint with the COCO metric: python tools/eval.py ckpt=path/to/best.pt [data=...]

Prints the 12 standard numbers, the score-IoU consistency and per-class AP; writes
detections.json, metrics.json and the pictures (PR curves, score against IoU) to its run folder.
"""
import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from detector.engine.build import resolve_device
from detector.engine.checkpoint import CheckpointError, load_checkpoint
from detector.engine.run import setup_logging
from detector.eval.evaluator import evaluate
from detector.eval.report import format_metrics_table, format_per_class_table, write_eval_outputs

log = logging.getLogger("detector")


@hydra.main(config_path="../configs", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_dir = HydraConfig.get().runtime.output_dir
    setup_logging(run_dir, name="eval")
    try:
        model, train_cfg = load_checkpoint(cfg.ckpt)
    except CheckpointError as error:
        sys.exit(f"error: {error}")
    data_given = any(o.split("=")[0].split(".")[0].lstrip("+~") == "data" for o in HydraConfig.get().overrides.task)
    data_cfg = cfg.data if data_given or "data" not in train_cfg else OmegaConf.create(train_cfg["data"])
    imgsz = cfg.imgsz or train_cfg.get("imgsz", 640)
    splits = instantiate(data_cfg)
    if len(splits.names) != model.num_classes:
        sys.exit(f"error: checkpoint {cfg.ckpt} predicts {model.num_classes} classes but the data set has "
                 f"{len(splits.names)} ({', '.join(splits.names[:10])}...); pass the data set it was trained on")

    from detector.engine.build import build_val_loader

    loader = build_val_loader(OmegaConf.create({"imgsz": imgsz, "val_batch_size": cfg.batch_size,
                                                "workers": cfg.workers}), splits.val)
    device = resolve_device(cfg.device)
    model = model.fuse().to(device)
    result = evaluate(model, loader, splits.val_ann_file, list(splits.val.category_ids), device=device,
                      conf=cfg.conf, iou=cfg.iou, max_det=cfg.max_det, backend=cfg.backend)
    if not result.detections:
        log.warning("the model made no detections above conf=%s on %d images: every metric is 0", cfg.conf, len(splits.val))
    print(format_metrics_table(result.metrics))
    print(format_per_class_table(result.per_class))
    write_eval_outputs(run_dir, result, list(splits.names))
    log.info("wrote detections.json, metrics.json and pictures to %s", run_dir)


if __name__ == "__main__":
    main()
