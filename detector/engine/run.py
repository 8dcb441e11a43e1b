"""What an entry point does around the loop: logging set-up, the run folder, resume's config."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from detector.engine.checkpoint import read_checkpoint

log = logging.getLogger("detector")

# keys a resumed run may change on the command line; everything else comes from the checkpoint
RESUME_OVERRIDABLE = ("epochs", "device", "workers", "progress", "val_interval", "log_interval", "amp", "patience")


def setup_logging(run_dir: str | Path | None = None, name: str = "train") -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(run_dir) / f"{name}.log"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", handlers=handlers, force=True)


def resume_config(cfg: DictConfig, overrides: list[str]) -> tuple[DictConfig, Path]:
    """The checkpoint's own config (so that ``resume=...`` alone continues the same run), with the
    few keys of RESUME_OVERRIDABLE taken from the command line; the run continues in its folder."""
    path = Path(cfg.resume)
    saved = OmegaConf.create(read_checkpoint(path)["config"])
    ignored = []
    for item in overrides:
        key, _, value = item.lstrip("+~").partition("=")
        if key in RESUME_OVERRIDABLE:
            OmegaConf.update(saved, key, cfg[key], merge=False)
        elif key != "resume":
            ignored.append(item)
    if ignored:
        log.warning("resume: the run's own config is used; ignored overrides: %s (resumable: %s)",
                    ignored, ", ".join(RESUME_OVERRIDABLE))
    saved.resume = str(path)
    return saved, path.resolve().parent.parent
