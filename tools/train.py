"""Train a detector: python tools/train.py [group=option ...] [key=value ...]

    python tools/train.py                                  # shapes set, model n, QFL + CIoU + DFL, TAL
    python tools/train.py loss_cls=vfl loss_box=giou dfl=off assigner=atss model=s
    python tools/train.py -m loss_cls=qfl,vfl,focal,bce     # a sweep, one run folder per arm
    python tools/train.py resume=runs/train/<run>/checkpoints/last.pt epochs=50
    torchrun --nproc_per_node=2 tools/train.py device=cpu hydra.run.dir=runs/ddp
"""
import json
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from detector.engine.checkpoint import CheckpointError
from detector.engine.run import resume_config, setup_logging
from detector.engine.trainer import NonFiniteLossError, train


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    run_dir = hydra_cfg.runtime.output_dir
    try:
        if cfg.resume:
            cfg, run_dir = resume_config(cfg, list(hydra_cfg.overrides.task))
        setup_logging(run_dir)
        summary = train(cfg, run_dir)
    except (CheckpointError, NonFiniteLossError, ValueError) as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:  # the trainer has written last.pt by now
        print(f"interrupted; continue with: python tools/train.py resume={run_dir}/checkpoints/last.pt",
              file=sys.stderr)
        sys.exit(130)
    print(json.dumps({"run_dir": str(run_dir), "best_AP": summary["best_AP"], **summary["final"]}, default=float))
    return summary["best_AP"]


if __name__ == "__main__":
    main()
