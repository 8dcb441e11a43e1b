"""detector: anchor-free YOLOv8/GFL-style object detection, trained from the command line.

Public entry points: ``Detector`` (the Python API: train/predict/evaluate/export over the same
Hydra configs as tools/*.py; its ``.model`` is the torch module), ``build_model`` and
``load_checkpoint`` (which return that module, ``detector.models.DetectionModel``); see README.md.
"""
from __future__ import annotations

from detector.api import Detector

__version__ = "0.1.0"


def build_model(scale: str = "n", num_classes: int = 80, reg_max: int = 16, cls_width: int | None = None):
    """A YOLOv8-layout detector of the given scale (n/s/m/l/x); see ``detector.models``."""
    from detector.models.detector import build_model as _build

    return _build(scale=scale, num_classes=num_classes, reg_max=reg_max, cls_width=cls_width)


def load_checkpoint(path, map_location="cpu"):
    """(model: ``detector.models.DetectionModel``, config dict) from a checkpoint written by the trainer,
    or from an ultralytics YOLOv8 detection .pt (read without running code from it)."""
    from detector.engine.checkpoint import load_checkpoint as _load

    return _load(path, map_location=map_location)


__all__ = ["Detector", "build_model", "load_checkpoint", "__version__"]
