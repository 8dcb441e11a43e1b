"""Export to ONNX (decoding and optional NMS in the graph) and running the exported file."""
from detector.export.onnx import (
    NMS_OUTPUTS,
    RAW_OUTPUTS,
    DecodedDetector,
    DetectorWithNMS,
    OnnxDetector,
    OnnxLayoutError,
    check_onnx,
    describe,
    detection_difference,
    export_onnx,
    max_difference,
    nms_outputs_to_detections,
    ort_latency_ms,
    read_metadata,
)

__all__ = [
    "NMS_OUTPUTS", "RAW_OUTPUTS", "DecodedDetector", "DetectorWithNMS", "OnnxDetector", "OnnxLayoutError",
    "check_onnx", "describe", "detection_difference", "export_onnx", "max_difference",
    "nms_outputs_to_detections", "ort_latency_ms", "read_metadata",
]
