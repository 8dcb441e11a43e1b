"""ONNX export: onnxruntime CPU latency of the exported n model (80 classes) at 640, batch 1,
without and with NMS in the graph, and the export's agreement with PyTorch.

Rows (median of several session.run calls after warm-up, CPU execution provider, default threads):
- raw graph (predictions [1, 8400, 84]), and the same followed by the PyTorch postprocess
  (conf 0.25, iou 0.7): what a user of the raw graph pays in all;
- NMS graph on untrained weights: almost no score passes 0.25, so this is the graph's fixed cost;
- NMS graph on "loaded" weights (BN statistics from random images, class bias set so that 1000
  (anchor, class) pairs pass 0.25): the cost of NMS with many candidates, a crowded image.
The reference YOLOv8n (ultralytics, built from its yaml without weights) is exported with the
same exporter and timed the same way when the package is importable; a benchmark-only comparison.
"""
from __future__ import annotations

import copy
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from detector import build_model
from detector.export.onnx import OnnxDetector, export_onnx, max_difference, ort_latency_ms
from detector.models.postprocess import postprocess
from detector.timing import median_ms

CONF, IOU, MAX_DET = 0.25, 0.7, 100
LOADED_CANDIDATES = 1000


def loaded_model(model, images: torch.Tensor, candidates: int = LOADED_CANDIDATES):
    """A copy whose scores vary and of which exactly ``candidates`` (anchor, class) pairs pass CONF."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(torch.rand(2, *images.shape[1:]))
        for branch in model.head.cls_branches:
            branch[-1].bias.zero_()
        model.eval()
        logits = torch.logit(model(images)[0, :, 4:].clamp(1e-7, 1 - 1e-7))  # [A, C]
        threshold = logits.flatten().topk(candidates + 1).values[-2:].mean()  # between the k-th and k+1-th
        for branch in model.head.cls_branches:
            branch[-1].bias.fill_(math.log(CONF / (1 - CONF)) - threshold.item())
    return model


def time_raw_plus_postprocess(detector: OnnxDetector, images: np.ndarray, runs: int) -> float:
    def once():
        postprocess(torch.from_numpy(detector(images)["predictions"]), conf=CONF, iou=IOU, max_det=MAX_DET)

    return median_ms(once, runs=runs, warmup=2)


def reference_row(folder: Path, imgsz: int, images: np.ndarray, runs: int) -> dict:
    try:
        from ultralytics import YOLO
    except ImportError:
        return {"graph": "reference yolov8n (ultralytics not installed: skipped)"}
    model = YOLO("yolov8n.yaml").model.fuse().eval()
    path = folder / "yolov8n.onnx"
    torch.onnx.export(model, (torch.from_numpy(images),), str(path), dynamo=False, input_names=["images"],
                      output_names=["output0"], opset_version=17)
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    latency = median_ms(lambda: session.run(None, {"images": images}), runs=runs)
    return {"graph": "reference yolov8n raw [1, 84, A] (ultralytics)", "imgsz": imgsz,
            "ort_cpu_ms": latency, "mib": path.stat().st_size / 2**20}


def run(quick: bool = False) -> list[dict]:
    imgsz, runs = (320, 5) if quick else (640, 20)
    torch.manual_seed(0)
    model = build_model("n", num_classes=80).eval()
    images = torch.rand(1, 3, imgsz, imgsz)
    array = images.numpy()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        graphs = (("raw predictions [1, A, 84]", model, False), ("nms (untrained: ~0 candidates)", model, True),
                  (f"nms (loaded: {LOADED_CANDIDATES} candidates)", loaded_model(model, images), True))
        for name, weights, nms in graphs:
            start = time.perf_counter()
            path = export_onnx(weights, folder / "model.onnx", imgsz=imgsz, nms=nms, conf=CONF, iou=IOU,
                               max_det=MAX_DET)
            export_s = time.perf_counter() - start
            detector = OnnxDetector(path)
            row = {"graph": name, "imgsz": imgsz, "ort_cpu_ms": ort_latency_ms(detector, array, runs=runs),
                   "mib": path.stat().st_size / 2**20, "export_s": export_s,
                   "max_abs_diff": max_difference(weights, detector, array)}
            if nms:
                row["num_dets"] = int(detector(array)["num_dets"][0])
            rows.append(row)
            if not nms:
                rows.append({"graph": "raw + pytorch postprocess", "imgsz": imgsz,
                             "ort_cpu_ms": time_raw_plus_postprocess(detector, array, runs)})
        rows.append(reference_row(folder, imgsz, array, runs))
    return rows
