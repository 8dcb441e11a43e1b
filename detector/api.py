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
``loss_cls=vfl``; dotted keys through ``**{"data.root": ...}``); ``overrides=["dfl=off", "+x=1"]``
takes them as written on the command line. Each call writes its run folder as the tool does
(``<out_dir>/<task>/<timestamp>``, or ``hydra.run.dir=...``) with ``.hydra/`` and ``<task>.log``.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger("detector")

SCALES = ("n", "s", "m", "l", "x")
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


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
        self.config_dir = Path(config_dir) if config_dir is not None else CONFIG_DIR
        self.run_dir: Path | None = None
        self.ckpt_path: Path | None = None
        self.config: dict = {}
        if isinstance(model, str) and model in SCALES:
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
        """Train as ``tools/train.py`` with these overrides; returns the run's summary (best_AP,
        final metrics, run_dir). From a checkpoint, the run starts from its weights
        (``pretrained=<ckpt_path>``) at its scale; from a scale name, from scratch. Afterwards this
        object holds the run's best.pt (``ckpt_path``, ``run_dir``, ``model`` reloaded). The run
        starts from the weights in ``ckpt_path``, not from changes made to ``model`` in memory."""
        from detector.engine.run import resume_config
        from detector.engine.trainer import train

        given = to_overrides(kwargs, overrides)
        keys = {override_key(o) for o in given}
        if "resume" not in keys:
            given = self._architecture_overrides(keys) + given
        cfg, full, run_dir = self._compose("train", given)
        if cfg.resume:  # the run continues in its own folder, as the tool does
            cfg, run_dir = resume_config(cfg, list(full.hydra.overrides.task))
        else:
            save_hydra_files(full, run_dir)
        with hydra_runtime(full), log_to(run_dir, "train"):
            summary = train(cfg, run_dir)
        best = run_dir / "checkpoints" / "best.pt"
        self._load(best if best.is_file() else run_dir / "checkpoints" / "last.pt")
        self.run_dir = run_dir
        return summary

    def _architecture_overrides(self, keys: set[str]) -> list[str]:
        """model=<scale> (and dfl=off for a reg_max=1 head) unless given; pretrained=<ckpt_path>."""
        extra = []
        if "model" not in keys and self.model.scale in SCALES:
            extra.append(f"model={self.model.scale}")
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
        """Detections per image, as ``tools/predict.py`` finds them (configs/predict.yaml: conf,
        iou, max_det, imgsz, device). ``source``: an image path, a folder, a glob, an HWC RGB
        uint8 ``np.ndarray`` (or a PIL image), or a list of these. Returns one dict per readable
        image: ``boxes`` [N, 4] float xyxy in the ORIGINAL image's pixels, ``scores`` [N],
        ``labels`` [N] long, ``names`` (N class names), and ``file`` for images read from disk.
        ``save=True`` also writes the pictures and detections.json to a run folder (``run_dir``)."""
        import torchvision

        from detector.engine.build import resolve_device
        from detector.predict import (SourceError, TorchPredictor, detection_record, draw, predict_image, resolve_imgsz,
                                      unique_stem)

        cfg, full, run_dir = self._compose("predict", self._own_overrides("predict", kwargs, overrides))
        device = resolve_device(cfg.device)
        if str(device) not in self._predictors:
            self._predictors[str(device)] = TorchPredictor(copy.deepcopy(self.model), device=device,
                                                           imgsz=self.config.get("imgsz"))
        predictor = self._predictors[str(device)]
        imgsz = resolve_imgsz(predictor, cfg.imgsz)
        names = self.names
        items = list_sources(source)
        results, records, used = [], [], set()
        with contextlib.ExitStack() as stack:
            if save:
                save_hydra_files(full, run_dir)
                stack.enter_context(hydra_runtime(full))
                stack.enter_context(log_to(run_dir, "predict"))
            for index, (name, image) in enumerate(items):
                if isinstance(image, Path):
                    image = read_file(image)
                    if image is None:
                        continue
                det = predict_image(predictor, image, imgsz, cfg.conf, cfg.iou, cfg.max_det)
                det["names"] = [names[i] if 0 <= i < len(names) else str(i) for i in det["labels"].tolist()]
                if name is not None:
                    det["file"] = name
                results.append(det)
                if save:
                    stem = unique_stem(Path(name).stem if name else f"image{index}", used)
                    records.append(detection_record(name or stem, image, det, names))
                    torchvision.io.write_jpeg(draw(image, det, names), str(run_dir / f"{stem}.jpg"), quality=90)
            if not results:
                raise SourceError(f"none of the {len(items)} files could be read as an image")
            if save:
                (run_dir / "detections.json").write_text(json.dumps(records, indent=1))
                log.info("%d detections in %d images (imgsz=%d, conf=%s); wrote pictures and detections.json to %s",
                         sum(len(r["detections"]) for r in records), len(records), imgsz, cfg.conf, run_dir)
                self.run_dir = run_dir
        return results

    def __call__(self, source, **kwargs) -> list[dict]:
        """``d(source, ...)`` is ``d.predict(source, ...)``, as in ultralytics."""
        return self.predict(source, **kwargs)

    def evaluate(self, overrides: list[str] | str | None = None, **kwargs) -> dict:
        """COCO evaluation as ``tools/eval.py`` (configs/eval.yaml); without a data override, on
        the checkpoint's own data set and imgsz. Prints the tables, writes detections.json,
        metrics.json and pictures to the run folder and returns the metrics: AP, AP50, AP75,
        APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl, spearman, pearson."""
        from detector.engine.evaluation import evaluate_from_config, overrides_name_data

        given = self._own_overrides("eval", kwargs, overrides)
        cfg, full, run_dir = self._compose("eval", given)
        save_hydra_files(full, run_dir)
        with hydra_runtime(full), log_to(run_dir, "eval"):
            result = evaluate_from_config(cfg, self.model, self.config, run_dir, data_given=overrides_name_data(given),
                                          source=f"checkpoint {self.ckpt_path}" if self.ckpt_path
                                          else f"the untrained {self.model.scale} model")
        self.run_dir = run_dir
        return dict(result.metrics)

    def export(self, format: str = "onnx", overrides: list[str] | str | None = None, **kwargs) -> Path:
        """Export to ONNX as ``tools/export.py`` (configs/export.yaml: imgsz, dynamic, nms, conf,
        iou, max_det, opset, output, image, tolerance, latency_runs) with the same check; returns
        the file's path. Raises ExportError when the check fails."""
        from detector.engine.exporting import export_from_config

        if format != "onnx":
            raise ValueError(f"format={format!r} is not supported; the only export format is 'onnx'")
        cfg, full, run_dir = self._compose("export", self._own_overrides("export", kwargs, overrides))
        stem = self.ckpt_path.stem if self.ckpt_path else f"detector_{self.model.scale}"
        save_hydra_files(full, run_dir)
        with hydra_runtime(full), log_to(run_dir, "export"):
            report = export_from_config(cfg, self.model, self.config, run_dir, stem=stem)
        self.run_dir = run_dir
        return report.path

    # ----------------------------------------------------------------------------------- configs
    def _own_overrides(self, task: str, kwargs: dict, overrides) -> list[str]:
        """The user's overrides plus ckpt=<ckpt_path> (recorded in .hydra/, as the tool's)."""
        given = to_overrides(kwargs, overrides)
        if any(override_key(o) in ("ckpt", "source") for o in given):
            raise ValueError(f"{task}: ckpt and source are not options here; the model is this Detector's "
                             "(Detector(path) loads a checkpoint) and predict takes the source as its argument")
        return given + ([to_override("ckpt", str(self.ckpt_path))] if self.ckpt_path else [])

    def _compose(self, task: str, overrides: list[str]) -> tuple[DictConfig, DictConfig, Path]:
        """(the task's config as the tool's main() receives it, the config with its hydra node,
        the run folder). Hydra's errors (an unknown option lists the valid ones) pass through."""
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra

        if not (self.config_dir / f"{task}.yaml").is_file():
            raise FileNotFoundError(f"Hydra configs not found: {self.config_dir / (task + '.yaml')} is missing. The "
                                    "API composes the repository's configs/ folder: install the project from a "
                                    "checkout (pip install -e .) or pass Detector(..., config_dir=<configs folder>)")
        if GlobalHydra.instance().is_initialized():
            raise RuntimeError("detector.Detector composes its own Hydra configs and cannot run inside a "
                               "@hydra.main application or an initialize() block; call it outside them")
        with initialize_config_dir(config_dir=str(self.config_dir.resolve()), version_base="1.3", job_name=task):
            full = compose(config_name=task, overrides=overrides, return_hydra_config=True)
        run_dir = Path(str(full.hydra.run.dir))
        explicit = any(o.split("=")[0].lstrip("+~") == "hydra.run.dir" for o in overrides)
        if not explicit and run_dir.exists():  # two calls in one second: a fresh folder each
            n = 1
            while run_dir.with_name(f"{run_dir.name}_{n}").exists():
                n += 1
            run_dir = run_dir.with_name(f"{run_dir.name}_{n}")
        with read_write(full.hydra.runtime), open_dict(full.hydra.runtime):
            full.hydra.runtime.output_dir = str(run_dir.resolve())
        cfg = copy.deepcopy(full)
        with read_write(cfg), open_dict(cfg):
            del cfg["hydra"]
        return cfg, full, run_dir


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


def save_hydra_files(full: DictConfig, run_dir: Path) -> None:
    """``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml``, as Hydra writes them for a tool."""
    out = run_dir / str(full.hydra.output_subdir or ".hydra")
    out.mkdir(parents=True, exist_ok=True)
    task_cfg = copy.deepcopy(full)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    (out / "config.yaml").write_text(OmegaConf.to_yaml(task_cfg))
    (out / "hydra.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create({"hydra": full.hydra})))
    (out / "overrides.yaml").write_text(OmegaConf.to_yaml(full.hydra.overrides.task))


@contextlib.contextmanager
def hydra_runtime(full: DictConfig):
    """``HydraConfig.get()`` answers as in a tool's run (the trainer reads the group choices)."""
    from hydra.core.hydra_config import HydraConfig

    instance = HydraConfig.instance()
    previous = instance.cfg
    instance.set_config(copy.deepcopy(full))
    try:
        yield
    finally:
        instance.cfg = previous


@contextlib.contextmanager
def log_to(run_dir: Path, name: str):
    """The "detector" logger at INFO, to ``<run_dir>/<name>.log`` for the call and to stdout when
    nothing else shows it (no root handler); repeated calls never stack handlers."""
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)
    ours = [h for h in log.handlers if getattr(h, "_detector_api", False)]
    if logging.getLogger().handlers:  # logging is configured: propagate there only
        for handler in ours:
            log.removeHandler(handler)
    elif not ours:
        stream = logging.StreamHandler(sys.stdout)
        stream.setFormatter(formatter)
        stream._detector_api = True
        log.addHandler(stream)
    run_dir.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(run_dir / f"{name}.log")
    file_handler.setFormatter(formatter)
    log.addHandler(file_handler)
    try:
        yield
    finally:
        log.removeHandler(file_handler)
        file_handler.close()
