"""One table of export formats, as ultralytics' ``yolo benchmark``: for PyTorch, ONNX, ONNX+NMS,
ONNX INT8 (onnxruntime), OpenVINO FP32 and OpenVINO INT8 (NNCF; the default preset ``mixed``, and
``performance`` as "OpenVINO INT8 performance"), and ONNX and OpenVINO FP32 in ``layout=ultralytics``
(the rows ultralytics' own exports are timed against) the size on disk, the CPU latency
at batch 1 and the AP of the exported model on a val set, by ``detector val``'s evaluator.

    detector bench export                                       # untrained n at 640: latency and size
    detector bench export --ckpt best.pt --data data.yaml       # and AP on data.yaml's val split
    PYTHONPATH=/path/to/ultralytics detector bench export ...   # with ultralytics' own exports beside

Every export goes through the code of ``detector export`` (detector/engine/deploy.py; INT8
calibrated on ``--calib-images`` letterboxed images of the train split, 300 by default), at one
fixed square size (``--imgsz``, 640 by default) for latency and AP alike. Latency: the median of
``runs`` calls after warm-up, in ``repeats`` rounds that visit the formats in turn (the order
rotated each round, so that a machine shared with other work slows all alike), the median over
rounds; CPU, default threads, OpenVINO compiled in f32 (LATENCY hint). AP: conf 0.001, iou 0.7,
max_det 300 (eval.yaml), except the NMS graph, which keeps the baked-in conf 0.25 and max_det 100
of a deployment file (so a lower AP there is the threshold, not the export). Without ``--data`` the
checkpoint's own data set is used; without a checkpoint an untrained n (80 classes) is timed
and calibrated on generated shapes pictures, and no AP is given. The "vs" column: INT8 rows
against the same runtime's float row; ultralytics' rows: ours against theirs, same runtime and the
same output (our ``layout=ultralytics`` rows, [B, 4 + C, A] cx, cy, w, h as theirs).

When ultralytics is importable, its model of the same name (``YOLO("yolov8n.yaml")`` for a
yolov8n checkpoint, ``yolo11n.yaml`` for a yolo11n one; random weights, no download) is exported
with its own exporter to ONNX and OpenVINO and timed in the same rounds; latency and size only
(a benchmark-only comparison: ultralytics is never imported by the library).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from detector import build_model
from detector.timing import median_ms

log = logging.getLogger("detector")
CONF, IOU, MAX_DET = 0.25, 0.7, 100  # the NMS graph's baked-in thresholds (export.yaml's defaults)
ULTRALYTICS_LAYOUT_ONNX, ULTRALYTICS_LAYOUT_OPENVINO = "ONNX layout=ultralytics", "OpenVINO FP32 layout=ultralytics"


class GeneratedImages:
    """Generated shapes pictures as a data set for calibration, when no data set is given."""

    def __init__(self, count: int, imgsz: int):
        self.count, self.imgsz = count, imgsz

    def __len__(self) -> int:
        return self.count

    def load(self, index: int):
        from detector.data.synthetic import make_image

        return make_image(np.random.default_rng(index), self.imgsz // 2, self.imgsz)[0], None


def load(ckpt: str | None, data: str | None):
    """(model, data config or None, where the model came from)."""
    from omegaconf import OmegaConf

    from detector.engine.evaluation import chosen_data

    if ckpt is None:
        torch.manual_seed(0)
        return build_model("n", num_classes=80).eval(), None, "untrained n, 80 classes"
    from detector.engine.checkpoint import load_checkpoint

    model, config = load_checkpoint(ckpt)
    given = OmegaConf.create({"_target_": "detector.data.yolo.yolo_splits", "data_yaml": data}) if data else None
    data_cfg = chosen_data(given, config or {}, data_given=given is not None)
    return model.eval(), data_cfg, f"checkpoint {ckpt}"


def exports(model, folder: Path, imgsz: int, calibration) -> list[tuple[str, str, object, Path]]:
    """(format, runtime, session, path) of each of our exported models."""
    from detector.engine.deploy import deploy_and_check
    from detector.export.onnx import OnnxDetector
    from detector.export.openvino import OpenVinoDetector

    made = []
    quiet = dict(imgsz=imgsz, latency_runs=0, tolerance=1e-2)
    plan = [("ONNX", "onnxruntime", "onnx", {}), ("ONNX+NMS", "onnxruntime", "onnx",
                                                   {"nms": True, "conf": CONF, "iou": IOU, "max_det": MAX_DET}),
            ("ONNX INT8", "onnxruntime", "onnx", {"calibration": calibration}),
            ("OpenVINO FP32", "OpenVINO", "openvino", {}),
            ("OpenVINO INT8", "OpenVINO", "openvino", {"calibration": calibration}),
            ("OpenVINO INT8 performance", "OpenVINO", "openvino",
             {"calibration": calibration, "int8_preset": "performance"}),
            # the output ultralytics' own exports have ([B, 4 + C, A]): what their rows are timed against
            (ULTRALYTICS_LAYOUT_ONNX, "onnxruntime", "onnx", {"layout": "ultralytics"}),
            (ULTRALYTICS_LAYOUT_OPENVINO, "OpenVINO", "openvino", {"layout": "ultralytics"})]
    for n, (name, runtime, fmt, options) in enumerate(plan):
        output = folder / (f"m{n}.onnx" if fmt == "onnx" else f"m{n}_openvino_model")
        if fmt == "onnx" and "calibration" not in options:  # the plain ONNX exporter, as detector export runs it
            from detector.engine.exporting import export_and_check

            report = export_and_check(model, output, **quiet, **options)
        else:
            report = deploy_and_check(model, output, fmt=fmt, stem="model", **quiet, **options)
        session = OpenVinoDetector(report.path) if fmt == "openvino" else OnnxDetector(report.path)
        made.append((name, runtime, session, report.path))
    return made


def ultralytics_exports(folder: Path, imgsz: int, name: str) -> list[tuple[str, str, object, Path]]:
    """ultralytics' own ONNX and OpenVINO exports of its random-weight ``name`` (yolov8n, yolo11n, ...):
    (row name, runtime, run, path)."""
    try:
        from ultralytics import YOLO
    except ImportError:
        return []
    import onnxruntime as ort

    from detector.export.openvino import shared_core

    cwd = os.getcwd()
    os.chdir(folder)  # its exporter writes next to the model's name, in the working folder
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            onnx_path = Path(YOLO(f"{name}.yaml").export(format="onnx", imgsz=imgsz, simplify=False, verbose=False))
            ov_folder = Path(YOLO(f"{name}.yaml").export(format="openvino", imgsz=imgsz, verbose=False))
    finally:
        os.chdir(cwd)
    onnx_path, ov_folder = folder / onnx_path.name, folder / ov_folder.name
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    xml = next(ov_folder.glob("*.xml"))
    compiled = shared_core().compile_model(str(xml), "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                              "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    return [(f"ultralytics {name} ONNX", "onnxruntime", lambda x: session.run(None, {"images": x}), onnx_path),
            (f"ultralytics {name} OpenVINO", "OpenVINO", lambda x: request.infer([x]), xml)]


def size_mib(path: Path) -> float:
    if path.suffix == ".xml":
        return (path.stat().st_size + path.with_suffix(".bin").stat().st_size) / 2**20
    return path.stat().st_size / 2**20


def interleaved_latency(runners: dict, images: np.ndarray, repeats: int, runs: int) -> dict[str, float]:
    """{name: median over rounds of the median of ``runs`` calls}, the order rotated each round."""
    names, times = list(runners), {name: [] for name in runners}
    for round_ in range(repeats):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            times[name].append(median_ms(lambda: runners[name](images), runs=runs, warmup=3))
    return {name: statistics.median(values) for name, values in times.items()}


def run(quick: bool = False, ckpt: str | None = None, data: str | None = None, imgsz: int | None = None,
        calib_images: int | float = 300) -> list[dict]:
    from detector.engine.deploy import score_on_val, val_metrics
    from detector.export.quantize import CalibrationSet, calibration_count
    from detector.predict import to_input_batch

    imgsz = imgsz or (320 if quick else 640)
    repeats, runs = (1, 5) if quick else (5, 20)
    model, data_cfg, source = load(ckpt, data)
    splits = None
    if data_cfg is not None:
        from hydra.utils import instantiate

        splits = instantiate(data_cfg)
        train = splits.train
    else:
        train = GeneratedImages(16 if quick else 64, imgsz)
    calibration = CalibrationSet(train, imgsz, calibration_count(calib_images, len(train))).check()
    images = to_input_batch(train.load(0)[0], imgsz)[0]  # [1, 3, imgsz, imgsz]
    rows = []
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        folder = Path(tmp)
        ours = exports(model, folder, imgsz, calibration)
        theirs = ultralytics_exports(folder, imgsz, model.name)
        torch_model = _fused(model)
        checkpoint = Path(ckpt) if ckpt else _saved(model, folder)

        def pytorch(x):
            with torch.no_grad():
                return torch_model(torch.from_numpy(x))

        runners = {"PyTorch": pytorch, **{name: session for name, _, session, _ in ours},
                   **{name: call for name, _, call, _ in theirs}}
        latency = interleaved_latency(runners, images, repeats, runs)
        entries = [("PyTorch", "torch", None, checkpoint)] + [(n, r, s, p) for n, r, s, p in ours] + \
                  [(n, r, None, p) for n, r, _, p in theirs]
        for name, runtime, session, path in entries:
            row = {"format": name, "runtime": runtime, "MiB": size_mib(path), "ms": latency[name], "vs": ""}
            if splits is not None and not name.startswith("ultralytics"):
                metrics = (val_metrics(model, data_cfg, imgsz, folder / "val" / name, name) if session is None
                           else score_on_val(session, data_cfg, imgsz, folder / "val" / name, name))
                row.update({"AP": metrics["AP"], "AP50": metrics["AP50"]})
            rows.append(row)
    by_name = {row["format"]: row for row in rows}
    for row in rows:  # the "vs" column (module docstring)
        name = row["format"]
        if "INT8" in name:
            base = by_name["OpenVINO FP32" if "OpenVINO" in name else "ONNX"]
            row["vs"] = f"{row['ms'] / base['ms']:.2f}x {base['format']}"
        elif name.startswith("ultralytics"):
            ours_row = by_name[ULTRALYTICS_LAYOUT_ONNX if name.endswith("ONNX") else ULTRALYTICS_LAYOUT_OPENVINO]
            row["vs"] = f"ours {ours_row['ms'] / row['ms']:.2f}x"
    for row in rows:
        theirs_row = row["format"].startswith("ultralytics")
        row.update({"imgsz": imgsz, "model": f"{model.name}.yaml" if theirs_row else source})
    if splits is not None:
        rows[0]["calib_images"] = len(calibration)
    return rows


def _fused(model):
    import copy

    return copy.deepcopy(model).for_inference()


def _saved(model, folder: Path) -> Path:
    """The size an untrained model's checkpoint would have: its state dict, saved."""
    path = folder / "model.pt"
    torch.save(model.state_dict(), path)
    return path


@contextlib.contextmanager
def _quiet():
    """The exports' and evaluations' own log lines and tables stay out of the benchmark's table."""
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        log.setLevel(level)

