"""The model: a backbone, a PAN-FPN neck and the decoupled head (see detector.py); the architectures
(yolov8.py, yolo11.py) and their scales are listed in registry.py.

``DetectionModel`` is the ``torch.nn.Module``; ``detector.Detector`` is the Python API around it.
"""
import warnings

from detector.models.detector import DetectionModel, build_model
from detector.models.head import DecoupledHead, HeadOutput
from detector.models.postprocess import postprocess
from detector.models.registry import Architecture, Scale, architectures, get_architecture, model_names, resolve

__all__ = ["DetectionModel", "build_model", "DecoupledHead", "HeadOutput", "postprocess", "Architecture", "Scale",
           "architectures", "get_architecture", "model_names", "resolve"]


def __getattr__(name: str):
    if name == "Detector":  # the module's name until 0.2; detector.Detector is the API
        warnings.warn("detector.models.Detector is now detector.models.DetectionModel (detector.Detector is the "
                      "Python API)", DeprecationWarning, stacklevel=2)
        return DetectionModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
