"""Export a model to ONNX and check the file: the one implementation behind tools/export.py and
``detector.Detector.export``.

The check: onnx.checker, onnxruntime against PyTorch on one letterboxed image (also a batch of 2
at another size when ``dynamic``), the file's inputs/outputs, and onnxruntime CPU latency. A
difference above ``tolerance`` raises ``ExportError`` after everything has been reported.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

log = logging.getLogger("detector")


class ExportError(ValueError):
    """An export that failed or a file that failed its check; the message is for the user."""


@dataclass
class ExportReport:
    path: Path
    differences: dict = field(default_factory=dict)  # "1x320x320" -> max abs diff onnxruntime vs PyTorch
    latency_ms: float | None = None  # onnxruntime CPU, median; None when not timed


def parity_images(image_path: str | os.PathLike | None, imgsz: int) -> np.ndarray:
    """One letterboxed image float32 [1, 3, imgsz, imgsz] in [0, 1]: the given file or a generated one."""
    from detector.data.base import read_image
    from detector.data.synthetic import make_image
    from detector.predict import to_input_batch

    if image_path:
        image = read_image(Path(image_path))
        if image is None:
            raise ExportError(f"image={image_path} is not a readable image")
    else:
        image, _ = make_image(np.random.default_rng(0), imgsz // 2, imgsz)
    return to_input_batch(image, imgsz)[0]


def parity_differences(model, session, images: np.ndarray, dynamic: bool) -> dict[str, float]:
    """{"1x320x320": max abs difference, ...} of ``session`` (an exported model) against PyTorch on
    ``images`` [1, 3, S, S]; with ``dynamic``, also a batch of 2 at a non-square size through the same file."""
    from detector.export.onnx import max_difference

    imgsz = images.shape[-1]
    differences = {f"1x{imgsz}x{imgsz}": max_difference(model, session, images)}
    if dynamic:
        height = max(32, imgsz // 64 * 32)
        differences[f"2x{height}x{imgsz}"] = max_difference(model, session, np.repeat(images[:, :, :height], 2, 0))
    return differences


def export_and_check(model, output: str | os.PathLike, *, imgsz: int = 640, dynamic: bool = False,
                     nms: bool = False, conf: float = 0.25, iou: float = 0.7, max_det: int = 100, opset: int = 17,
                     image: str | os.PathLike | None = None, tolerance: float = 1e-3,
                     latency_runs: int = 20, layout: str = "ours") -> ExportReport:
    """Write ``model`` (left untouched) to ``output`` and check the file (module docstring).
    Keywords as in configs/export.yaml. Raises ExportError with a message for the user."""
    import onnx

    from detector.export.onnx import OnnxDetector, check_onnx, describe, export_onnx, ort_latency_ms

    try:
        path = export_onnx(model, output, imgsz=imgsz, dynamic=dynamic, nms=nms, conf=conf, iou=iou,
                           max_det=max_det, opset=opset, layout=layout)
    except ValueError as error:
        raise ExportError(str(error)) from None
    try:
        check_onnx(path)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"onnx.checker rejects {path}: {error}") from None
    log.info("onnx.checker: ok")
    session = OnnxDetector(path)
    images = parity_images(image, imgsz)  # [1, 3, imgsz, imgsz]
    report = ExportReport(path, parity_differences(model, session, images, dynamic))
    compared = "detections" if nms else "predictions"
    for shape, diff in report.differences.items():
        log.info("max abs diff onnxruntime vs pytorch (%s, %s): %.3g", compared, shape, diff)
    log.info("file: %s (%.2f MiB)", path, path.stat().st_size / 2**20)
    log.info("inputs and outputs:\n%s", "\n".join(describe(session)))
    if latency_runs > 0:
        report.latency_ms = ort_latency_ms(session, images, runs=latency_runs)
        log.info("onnxruntime CPU latency (1x3x%dx%d, median of %d): %.2f ms", imgsz, imgsz, latency_runs,
                 report.latency_ms)
    worst = max(report.differences.values())
    if not worst <= tolerance:
        raise ExportError(f"onnxruntime differs from PyTorch by {worst:.3g} > tolerance {tolerance}")
    return report


def export_from_config(cfg: DictConfig, model, train_cfg: dict, run_dir: str | os.PathLike,
                       stem: str, data_given: bool = False) -> ExportReport:
    """configs/export.yaml's keys -> ``export_and_check``: imgsz null takes the checkpoint's training
    size (``train_cfg``, else 640), output null writes ``<run_dir>/<stem>.onnx``. ``format=openvino``
    and ``int8=true`` go to detector/engine/deploy.py (``data_given``: data= was on the command line)."""
    if cfg.get("format", "onnx") != "onnx" or cfg.get("int8", False):
        from detector.engine.deploy import deploy_from_config

        return deploy_from_config(cfg, model, train_cfg, run_dir, stem, data_given=data_given)
    imgsz = int(cfg.imgsz or train_cfg.get("imgsz", 640))
    output = Path(cfg.output) if cfg.output else Path(run_dir) / f"{stem}.onnx"
    return export_and_check(model, output, imgsz=imgsz, dynamic=cfg.dynamic, nms=cfg.nms, conf=cfg.conf,
                            iou=cfg.iou, max_det=cfg.max_det, opset=cfg.opset, image=cfg.image,
                            tolerance=cfg.tolerance, latency_runs=cfg.latency_runs,
                            layout=cfg.layout)
