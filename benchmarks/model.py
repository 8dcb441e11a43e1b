"""Model size and CPU inference speed, ours beside ultralytics' model of the same name.

    detector bench model                                  # yolov8n..x, yolo11n..x; latency at n and s, ONNX at n
    detector bench model --models yolov8n,yolo11n         # some models
    detector bench model --quick                          # yolov8n and yolo11n, fewer repeats

One row per model, 80 classes:
- params: ours, and ultralytics' ``DetectionModel(<name>.yaml, nc=80)``. ultralytics counts 16 more at
  every scale: its DFL conv holds the fixed 0..15 ramp that our decode computes without weights.
- GFLOPs at 640, counted one way for both: ``torch.utils.flop_counter.FlopCounterMode`` over one
  unfused eval forward at batch 1 (2 FLOPs a multiply-accumulate; convolutions and matmuls, the
  attention's included; BatchNorm, activations and additions not counted). Beside it, ultralytics'
  own figure for its model (thop through ``ultralytics.utils.torch_utils.get_flops``, what
  ``model.info()`` prints and the yaml comments quote).
- PyTorch CPU latency at 640, batch 1 (models of ``LATENCY_SCALES``): both fused, eval mode, forward
  plus decode (no NMS), each as its own predict runs it (ours ``for_inference``: NHWC weights; an
  NCHW input, as both are handed), in ``ROUNDS`` interleaved rounds (the order alternates, so drift on a shared
  machine hits both alike); each figure is the median over rounds of a round's median.
- onnxruntime CPU latency (models of ``ONNX_MODELS``): ours exported by
  ``detector.export.onnx.export_onnx`` (raw graph, ``predictions [1, A, 4 + C]``), theirs by
  ultralytics' ``model.export(format="onnx", simplify=False)`` (``output0 [1, 4 + C, A]``; onnxslim
  is not installed); one plain ``InferenceSession`` each with the same default options, interleaved
  as above.
The ``*_ratio`` columns are ultralytics' time / ours (above 1: ours faster). Without ultralytics
(AGPL, not a dependency; imported only here) the rows hold ours alone.
"""
from __future__ import annotations

import gc
import os
import statistics
import tempfile
from pathlib import Path
from typing import Callable

import torch

from detector import build_model
from detector.models.registry import model_names, resolve
from detector.models.summary import count_flops
from detector.timing import median_ms

IMGSZ = 640
LATENCY_SCALES = ("n", "s")  # m, l, x: sizes only (seconds a forward on a 2-core CPU)
ONNX_MODELS = ("yolov8n", "yolo11n")


def canonical(name: str) -> str:
    """"n" -> "yolov8n"; a ValueError listing the valid names for anything unknown."""
    architecture, scale = resolve(name)
    return architecture.model_name(scale)


def ultralytics_model(name: str):
    """ultralytics' DetectionModel from ``<name>.yaml`` at 80 classes (no weights), or None without it."""
    try:
        os.environ.setdefault("YOLO_OFFLINE", "1")
        from ultralytics.nn.tasks import DetectionModel
    except ImportError:
        return None
    return DetectionModel(f"{name}.yaml", nc=80, verbose=False).eval()


def interleaved_ms(calls: dict[str, Callable[[], object]], rounds: int, runs: int) -> dict[str, float]:
    """Median over ``rounds`` rounds of each call's median of ``runs`` runs; the order alternates each round."""
    names = list(calls)
    for name in names:
        median_ms(calls[name], runs=1, warmup=2)
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(median_ms(calls[name], runs=runs, warmup=1))
    return {name: statistics.median(values) for name, values in times.items()}


def size_row(name: str) -> tuple[dict, torch.nn.Module, torch.nn.Module | None]:
    ours = build_model(name, num_classes=80).eval()
    row = {"model": name, "params_ours": sum(p.numel() for p in ours.parameters())}
    theirs = ultralytics_model(name)
    if theirs is not None:
        row["params_ultralytics"] = sum(p.numel() for p in theirs.parameters())
    row["gflops_ours"] = count_flops(ours, IMGSZ) / 1e9
    if theirs is not None:
        from ultralytics.utils.torch_utils import get_flops

        row["gflops_ultralytics"] = count_flops(theirs, IMGSZ) / 1e9
        row["gflops_ultralytics_thop"] = get_flops(theirs, imgsz=IMGSZ)
    return row, ours, theirs


def pytorch_latency(row: dict, ours, theirs, rounds: int, runs: int) -> None:
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    calls = {"ours": ours.for_inference()}
    if theirs is not None:
        calls["ultralytics"] = theirs.fuse(verbose=False).eval()
    with torch.inference_mode():
        ms = interleaved_ms({k: (lambda m=m: m(x)) for k, m in calls.items()}, rounds, runs)
    row["cpu_ms_ours"] = ms["ours"]
    if "ultralytics" in ms:
        row["cpu_ms_ultralytics"], row["cpu_ratio"] = ms["ultralytics"], ms["ultralytics"] / ms["ours"]


def onnx_latency(row: dict, name: str, folder: Path, rounds: int, runs: int) -> None:
    import numpy as np
    import onnxruntime as ort

    from detector.export.onnx import export_onnx

    torch.manual_seed(0)
    paths = {"ours": export_onnx(build_model(name, num_classes=80).eval(), folder / f"ours_{name}.onnx", imgsz=IMGSZ)}
    if ultralytics_model(name) is not None:
        from ultralytics import YOLO

        model = YOLO(f"{name}.yaml")
        model.model.pt_path = str(folder / f"{name}.pt")  # where its exporter writes (never the package's folder)
        paths["ultralytics"] = Path(model.export(format="onnx", imgsz=IMGSZ, simplify=False, verbose=False))
    images = np.random.default_rng(0).random((1, 3, IMGSZ, IMGSZ), dtype=np.float32)
    sessions = {k: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    feeds = {k: {s.get_inputs()[0].name: images} for k, s in sessions.items()}
    ms = interleaved_ms({k: (lambda s=s, f=feeds[k]: s.run(None, f)) for k, s in sessions.items()}, rounds, runs)
    row["onnx_ms_ours"] = ms["ours"]
    if "ultralytics" in ms:
        row["onnx_ms_ultralytics"], row["onnx_ratio"] = ms["ultralytics"], ms["ultralytics"] / ms["ours"]


def run(quick: bool = False, models: list[str] | None = None) -> list[dict]:
    names = [canonical(m) for m in models] if models else (list(ONNX_MODELS) if quick else model_names())
    rounds, runs = (2, 2) if quick else (5, 5)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            row, ours, theirs = size_row(name)
            if name[-1] in LATENCY_SCALES:
                pytorch_latency(row, ours, theirs, rounds, runs)
            if name in ONNX_MODELS:
                onnx_latency(row, name, Path(tmp), rounds, runs)
            rows.append(row)
            del ours, theirs
            gc.collect()
    if rows and "params_ultralytics" not in rows[0]:
        rows.append({"model": "ultralytics not installed: its columns skipped"})
    return rows
