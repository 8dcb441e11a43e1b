"""Model size and CPU latency: params, GFLOPs at 640, and fused eval latency of n at 640, batch 1.

The reference YOLOv8n architecture (ultralytics, built from its yaml without weights) is timed
the same way when the package is importable; it is a benchmark-only comparison.
"""
from __future__ import annotations

import torch

from detector import build_model
from detector.models.summary import model_summary
from detector.timing import median_ms


def latency_ms(model, imgsz: int, runs: int) -> float:
    x = torch.rand(1, 3, imgsz, imgsz)
    with torch.inference_mode():
        return median_ms(lambda: model(x), runs=runs, warmup=2)


def reference_yolov8n():
    try:
        from ultralytics import YOLO
    except ImportError:
        return None
    model = YOLO("yolov8n.yaml").model.fuse().eval()
    return model


def run(quick: bool = False) -> list[dict]:
    runs = 3 if quick else 15
    rows = []
    for scale in ("n",) if quick else ("n", "s", "m"):
        summary = model_summary(build_model(scale, num_classes=80), imgsz=640)
        rows.append({"model": f"ours {scale}", "params": summary["params"], "gflops_640": summary["gflops"]})
    ours = build_model("n", num_classes=80).fuse().eval()
    rows[0]["cpu_ms_640_b1"] = latency_ms(ours, 640, runs)
    reference = reference_yolov8n()
    if reference is None:
        rows.append({"model": "reference yolov8n (ultralytics not installed: skipped)"})
    else:
        rows.append({"model": "reference yolov8n (ultralytics)", "params": sum(p.numel() for p in reference.parameters()),
                     "cpu_ms_640_b1": latency_ms(reference, 640, runs)})
        rows.append({"model": "ours n again (order check)", "cpu_ms_640_b1": latency_ms(ours, 640, runs)})
    return rows
