"""Evaluate a checkpoint with the COCO metric: python tools/eval.py ckpt=path/to/best.pt [data=...]

Prints the 12 standard numbers, the score-IoU consistency and per-class AP; writes
detections.json, metrics.json and the pictures (PR curves, score against IoU) to its run folder.
The work is detector/engine/evaluation.py (shared with the Python API, detector.Detector).
"""
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from detector.engine.checkpoint import CheckpointError, load_checkpoint
from detector.engine.evaluation import EvalDataError, evaluate_from_config, overrides_name_data
from detector.engine.run import setup_logging


@hydra.main(config_path="../configs", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_dir = HydraConfig.get().runtime.output_dir
    setup_logging(run_dir, name="eval")
    try:
        model, train_cfg = load_checkpoint(cfg.ckpt)
    except CheckpointError as error:
        sys.exit(f"error: {error}")
    try:
        evaluate_from_config(cfg, model, train_cfg, run_dir, source=f"checkpoint {cfg.ckpt}",
                             data_given=overrides_name_data(HydraConfig.get().overrides.task))
    except EvalDataError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
