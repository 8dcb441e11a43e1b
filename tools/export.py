"""Export a checkpoint to ONNX: python tools/export.py ckpt=path/to/best.pt [imgsz=640] [dynamic=true] [nms=true]

Writes <ckpt name>.onnx to its run folder (or ``output=``), then checks the file: onnx.checker,
onnxruntime against PyTorch on one image (also a batch of 2 at another size when dynamic; exits
non-zero above ``tolerance``), and prints the file, its size, inputs/outputs and CPU latency.
See detector/export/onnx.py for the graph's layout and metadata.
"""
import logging
import sys
from pathlib import Path

import hydra
import numpy as np
import onnx
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from detector.data.base import read_image
from detector.data.synthetic import make_image
from detector.engine.checkpoint import CheckpointError, load_checkpoint
from detector.engine.run import setup_logging
from detector.export.onnx import OnnxDetector, check_onnx, describe, export_onnx, max_difference, ort_latency_ms
from detector.predict import to_input_batch

log = logging.getLogger("detector")


def parity_images(image_path: str | None, imgsz: int) -> np.ndarray:
    """One letterboxed image float32 [1, 3, imgsz, imgsz] in [0, 1]: the given file or a generated one."""
    if image_path:
        image = read_image(Path(image_path))
        if image is None:
            sys.exit(f"error: image={image_path} is not a readable image")
    else:
        image, _ = make_image(np.random.default_rng(0), imgsz // 2, imgsz)
    return to_input_batch(image, imgsz)[0]


@hydra.main(config_path="../configs", config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_dir = HydraConfig.get().runtime.output_dir
    setup_logging(run_dir, name="export")
    try:
        model, train_cfg = load_checkpoint(cfg.ckpt)
    except CheckpointError as error:
        sys.exit(f"error: {error}")
    imgsz = int(cfg.imgsz or train_cfg.get("imgsz", 640))
    output = Path(cfg.output) if cfg.output else Path(run_dir) / f"{Path(cfg.ckpt).stem}.onnx"
    try:
        path = export_onnx(model, output, imgsz=imgsz, dynamic=cfg.dynamic, nms=cfg.nms, conf=cfg.conf,
                           iou=cfg.iou, max_det=cfg.max_det, opset=cfg.opset)
    except ValueError as error:
        sys.exit(f"error: {error}")
    try:
        check_onnx(path)
    except onnx.checker.ValidationError as error:
        sys.exit(f"error: onnx.checker rejects {path}: {error}")
    log.info("onnx.checker: ok")
    session = OnnxDetector(path)
    images = parity_images(cfg.image, imgsz)
    diffs = {f"1x{imgsz}x{imgsz}": max_difference(model, session, images)}
    if cfg.dynamic:  # another batch and a non-square size through the same file
        height = max(32, imgsz // 64 * 32)
        diffs[f"2x{height}x{imgsz}"] = max_difference(model, session, np.repeat(images[:, :, :height], 2, 0))
    compared = "detections" if cfg.nms else "predictions"
    for shape, diff in diffs.items():
        log.info("max abs diff onnxruntime vs pytorch (%s, %s): %.3g", compared, shape, diff)
    log.info("file: %s (%.2f MiB)", path, path.stat().st_size / 2**20)
    log.info("inputs and outputs:\n%s", "\n".join(describe(session)))
    if cfg.latency_runs > 0:
        latency = ort_latency_ms(session, images, runs=cfg.latency_runs)
        log.info("onnxruntime CPU latency (1x3x%dx%d, median of %d): %.2f ms", imgsz, imgsz, cfg.latency_runs, latency)
    worst = max(diffs.values())
    if not worst <= cfg.tolerance:
        sys.exit(f"error: onnxruntime differs from PyTorch by {worst:.3g} > tolerance {cfg.tolerance}")


if __name__ == "__main__":
    main()
