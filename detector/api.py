"""The Python API: one object that trains, predicts, evaluates and exports, composing the same
Hydra configs (configs/{train,predict,eval,export}.yaml) as tools/*.py, so that every command-line
option works from Python.

    from detector import Detector
    d = Detector("n")                          # a fresh n model; or Detector("best.pt") / Detector("yolov8n.pt")
    d.train(data="yolo", **{"data.root": "/data/set"}, epochs=3, imgsz=320)   # -> summary; d now holds best.pt
    results = d.predict("photos/")             # [{"boxes" [N,4] xyxy original px, "scores", "labels", "names"}]
    metrics = d.evaluate()                     # the 12 COCO numbers + score-IoU consistency
    path = d.export(nms=True)                  # the checked .onnx file

Keyword arguments become Hydra overrides (``epochs=3`` -> ``epochs=3``, ``loss_cls="vfl"`` ->
``loss_cls=vfl``; dotted keys through ``**{"data.root": ...}``); ``overrides=["dfl=off", "epochs=3"]``
takes them as written on the command line. Each call writes its run folder as the tool does
(``<out_dir>/<task>/<timestamp>``, or ``hydra.run.dir=...``) with ``.hydra/`` and ``<task>.log``.
"""
from __future__ import annotations

import copy
import functools
import logging
import os
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from detector.engine import tasks
from detector.engine.compose import compose_task, log_to, run_dir_of_job, run_task
from detector.engine.compose import config_dir as config_dir_default
from detector.models.registry import model_names

log = logging.getLogger("detector")

SCALES = ("n", "s", "m", "l", "x")
__all__ = ["Detector", "log_to"]


def check_overrides(task: str, overrides: list[str], directory: Path) -> None:
    from detector.engine.overrides import check_overrides as check

    check(task, overrides, directory)


class Detector:
    """A detection model with ``train``, ``predict``, ``evaluate`` and ``export``.

    ``model``: a checkpoint path (ours, or an ultralytics YOLOv8 detection .pt; read by
    ``detector.load_checkpoint``) or a scale name n/s/m/l/x for a fresh, untrained model of
    ``num_classes`` classes. Attributes: ``model`` (the ``torch.nn.Module``,
    ``detector.models.DetectionModel``), ``names``, ``config`` (the checkpoint's run config, {} for a
    fresh model), ``ckpt_path`` (None for a fresh model), ``run_dir`` (the last call's run folder).
    """

    def __init__(self, model: str | os.PathLike = "n", num_classes: int = 80, *,
                 config_dir: str | os.PathLike | None = None):
        self.config_dir = Path(config_dir) if config_dir is not None else config_dir_default()
        self.run_dir: Path | None = None
        self.ckpt_path: Path | None = None
        self.config: dict = {}
        if isinstance(model, str) and (model in SCALES or model in model_names()):
            from detector.models.detector import build_model

            self.model = build_model(model, num_classes=num_classes).eval()
        elif isinstance(model, (str, os.PathLike)):
            self._load(Path(model))
        else:
            raise TypeError(f"Detector(model=...) takes a checkpoint path or a scale ({', '.join(SCALES)}), "
                            f"not {type(model).__name__}")

    @property
    def model(self):
        return self._model

    @model.setter
    def model(self, module) -> None:
        self._model = module
        self._predictors: dict = {}  # device -> fused copy; rebuilt when the model is replaced

    @property
    def names(self) -> list[str]:
        return list(getattr(self.model, "names", None) or [])

    def __repr__(self) -> str:
        source = f"ckpt={str(self.ckpt_path)!r}" if self.ckpt_path else "untrained"
        return f"Detector(scale={self.model.scale!r}, num_classes={self.model.num_classes}, {source})"

    def _load(self, path: Path) -> None:
        from detector.engine.checkpoint import load_checkpoint

        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path} (give a .pt file or a model scale: "
                                    f"{', '.join(SCALES)})")
        if path.suffix.lower() == ".onnx":
            raise ValueError(f"{path} is an exported ONNX file, which cannot be trained or exported again; run it "
                             "with tools/predict.py ckpt=<file> or detector.predict.load_predictor(<file>)")
        self.model, config = load_checkpoint(path)
        self.config, self.ckpt_path = dict(config or {}), path

    # ----------------------------------------------------------------------------------- tasks
    def train(self, overrides: list[str] | str | None = None, **kwargs) -> dict:
        """Train as ``detector train`` with these overrides; returns the run's summary (best_AP,
        final metrics, run_dir). From a checkpoint, the run starts from its weights
        (``pretrained=<ckpt_path>``) at its scale; from a scale name, from scratch. Afterwards this
        object holds the run's best.pt (``ckpt_path``, ``run_dir``, ``model`` reloaded). The run
        starts from the weights in ``ckpt_path``, not from changes made to ``model`` in memory."""
        given = to_overrides(kwargs, overrides)
        keys = {override_key(o) for o in given}
        if "resume" not in keys:
            given = self._architecture_overrides(keys) + given
        summary = self._run("train", given, tasks.train)
        run_dir = Path(summary["run_dir"])
        best = run_dir / "checkpoints" / "best.pt"
        self._load(best if best.is_file() else run_dir / "checkpoints" / "last.pt")
        self.run_dir = run_dir
        return summary

    def _architecture_overrides(self, keys: set[str]) -> list[str]:
        """model=<scale> (and dfl=off for a reg_max=1 head) unless given; pretrained=<ckpt_path>."""
        extra = []
        if "model" not in keys and getattr(self.model, "name", None) in model_names():  # model=n: YOLOv8's own
            extra.append(f"model={self.model.scale if self.model.arch == 'yolov8' else self.model.name}")
        if "dfl" not in keys and self.model.reg_max == 1:
            extra.append("dfl=off")
        if self.ckpt_path is not None and "pretrained" not in keys:
            if "pretrained" not in OmegaConf.load(self.config_dir / "train.yaml"):
                raise ValueError(f"training from {self.ckpt_path} needs the pretrained= key, which "
                                 f"{self.config_dir / 'train.yaml'} lacks; Detector(<scale>) trains from scratch")
            extra.append(to_override("pretrained", str(self.ckpt_path)))
        return extra

    def predict(self, source, *, save: bool = False, overrides: list[str] | str | None = None,
                **kwargs) -> list[dict]:
        """Detections per image, as ``detector predict`` finds them (configs/predict.yaml: conf,
        iou, max_det, imgsz, device). ``source``: an image path, a folder, a glob, an HWC RGB
        uint8 ``np.ndarray`` (or a PIL image), or a list of these. Returns one dict per readable
        image: ``boxes`` [N, 4] float xyxy in the ORIGINAL image's pixels, ``scores`` [N],
        ``labels`` [N] long, ``names`` (N class names), and ``file`` for images read from disk.
        ``save=True`` also writes the pictures and detections.json to a run folder (``run_dir``)."""
        from detector.engine.build import resolve_device
        from detector.predict import TorchPredictor, predict_items, resolve_imgsz

        given = self._own_overrides("predict", kwargs, overrides)
        cfg = self._config("predict", given)
        device = resolve_device(cfg.device)
        if str(device) not in self._predictors:
            self._predictors[str(device)] = TorchPredictor(copy.deepcopy(self.model), device=device,
                                                           imgsz=self.config.get("imgsz"))
        predictor, items = self._predictors[str(device)], list_sources(source)
        if not save:
            return predict_items(predictor, items, None, resolve_imgsz(predictor, cfg.imgsz), cfg.conf, cfg.iou,
                                 cfg.max_det)[0]
        detections, _ = self._run("predict", given, functools.partial(tasks.predict, predictor=predictor,
                                                                      items=items))
        return detections

    def __call__(self, source, **kwargs) -> list[dict]:
        """``d(source, ...)`` is ``d.predict(source, ...)``, as in ultralytics."""
        return self.predict(source, **kwargs)

    def evaluate(self, overrides: list[str] | str | None = None, **kwargs) -> dict:
        """COCO evaluation as ``detector val`` (configs/eval.yaml); without a data override, on
        the checkpoint's own data set and imgsz. Prints the tables, writes detections.json,
        metrics.json and pictures to the run folder and returns the metrics: AP, AP50, AP75,
        APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl, spearman, pearson."""
        source = f"checkpoint {self.ckpt_path}" if self.ckpt_path else f"the untrained {self.model.scale} model"
        result = self._run("eval", self._own_overrides("eval", kwargs, overrides),
                           functools.partial(tasks.evaluate, model=self.model, train_cfg=self.config, source=source))
        return dict(result.metrics)

    def export(self, format: str = "onnx", overrides: list[str] | str | None = None, **kwargs) -> Path:
        """Export to ONNX or OpenVINO (``format``) as ``detector export`` (configs/export.yaml: imgsz,
        dynamic, nms, conf, iou, max_det, opset, layout, int8, calib_images, data, output, image,
        tolerance, latency_runs) with the same check; returns the file's path (OpenVINO: the .xml
        in its folder). Raises ExportError when the check fails."""
        from detector.engine.deploy import FORMATS

        if format not in FORMATS:
            raise ValueError(f"format={format!r} is not supported; the export formats are "
                             f"{' and '.join(repr(f) for f in FORMATS)}")
        stem = self.ckpt_path.stem if self.ckpt_path else f"detector_{self.model.scale}"
        report = self._run("export", [f"format={format}", *self._own_overrides("export", kwargs, overrides)],
                           functools.partial(tasks.export, model=self.model, train_cfg=self.config, stem=stem))
        return report.path

    # ----------------------------------------------------------------------------------- configs
    def _own_overrides(self, task: str, kwargs: dict, overrides) -> list[str]:
        """The user's overrides plus ckpt=<ckpt_path> (recorded in .hydra/, as the tool's)."""
        given = to_overrides(kwargs, overrides)
        if any(override_key(o) in ("ckpt", "source") for o in given):
            raise ValueError(f"{task}: ckpt and source are not options here; the model is this Detector's "
                             "(Detector(path) loads a checkpoint) and predict takes the source as its argument")
        return given + ([to_override("ckpt", str(self.ckpt_path))] if self.ckpt_path else [])

    def _config(self, task: str, overrides: list[str]) -> DictConfig:
        """The task's config as the command receives it (overrides checked first)."""
        check_overrides(task, overrides, self.config_dir)
        full = compose_task(task, overrides, self.config_dir)
        with read_write(full), open_dict(full):
            del full["hydra"]
        return full

    def _run(self, task: str, overrides: list[str], function):
        """``function(cfg)`` as a Hydra job of ``task`` (its run folder becomes ``run_dir``)."""
        check_overrides(task, overrides, self.config_dir)

        def job(cfg):
            self.run_dir = run_dir_of_job()
            return function(cfg)

        return run_task(task, overrides, job, self.config_dir)


# --------------------------------------------------------------------------------------- helpers
def override_key(override: str) -> str:
    """The top-level key of a Hydra override: ``+data.root=x`` -> ``data``."""
    return override.split("=")[0].lstrip("+~").split(".")[0].split("@")[0]


def format_value(value) -> str:
    """A Python value as Hydra override syntax; strings are quoted only where Hydra would read
    them otherwise (as a number, bool, null, list, sweep, or not at all)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    try:
        parsed = OverridesParser.create().parse_override(f"k={text}")
        if not parsed.is_sweep_override() and parsed.value() == text:
            return text
    except Exception:  # noqa: BLE001 - any parse failure means: quote it
        pass
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def to_override(key: str, value) -> str:
    return f"{key}={format_value(value)}"


def to_overrides(kwargs: dict, overrides: list[str] | str | None) -> list[str]:
    """``overrides`` (command-line strings, kept as written) then one ``key=value`` per keyword."""
    if isinstance(overrides, str):
        overrides = [overrides]
    return [str(o) for o in overrides or []] + [to_override(k, v) for k, v in kwargs.items()]


def list_sources(source) -> list[tuple[str | None, "np.ndarray | Path"]]:
    """(file name or None, image array or file path) for each image of ``source`` (see predict)."""
    from detector.predict import list_images

    if isinstance(source, (str, os.PathLike)):
        return [(str(path), path) for path in list_images(source)]
    if isinstance(source, np.ndarray):
        if source.ndim != 3 or source.shape[2] != 3 or source.dtype != np.uint8:
            raise ValueError(f"an image array must be HWC RGB uint8 [H, W, 3]; got shape {source.shape} "
                             f"dtype {source.dtype}")
        return [(None, source)]
    if hasattr(source, "convert") and hasattr(source, "size"):  # a PIL image
        return [(None, np.asarray(source.convert("RGB")))]
    if isinstance(source, (list, tuple)):
        return [item for each in source for item in list_sources(each)]
    raise TypeError(f"cannot predict on a {type(source).__name__}: give a path, folder, glob, HWC RGB uint8 "
                    "array or a list of them")


def read_file(path: Path):
    from detector.data.base import read_image

    image = read_image(path)
    if image is None:
        log.warning("skipped %s: not a readable image", path)
    return image
