"""Interop with other frameworks' files: import ultralytics YOLOv8 detection checkpoints safely."""
from detector.interop.ultralytics import convert_state, is_ultralytics_checkpoint, load_ultralytics, read_ultralytics
from detector.interop.unpickler import Record, restricted_load

__all__ = ["load_ultralytics", "convert_state", "read_ultralytics", "is_ultralytics_checkpoint", "restricted_load",
           "Record"]
