"""OpenVINO export and INT8 quantization, checked: what ``detector export format=openvino`` and
``int8=true`` run (``export_from_config`` hands these to ``deploy_from_config``).

One path for both formats: the ONNX graph is written first (detector/export/onnx.py), converted
to OpenVINO IR for ``format=openvino``, quantized with ``int8=true`` (detector/export/quantize.py:
NNCF for OpenVINO, onnxruntime for ONNX) on letterboxed images of the training split of ``data``
(the checkpoint's own data set unless ``data=`` is given), and written atomically. Then the check,
on the file as written: the runtime against PyTorch on one image (and a batch of 2 at another
size when ``dynamic``), failing above ``tolerance`` for a float model (INT8 differs by design:
its difference is reported, and its AP is what is checked), and CPU latency. With ``int8=true``
the float and the INT8 model are both scored on the val split by the evaluator of ``detector
val`` (``int8_ap=false`` skips it), and the latency of both is reported.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from detector.engine.exporting import ExportError, ExportReport, parity_differences, parity_images

log = logging.getLogger("detector")

FORMATS = ("onnx", "openvino")


@dataclass
class DeployReport(ExportReport):
    format: str = "onnx"
    precision: str = "fp32"  # fp32 | int8
    calib_images: int = 0  # images the INT8 model was calibrated on
    float_latency_ms: float | None = None  # with int8: the float model's latency, same runtime and input
    metrics_float: dict | None = None  # with int8: the 12 COCO numbers (+ consistency) of the float model on val
    metrics_int8: dict | None = None  # with int8: the same for the INT8 model
    size_bytes: int = 0  # on disk (.xml + .bin for OpenVINO)


def check_format(fmt: str, int8: bool = False) -> None:
    """An unknown format, or a missing extra (MissingExtraError), before anything is written."""
    from detector.export.openvino import require

    if fmt not in FORMATS:
        raise ExportError(f"format={fmt} is not an export format; choose {' or '.join(FORMATS)}")
    if fmt == "openvino":
        require("openvino")
        if int8:
            require("nncf", "int8=true with format=openvino")


def deploy_from_config(cfg: DictConfig, model, train_cfg: dict, run_dir: str | os.PathLike, stem: str,
                       data_given: bool = False) -> DeployReport:
    """configs/export.yaml's keys -> ``deploy_and_check`` (``format``, ``int8``, ``calib_images``,
    ``int8_ap``, ``data`` as documented there; the others as for ONNX)."""
    from detector.export.openvino import check_output_folder, model_folder
    from detector.export.quantize import PRESETS, check_preset

    fmt, int8 = str(cfg.get("format", "onnx")), bool(cfg.get("int8", False))
    try:
        preset = check_preset(str(cfg.get("int8_preset", PRESETS[0])))
    except ValueError as error:
        raise ExportError(str(error)) from None
    check_format(fmt, int8)
    imgsz = int(cfg.imgsz or train_cfg.get("imgsz", 640))
    if fmt == "openvino":
        output = check_output_folder(model_folder(cfg.output, run_dir, f"{stem}_int8" if int8 else stem))
    else:
        output = Path(cfg.output) if cfg.output else Path(run_dir) / f"{stem}{'_int8' if int8 else ''}.onnx"
    calibration = evaluate = None
    if int8:
        calibration, splits_cfg = calibration_from_config(cfg, model, train_cfg, imgsz, data_given)
        if cfg.get("int8_ap", True):
            def evaluate(session, name):
                return score_on_val(session, splits_cfg, imgsz, Path(run_dir) / f"val_{name}", f"the {name} model")
    return deploy_and_check(model, output, fmt=fmt, stem=stem, imgsz=imgsz, dynamic=cfg.dynamic, nms=cfg.nms,
                            conf=cfg.conf, iou=cfg.iou, max_det=cfg.max_det, opset=cfg.opset, image=cfg.image,
                            tolerance=cfg.tolerance, latency_runs=cfg.latency_runs,
                            layout=cfg.get("layout", "ours"), calibration=calibration, evaluate=evaluate,
                            int8_preset=preset)


def calibration_from_config(cfg: DictConfig, model, train_cfg: dict, imgsz: int, data_given: bool):
    """(the CalibrationSet of ``cfg.calib_images`` training images, the data config used)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from detector.engine.evaluation import EvalDataError, chosen_data
    from detector.export.quantize import CalibrationError, CalibrationSet, calibration_count

    data_cfg = chosen_data(cfg.data, train_cfg, data_given)
    try:
        splits = instantiate(data_cfg)
    except InstantiationException as error:  # the data set refuses itself, e.g. a split with no image
        cause = error.__cause__ or error
        raise CalibrationError(f"int8=true calibrates on the train split of the data set, which cannot be used: "
                               f"{str(cause).splitlines()[0]}") from None
    if len(splits.names) != model.num_classes:
        raise EvalDataError(f"the model predicts {model.num_classes} classes but the data set has "
                            f"{len(splits.names)} ({', '.join(splits.names[:10])}...); pass the data set it was "
                            "trained on (data=...) to calibrate on")
    count = calibration_count(cfg.calib_images, len(splits.train), source=f"the train split of data={data_cfg.get('_target_', '')}")
    calibration = CalibrationSet(splits.train, imgsz, count).check()
    log.info("calibration: %d of %d training images, letterboxed to %d", len(calibration), len(splits.train), imgsz)
    return calibration, data_cfg


def score_on_val(session, data_cfg, imgsz: int, run_dir: Path, source: str) -> dict:
    """``val_metrics`` of an exported model (an OnnxDetector or OpenVinoDetector session)."""
    from detector.predict import OnnxPredictor

    return val_metrics(OnnxPredictor(session.path, session=session), data_cfg, imgsz, run_dir, source)


def val_metrics(model, data_cfg, imgsz: int, run_dir: Path, source: str) -> dict:
    """The metrics of ``model`` (a DetectionModel or an exported model's predictor) on the val
    split, by ``detector val``'s evaluator with configs/eval.yaml's thresholds and loader (conf,
    iou, max_det, batch_size, workers, backend), on the CPU, without the diagnostics."""
    from detector.engine.compose import config_dir
    from detector.engine.evaluation import evaluate_from_config

    defaults = OmegaConf.load(config_dir() / "eval.yaml")
    keys = ("conf", "iou", "max_det", "batch_size", "workers", "backend")
    eval_cfg = OmegaConf.create({key: defaults[key] for key in keys})
    eval_cfg.merge_with({"data": data_cfg, "imgsz": imgsz, "device": "cpu", "rect": False, "diagnostics": False})
    result = evaluate_from_config(eval_cfg, model, {}, run_dir, data_given=True, source=source)
    return dict(result.metrics)


def deploy_and_check(model, output: str | os.PathLike, *, fmt: str = "openvino", stem: str = "model",
                     imgsz: int = 640, dynamic: bool = False, nms: bool = False, conf: float = 0.25,
                     iou: float = 0.7, max_det: int = 100, opset: int = 17, image: str | os.PathLike | None = None,
                     tolerance: float = 1e-3, latency_runs: int = 20, layout: str = "ours", calibration=None,
                     evaluate=None, int8_preset: str = "mixed") -> DeployReport:
    """Write ``model`` in ``fmt`` (INT8 when ``calibration``, a CalibrationSet, is given) to
    ``output`` (a folder for OpenVINO, a file for ONNX) and check it (module docstring).
    ``evaluate(session, name) -> metrics``, with int8, scores the float and the INT8 model;
    ``int8_preset`` is NNCF's preset for OpenVINO (detector.export.quantize).
    Raises ExportError with a message for the user."""
    import onnx

    from detector.export import onnx as onnx_export
    from detector.export import openvino, quantize

    int8 = calibration is not None
    check_format(fmt, int8)
    output = openvino.check_output_folder(output) if fmt == "openvino" else Path(output)
    with tempfile.TemporaryDirectory(prefix="detector-export-") as tmp:
        try:
            onnx_path = onnx_export.export_onnx(model, Path(tmp) / f"{stem}.onnx", imgsz=imgsz, dynamic=dynamic,
                                                nms=nms, conf=conf, iou=iou, max_det=max_det, opset=opset,
                                                layout=layout)
        except ValueError as error:
            raise ExportError(str(error)) from None
        metadata = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
        extra = {"precision": "int8" if int8 else "fp32", **({"calib_images": str(len(calibration))} if int8 else {})}
        if fmt == "openvino":
            extra["format"] = openvino.FORMAT
            if int8:
                extra["int8_preset"] = int8_preset
        metadata = add_metadata(metadata, extra)
        if fmt == "openvino":
            ov_model = openvino.convert_onnx(onnx_path)
            float_session = None
            if int8:  # the float model as it would be saved, for the latency and AP it is compared by
                openvino.set_metadata(ov_model, add_metadata(metadata, {"precision": "fp32", "calib_images": "0"}))
                float_session = openvino.OpenVinoDetector(model=ov_model)
            if int8:
                log.info("quantizing with NNCF (preset %s) on %d images (the box decoding stays float)",
                         int8_preset, len(calibration))
                ov_model = quantize.quantize_openvino(ov_model, calibration, int8_preset)
            path = openvino.save_model(ov_model, output, stem, metadata, ultralytics=layout == "ultralytics")
            session = openvino.OpenVinoDetector(path)
            size = openvino.folder_size(path)
        else:
            float_session = onnx_export.OnnxDetector(onnx_path)
            log.info("quantizing with onnxruntime on %d images (the box decoding stays float)", len(calibration))
            path = _quantize_onnx_atomically(onnx_path, output, calibration, metadata)
            session = onnx_export.OnnxDetector(path)
            size = path.stat().st_size
        report = _check(model, session, path, fmt, imgsz, dynamic, nms, image, latency_runs, size)
        report.precision = extra["precision"]
        if int8:
            report.calib_images = len(calibration)
            _compare_int8(report, float_session, session, imgsz, image, latency_runs, evaluate)
    worst = max(report.differences.values())
    if not int8 and not worst <= tolerance:
        raise ExportError(f"{_runtime(fmt)} differs from PyTorch by {worst:.3g} > tolerance {tolerance}")
    return report


def add_metadata(metadata: dict[str, str], extra: dict[str, str]) -> dict[str, str]:
    """``metadata`` with ``extra`` among our keys: beside them, or in layout=ultralytics' JSON of ours."""
    from detector.export import layouts

    if layouts.OURS_KEY not in metadata:
        return {**metadata, **extra}
    ours = json.loads(metadata[layouts.OURS_KEY])
    return {**metadata, layouts.OURS_KEY: json.dumps({**ours, **extra})}


def _runtime(fmt: str) -> str:
    return "OpenVINO" if fmt == "openvino" else "onnxruntime"


def _quantize_onnx_atomically(onnx_path: Path, output: Path, calibration, metadata: dict) -> Path:
    from detector.export.quantize import quantize_onnx

    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    try:
        quantize_onnx(onnx_path, tmp, calibration, metadata)
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return output


def _check(model, session, path: Path, fmt: str, imgsz: int, dynamic: bool, nms: bool, image, latency_runs: int,
           size: int) -> DeployReport:
    """The parity and latency lines of ``session`` (the model as written) against PyTorch."""
    from detector.timing import median_ms

    runtime = _runtime(fmt)
    images = parity_images(image, imgsz)  # [1, 3, imgsz, imgsz]
    report = DeployReport(path, parity_differences(model, session, images, dynamic), format=fmt, size_bytes=size)
    compared = "detections" if nms else "predictions"
    for shape, diff in report.differences.items():
        log.info("max abs diff %s vs pytorch (%s, %s): %.3g", runtime, compared, shape, diff)
    log.info("model: %s (%.2f MiB)", path, size / 2**20)
    if latency_runs > 0:
        report.latency_ms = median_ms(lambda: session(images), runs=latency_runs, warmup=3)
        log.info("%s CPU latency (1x3x%dx%d, median of %d): %.2f ms", runtime, imgsz, imgsz, latency_runs,
                 report.latency_ms)
    return report


def _compare_int8(report: DeployReport, float_session, session, imgsz: int, image, latency_runs: int,
                  evaluate) -> None:
    """Latency and AP of the float model against the INT8 one, into ``report`` and the log."""
    from detector.timing import median_ms

    if latency_runs > 0:
        images = parity_images(image, imgsz)
        report.float_latency_ms = median_ms(lambda: float_session(images), runs=latency_runs, warmup=3)
        log.info("latency float %.2f ms, int8 %.2f ms: %.2fx", report.float_latency_ms, report.latency_ms,
                 report.latency_ms / report.float_latency_ms)
    if evaluate is None:
        return
    report.metrics_float = evaluate(float_session, "fp32")
    report.metrics_int8 = evaluate(session, "int8")
    before, after = report.metrics_float, report.metrics_int8
    log.info("val AP float %.4f, int8 %.4f (%+.4f); AP50 float %.4f, int8 %.4f (%+.4f); calibrated on %d images",
             before["AP"], after["AP"], after["AP"] - before["AP"], before["AP50"], after["AP50"],
             after["AP50"] - before["AP50"], report.calib_images)
