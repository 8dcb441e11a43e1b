"""Predict on images: python tools/predict.py ckpt=best.pt|model.onnx source=<image|folder|glob> [conf=0.25]

Letterboxes each image, runs the checkpoint (PyTorch) or an exported ONNX file (onnxruntime, raw
or NMS layout), maps the boxes back to original pixels and writes, to its run folder, one
picture per image with labelled boxes and detections.json (fields: detector/predict.py).
"""
import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from detector.engine.build import resolve_device
from detector.engine.checkpoint import CheckpointError
from detector.engine.run import setup_logging
from detector.export.onnx import OnnxLayoutError
from detector.predict import SourceError, list_images, load_predictor, predict_files, resolve_imgsz

log = logging.getLogger("detector")


@hydra.main(config_path="../configs", config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_dir = HydraConfig.get().runtime.output_dir
    setup_logging(run_dir, name="predict")
    try:
        files = list_images(cfg.source)
        predictor = load_predictor(cfg.ckpt, device=resolve_device(cfg.device))
        imgsz = resolve_imgsz(predictor, cfg.imgsz)
        records = predict_files(predictor, files, run_dir, imgsz=imgsz, conf=cfg.conf, iou=cfg.iou,
                                max_det=cfg.max_det, save_images=cfg.save_images)
    except (SourceError, CheckpointError, OnnxLayoutError, FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")
    count = sum(len(r["detections"]) for r in records)
    log.info("%d detections in %d images (imgsz=%d, conf=%s); wrote %sdetections.json to %s", count, len(records),
             imgsz, cfg.conf, "pictures and " if cfg.save_images else "", run_dir)


if __name__ == "__main__":
    main()
