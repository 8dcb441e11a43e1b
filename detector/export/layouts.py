"""The two ONNX output layouts a detector file can follow, chosen with ``layout=`` on export.

    layout=ours          input images; output predictions [B, A, 4 + C]: xyxy px, then per-class
                         sigmoid scores (with nms=true: boxes, scores, labels, num_dets)
    layout=ultralytics   input images; output output0 [B, 4 + C, A]: cx, cy, w, h px, then per-class
                         sigmoid scores: ultralytics' YOLOv8 ONNX layout, with ultralytics' metadata,
                         for the tools that take a YOLOv8 file (ultralytics' AutoBackend, OpenCV DNN
                         samples, DeepStream/Triton parsers, ...). With nms=true: output0 [B, K, 6]
                         rows x1, y1, x2, y2, score, class (zero rows as padding), ultralytics' own
                         ``nms=True`` (end2end) layout, marked ``end2end`` in the metadata.

Ultralytics' metadata (what its exporter writes and ``AutoBackend`` reads, as strings parsed with
``ast.literal_eval``): description, author, date, version, docs, stride, task='detect', head,
batch, imgsz '[H, W]', names '{0: "person", ...}', args (batch, dynamic, nms, ...), channels and
end2end. Our own keys (``detector.export.onnx``'s: format, names, category_ids, ...) go beside them
as one JSON string under the key ``detector``: kept apart because ``AutoBackend`` sets every key as
an attribute of its backend, and ours share names (format, dynamic, nms) with its own attributes.

This module also reads files in ultralytics' layout, ours or written by ultralytics (detection
task only), and converts their outputs to our layout's names, so that everything downstream
(``detector predict``, the parity check) handles one layout. Reading never runs code from the
file: the metadata strings are parsed with ``ast.literal_eval`` (Python literals only).

Index convention: B images, A anchor points, C classes, K = max_det rows per image.
"""
from __future__ import annotations

import ast
import json
from datetime import datetime

import numpy as np
import torch
from torch import Tensor, nn

from detector.boxes import distribution_to_distance

LAYOUTS = ("ours", "ultralytics")
ULTRALYTICS_OUTPUTS = ("output0",)
END2END_COLUMNS = 6  # x1, y1, x2, y2, score, class
OURS_KEY = "detector"  # the metadata key holding our own metadata (JSON) in a layout=ultralytics file


def check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout} is not a layout; choose {' or '.join(LAYOUTS)}")


class UltralyticsRaw(nn.Module):
    """DecodedDetector -> output0 [B, 4 + C, A] cx, cy, w, h px, then class scores (ultralytics' YOLOv8
    layout). Decoded channel-first from the head's maps, as ultralytics' own graph is: no transpose of
    the [B, A, 4 + C] predictions and no xyxy round trip, which cost OpenVINO 2-5% of a YOLO11n call."""

    def __init__(self, decoded: nn.Module):
        super().__init__()
        self.decoded = decoded

    def forward(self, images: Tensor) -> Tensor:
        features = self.decoded.features(images)
        anchor_points, strides = self.decoded.anchors(features)  # [A, 2] px, [A]
        maps = self.decoded.model.head.branch_maps(features)
        box = torch.cat([box.flatten(2) for box, _ in maps], 2)  # [B, 4R, A]
        logits = torch.cat([cls.flatten(2) for _, cls in maps], 2)  # [B, C, A]
        distance = distribution_to_distance(box.view(box.shape[0], 4, -1, box.shape[2]), dim=2)  # [B, 4, A]
        near, far = distance[:, :2] * strides, distance[:, 2:] * strides  # (l, t), (r, b) px
        centre = anchor_points.T + (far - near) / 2  # [B, 2, A]
        return torch.cat((centre, near + far, logits.sigmoid()), 1)  # [B, 4 + C, A]


class UltralyticsEnd2End(nn.Module):
    """Our NMS graph (boxes, scores, labels, num_dets) -> output0 [B, K, 6] x1, y1, x2, y2, score,
    class; padding rows all zero, as ultralytics' ``nms=True`` export pads them."""

    def __init__(self, with_nms: nn.Module):
        super().__init__()
        self.with_nms = with_nms

    def forward(self, images: Tensor) -> Tensor:
        boxes, scores, labels, _ = self.with_nms(images)  # [B, K, 4], [B, K], [B, K] (-1 padding), [B]
        return torch.cat((boxes, scores[..., None], labels.clamp(min=0).to(boxes.dtype)[..., None]), -1)  # [B, K, 6]


def wrap(module: nn.Module, layout: str, nms: bool) -> nn.Module:
    """The module to trace: ours as it is, or its ultralytics-layout form (end2end with NMS, else raw)."""
    if layout == "ours":
        return module
    return UltralyticsEnd2End(module) if nms else UltralyticsRaw(module)


def dynamic_axes(nms: bool) -> dict:
    """ultralytics' free axes (its exporter's names) of a layout=ultralytics file."""
    return {"images": {0: "batch", 2: "height", 3: "width"},
            "output0": {0: "batch"} if nms else {0: "batch", 2: "anchors"}}


def output_shapes(ours: dict[str, list], nms: bool) -> dict[str, list]:
    """Our layout's declared output shapes -> output0's: [B, K, 6] with NMS, else [B, 4 + C, A]."""
    if nms:
        batch, max_det, _ = ours["boxes"]
        return {"output0": [batch, max_det, END2END_COLUMNS]}
    batch, anchors, channels = ours["predictions"]
    return {"output0": [batch, channels, anchors]}


def ultralytics_metadata(ours: dict[str, str], *, model_name: str, names: list[str], num_classes: int,
                         imgsz: int, batch: int, dynamic: bool, nms: bool, opset: int, stride: int,
                         conf: float, iou: float, max_det: int) -> dict[str, str]:
    """Ultralytics' metadata keys (its exporter's, as strings) and ours under ``detector``."""
    from detector import __version__

    names = list(names) or [str(i) for i in range(num_classes)]
    args = {"batch": batch, "dynamic": dynamic, "nms": nms, "half": False, "int8": False, "opset": opset}
    if nms:
        args.update({"conf": conf, "iou": iou, "max_det": max_det})
    return {
        "description": f"detector {model_name} detection model, exported in ultralytics' YOLOv8 ONNX layout",
        "author": "detector",
        "date": datetime.now().astimezone().isoformat(),
        "version": __version__,
        "docs": "docs/deployment.md of the detector project",
        "stride": str(stride),
        "task": "detect",
        "head": "Detect",
        "batch": str(batch),
        "imgsz": str([imgsz, imgsz]),
        "names": str(dict(enumerate(names))),
        "args": str(args),
        "channels": "3",
        "end2end": str(bool(nms)),
        OURS_KEY: json.dumps(ours),
    }


# ----------------------------------------------------------------------------------------- reading
def _literal(props: dict[str, str], key: str, default=None):
    """A metadata string as a Python literal (ultralytics writes str(value)); ``default`` if absent or not one."""
    if key not in props:
        return default
    try:
        return ast.literal_eval(props[key])
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return default


def read_ultralytics_metadata(props: dict[str, str]) -> dict[str, str]:
    """The metadata of a file in ultralytics' layout as our keys (strings, for ``decode_metadata``):
    ours as written beside ultralytics' keys, else translated from ultralytics' (a file ultralytics
    wrote): names, imgsz (the height of [H, W]), stride, nms (end2end) and, where it says, dynamic."""
    if OURS_KEY in props:
        try:
            ours = json.loads(props[OURS_KEY])
            if isinstance(ours, dict):
                return {str(k): str(v) for k, v in ours.items()}
        except json.JSONDecodeError:
            pass
    out = {"format": "ultralytics-onnx"}
    names = _literal(props, "names")
    if isinstance(names, dict) and all(isinstance(k, int) for k in names):
        names = [str(names[k]) for k in sorted(names)]
    if isinstance(names, (list, tuple)):
        out["names"] = json.dumps([str(n) for n in names])
        out["num_classes"] = str(len(names))
    imgsz = _literal(props, "imgsz")
    if isinstance(imgsz, int) or (isinstance(imgsz, (list, tuple)) and imgsz and isinstance(imgsz[0], int)):
        out["imgsz"] = str(imgsz if isinstance(imgsz, int) else imgsz[0])
    if str(props.get("stride", "")).isdigit():
        out["stride"] = props["stride"]
    args = _literal(props, "args", {})
    args = args if isinstance(args, dict) else {}
    out["nms"] = str(bool(_literal(props, "end2end", False) or args.get("nms"))).lower()
    if "dynamic" in args:
        out["dynamic"] = str(bool(args["dynamic"])).lower()
    for key in ("conf", "iou", "max_det"):
        if isinstance(args.get(key), (int, float)) and not isinstance(args.get(key), bool):
            out[key] = str(args[key])
    return out


def ultralytics_problem(props: dict[str, str], layout: str, shape: list, num_classes: int | None) -> str | None:
    """Why a file with output ``output0`` of ``shape`` (ints, names for free axes) cannot be read
    as an ultralytics detection file, or None when it can."""
    task = props.get("task")
    if task is not None and task != "detect":
        return f"its task is {task!r} (only 'detect' files are read)"
    if len(shape) != 3:
        return f"output0 has shape {list(shape)}, not [B, 4 + C, A] (or [B, K, 6] end2end)"
    if layout == "nms":
        return None if shape[2] in (END2END_COLUMNS, "6") else \
            f"it is marked end2end (NMS in the graph) but output0 has shape {list(shape)}, not [B, K, 6]"
    if isinstance(shape[1], int) and num_classes is not None and shape[1] != 4 + num_classes:
        return f"output0 has {shape[1]} rows per anchor but its metadata names {num_classes} classes (4 + C expected)"
    if isinstance(shape[1], int) and shape[1] <= 4:
        return f"output0 has shape {list(shape)}: no class rows after the 4 box rows"
    return None


def from_ultralytics(output0: np.ndarray, end2end: bool) -> dict[str, np.ndarray]:
    """An ultralytics-layout output as our layout's outputs.

    raw: output0 [B, 4 + C, A] cxcywh -> {"predictions": [B, A, 4 + C] xyxy}.
    end2end: output0 [B, K, 6] -> {"boxes" [B, K, 4], "scores" [B, K], "labels" [B, K] int64,
    "num_dets" [B]}: rows sorted by score, those of score 0 (padding) last with label -1.
    """
    if not end2end:
        predictions = np.ascontiguousarray(output0.transpose(0, 2, 1))  # [B, A, 4 + C]
        centre, size = predictions[..., :2].copy(), predictions[..., 2:4].copy()  # [B, A, 2] each
        predictions[..., :2] = centre - size / 2
        predictions[..., 2:4] = centre + size / 2
        return {"predictions": predictions}
    order = np.argsort(-output0[..., 4], axis=1, kind="stable")  # [B, K]
    rows = np.take_along_axis(output0, order[..., None], axis=1)  # [B, K, 6]
    scores = rows[..., 4]  # [B, K]
    valid = scores > 0  # [B, K]
    labels = np.where(valid, rows[..., 5].round(), -1).astype(np.int64)  # [B, K]
    return {"boxes": np.ascontiguousarray(rows[..., :4]), "scores": np.ascontiguousarray(scores),
            "labels": labels, "num_dets": valid.sum(1).astype(np.int64)}
