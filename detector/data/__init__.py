"""Data sets (torchvision's detection convention), the shapes set, transforms and batching."""
from detector.data.base import DataSplits, DetectionDataset
from detector.data.coco import CocoDetection, coco_splits
from detector.data.yolo import YoloDetection, yolo_splits, yolo_to_coco

__all__ = ["DataSplits", "DetectionDataset", "CocoDetection", "coco_splits", "YoloDetection", "yolo_splits",
           "yolo_to_coco"]
