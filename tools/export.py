"""Export a checkpoint to ONNX: python tools/export.py ckpt=path/to/best.pt [imgsz=640] [dynamic=true] [nms=true]

Writes <ckpt name>.onnx to its run folder (or ``output=``), then checks the file: onnx.checker,
onnxruntime against PyTorch on one image (also a batch of 2 at another size when dynamic; exits
non-zero above ``tolerance``), and prints the file, its size, inputs/outputs and CPU latency.
See detector/export/onnx.py for the graph's layout and metadata, detector/engine/exporting.py
for the check (shared with the Python API, detector.Detector).
"""
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from detector.engine.checkpoint import CheckpointError, load_checkpoint
from detector.engine.exporting import ExportError, export_from_config
from detector.engine.run import setup_logging


@hydra.main(config_path="../configs", config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_dir = HydraConfig.get().runtime.output_dir
    setup_logging(run_dir, name="export")
    try:
        model, train_cfg = load_checkpoint(cfg.ckpt)
    except CheckpointError as error:
        sys.exit(f"error: {error}")
    try:
        export_from_config(cfg, model, train_cfg, run_dir, stem=Path(cfg.ckpt).stem)
    except ExportError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
