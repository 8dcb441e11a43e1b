"""detector: anchor-free YOLOv8/YOLO11/GFL-style object detection, trained from the command line.

Public entry points: ``Detector`` (the Python API: train/predict/evaluate/export over the same
Hydra configs as tools/*.py; its ``.model`` is the torch module), ``build_model`` and
``load_checkpoint`` (which return that module, ``detector.models.DetectionModel``); see README.md.
"""
from __future__ import annotations

from detector.api import Detector

__version__ = "0.1.0"


def build_model(scale: str = "n", num_classes: int = 80, reg_max: int = 16, cls_width: int | None = None,
                arch: str | None = None):
    """A detector by model name ("yolov8n" ... "yolov8x", "yolo11n" ... "yolo11x") or scale (n/s/m/l/x:
    YOLOv8, or of ``arch``); see ``detector.models`` and ``detector.models.registry``."""
    from detector.models.detector import build_model as _build

    return _build(scale=scale, num_classes=num_classes, reg_max=reg_max, cls_width=cls_width, arch=arch)


def load_checkpoint(path, map_location="cpu"):
    """(model: ``detector.models.DetectionModel``, config dict) from a checkpoint written by the trainer,
    or from an ultralytics YOLOv8 or YOLO11 detection .pt (read without running code from it)."""
    from detector.engine.checkpoint import load_checkpoint as _load

    return _load(path, map_location=map_location)


__all__ = ["Detector", "build_model", "load_checkpoint", "__version__"]
