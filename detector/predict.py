"""Inference on image files: list a source, letterbox, run a checkpoint or an exported ONNX file,
map the boxes back to original pixels, draw them and write ``detections.json``.

Used by tools/predict.py; usable on its own:

    predictor = load_predictor("best.pt")            # or "best.onnx"
    for path in list_images("photos/"):
        image = read_image(path)                     # HWC uint8 RGB
        detections = predict_image(predictor, image, imgsz=640, conf=0.25)

``detections.json`` is a list with one entry per readable image:
    {"file": str (the path as found), "width": int, "height": int (original pixels),
     "detections": [{"box": [x1, y1, x2, y2] original px, "score": float in [0, 1],
                     "label": int (0-based), "name": str}, ...]}   sorted by score
"""
from __future__ import annotations

import glob
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from detector.data.base import read_image
from detector.data.transforms import from_letterbox, letterbox_array
from detector.data.visualize import draw_detections
from detector.models.postprocess import postprocess

log = logging.getLogger("detector")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class SourceError(ValueError):
    """A source that names no image file."""


def list_images(source: str | os.PathLike) -> list[Path]:
    """Image files of ``source``: one file, the images directly inside a folder, or a glob
    pattern (``photos/*.jpg``, ``data/**/*.png``); sorted by path."""
    source = str(source)
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        what = f"folder {source}"
    elif glob.has_magic(source):
        files = sorted(Path(p) for p in glob.glob(source, recursive=True)
                       if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_SUFFIXES)
        what = f"pattern {source}"
    else:
        raise SourceError(f"source not found: {source} (give an image, a folder or a glob pattern)")
    if not files:
        raise SourceError(f"no image in {what} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return files


class TorchPredictor:
    """A DetectionModel (``for_inference``: fused, eval, NHWC) on a device. ``names`` from the checkpoint; ``imgsz`` its training size."""

    def __init__(self, model, device: torch.device | str = "cpu", imgsz: int | None = None):
        self.device = torch.device(device)
        self.model = model.for_inference(self.device)
        self.names = list(getattr(model, "names", []))
        self.imgsz = imgsz
        self.fixed_size = None

    @torch.no_grad()
    def __call__(self, images: np.ndarray, conf: float, iou: float, max_det: int) -> list[dict]:
        """images float32 [B, 3, H, W] in [0, 1] -> detections per image in input pixels (CPU tensors)."""
        predictions = self.model(torch.from_numpy(images).to(self.device))  # [B, A, 4 + C]
        return [{k: v.cpu() for k, v in d.items()} for d in postprocess(predictions, conf, iou, max_det)]


class OnnxPredictor:
    """An exported model, raw or NMS layout (see detector.export.onnx): an ONNX file run with
    onnxruntime, or ``session``, any runtime with OnnxDetector's interface (an OpenVINO model:
    detector.export.openvino.OpenVinoDetector).

    With the NMS layout the thresholds are baked in: ``conf`` and ``max_det`` can only tighten them
    (at most the exported max_det rows come out; a lower conf or another iou is reported once).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None, session=None):
        from detector.export.onnx import OnnxDetector

        self.session = session if session is not None else OnnxDetector(path, threads=threads)
        meta = self.session.metadata
        self.names = list(meta.get("names", []))
        self.num_classes = int(meta.get("num_classes", len(self.names)))
        self.imgsz = meta.get("imgsz")
        self.fixed_size = self.session.fixed_size
        self._warned = False

    def predict(self, images: Tensor, conf: float = 0.001, iou: float = 0.7, max_det: int = 300) -> list[dict]:
        """``DetectionModel.predict``'s interface (images [B, 3, H, W] in [0, 1], any device), so
        that ``detector val`` scores an exported model with the evaluator of checkpoints; a batch
        is run in pieces of the model's fixed batch size."""
        array = images.detach().float().cpu().numpy()
        if self.fixed_size and tuple(array.shape[2:]) != tuple(self.fixed_size):
            raise ValueError(f"{self.session.path} takes fixed {self.fixed_size[0]}x{self.fixed_size[1]} input, not "
                             f"{array.shape[2]}x{array.shape[3]}; pass imgsz={self.fixed_size[0]} rect=false, or "
                             "export with dynamic=true")
        step = self.session.fixed_batch or len(array)
        return [det for start in range(0, len(array), step)
                for det in self(array[start:start + step], conf, iou, max_det)]

    def __call__(self, images: np.ndarray, conf: float, iou: float, max_det: int) -> list[dict]:
        outputs = self.session(images)
        if self.session.layout == "raw":
            return postprocess(torch.from_numpy(outputs["predictions"]), conf, iou, max_det)
        from detector.export.onnx import nms_outputs_to_detections

        meta = self.session.metadata
        if not self._warned and (conf < meta.get("conf", 0) or iou != meta.get("iou", iou)):
            log.warning("%s has NMS in the graph (conf=%s iou=%s max_det=%s): conf=%s iou=%s cannot change "
                        "them; export again with other values or without nms", self.session.path,
                        meta.get("conf"), meta.get("iou"), meta.get("max_det"), conf, iou)
            self._warned = True
        results = []
        for det in nms_outputs_to_detections(outputs):
            keep = (det["scores"] > conf).nonzero().flatten()[:max_det]  # rows are sorted by score
            results.append({k: v[keep] for k, v in det.items()})
        return results


def is_exported(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an exported model (``.onnx``, or OpenVINO: ``.xml`` or its folder)
    rather than a checkpoint."""
    from detector.export.openvino import is_openvino_path

    return Path(path).suffix.lower() == ".onnx" or is_openvino_path(path)


def load_predictor(path: str | os.PathLike, device: str = "cpu") -> TorchPredictor | OnnxPredictor:
    """A checkpoint (``.pt``), an exported ``.onnx`` file or an OpenVINO model (its ``.xml`` or
    folder), ready to run. Raises CheckpointError / OnnxLayoutError / OpenVinoModelError /
    MissingExtraError / FileNotFoundError with a message for the user."""
    from detector.export.openvino import OpenVinoDetector, is_openvino_path

    path = Path(path)
    if path.suffix.lower() == ".onnx":
        if not path.is_file():
            raise FileNotFoundError(f"ONNX file not found: {path}")
        return OnnxPredictor(path)
    if is_openvino_path(path):
        return OnnxPredictor(path, session=OpenVinoDetector(path))
    from detector.engine.checkpoint import load_checkpoint

    model, config = load_checkpoint(path)
    return TorchPredictor(model, device=device, imgsz=config.get("imgsz"))


def resolve_imgsz(predictor, requested: int | None) -> int:
    """The inference size: the one asked for, else the model's own (training size or exported
    size), else 640. Raises ValueError for a size the model cannot take."""
    imgsz = int(requested or predictor.imgsz or 640)
    if imgsz % 32:
        raise ValueError(f"imgsz={imgsz} must be a multiple of 32")
    if predictor.fixed_size and tuple(predictor.fixed_size) != (imgsz, imgsz):
        raise ValueError(f"the exported model takes fixed {predictor.fixed_size[0]}x{predictor.fixed_size[1]} input, "
                         f"not imgsz={imgsz}; pass imgsz={predictor.fixed_size[0]} or export with dynamic=true")
    return imgsz


def to_input_batch(image: np.ndarray, imgsz: int) -> tuple[np.ndarray, tuple[float, int, int]]:
    """HWC uint8 RGB -> (the model input float32 [1, 3, imgsz, imgsz] in [0, 1], letterbox
    (scale, pad_x, pad_y) to map boxes back with ``from_letterbox``)."""
    boxed, params = letterbox_array(image, imgsz)  # [imgsz, imgsz, 3]
    return boxed.transpose(2, 0, 1)[None].astype(np.float32) / 255.0, params


def predict_image(predictor, image: np.ndarray, imgsz: int, conf: float = 0.25, iou: float = 0.7,
                  max_det: int = 300) -> dict:
    """One HWC uint8 RGB image -> {"boxes" [N, 4] xyxy original px (clipped), "scores" [N], "labels" [N]}."""
    height, width = image.shape[:2]
    batch, params = to_input_batch(image, imgsz)  # [1, 3, imgsz, imgsz]
    det = predictor(batch, conf, iou, max_det)[0]
    boxes = from_letterbox(det["boxes"].float(), params)  # [N, 4] original px
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    return {"boxes": boxes, "scores": det["scores"].float(), "labels": det["labels"].long()}


def detection_record(path: Path, image: np.ndarray, detections: dict, names: list[str]) -> dict:
    """The ``detections.json`` entry of one image (see the module docstring)."""
    height, width = image.shape[:2]
    rows = []
    for box, score, label in zip(detections["boxes"].tolist(), detections["scores"].tolist(),
                                 detections["labels"].tolist()):
        rows.append({"box": [round(v, 2) for v in box], "score": round(score, 5), "label": int(label),
                     "name": names[label] if 0 <= label < len(names) else str(label)})
    return {"file": str(path), "width": int(width), "height": int(height), "detections": rows}


def draw(image: np.ndarray, detections: dict, names: list[str]) -> Tensor:
    """HWC uint8 RGB -> uint8 [3, H, W] with labelled boxes ("name 0.87")."""
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    return draw_detections(tensor, detections["boxes"], detections["labels"], names, detections["scores"])


def unique_stem(base: str, used: set[str]) -> str:
    """``base``, or ``base_1``, ``base_2``, ... when two sources share a name (a glob over folders); added to ``used``."""
    stem, n = base, 1
    while stem in used:
        stem, n = f"{base}_{n}", n + 1
    used.add(stem)
    return stem


def predict_files(predictor, files: list[Path], out_dir: str | os.PathLike, imgsz: int, conf: float = 0.25,
                  iou: float = 0.7, max_det: int = 300, save_images: bool = True) -> list[dict]:
    """Run on every file, save ``<out_dir>/<name>.jpg`` pictures and ``detections.json``; returns
    the records written (see predict_items)."""
    return predict_items(predictor, [(str(path), path) for path in files], out_dir, imgsz, conf, iou, max_det,
                         save_images)[1]


def predict_items(predictor, items: list[tuple[str | None, "Path | np.ndarray"]], out_dir: str | os.PathLike | None,
                  imgsz: int, conf: float = 0.25, iou: float = 0.7, max_det: int = 300,
                  save_images: bool = True) -> tuple[list[dict], list[dict]]:
    """Run on every (name or None, image file or HWC uint8 RGB array) item: the one predict loop.

    Returns (detections, records): one ``predict_image`` dict per readable image with ``names``
    (N class names) and ``file`` (when named) added, and its ``detections.json`` record. With
    ``out_dir``, writes detections.json and (``save_images``) one picture per image there. An
    unreadable file is skipped with a warning naming it; SourceError when no image could be read.
    """
    import torchvision

    names = list(predictor.names or [])
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
    results, records, used = [], [], set()
    for index, (name, image) in enumerate(items):
        if isinstance(image, Path):
            image = read_image(image)
            if image is None:
                log.warning("skipped %s: not a readable image", name)
                continue
        detections = predict_image(predictor, image, imgsz, conf, iou, max_det)
        detections["names"] = [names[i] if 0 <= i < len(names) else str(i) for i in detections["labels"].tolist()]
        stem = unique_stem(Path(name).stem if name else f"image{index}", used)
        if name is not None:
            detections["file"] = name
        results.append(detections)
        records.append(detection_record(name or stem, image, detections, names))
        if out_dir is not None and save_images:
            torchvision.io.write_jpeg(draw(image, detections, names), str(out_dir / f"{stem}.jpg"), quality=90)
    if not results:
        raise SourceError(f"none of the {len(items)} files could be read as an image")
    if out_dir is not None:
        (out_dir / "detections.json").write_text(json.dumps(records, indent=1))
    return results, records
