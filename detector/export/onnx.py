"""ONNX export of a DetectionModel, with the box decoding (and optionally NMS) inside the graph.

Graph contract (DESIGN.md):
    input   images       [B, 3, H, W] float32 in [0, 1] (letterboxed RGB; H, W multiples of 32)
    output  predictions  [B, A, 4 + C] xyxy px in the input image, then per-class sigmoid scores
with ``nms=True`` the graph goes on through ONNX NonMaxSuppression and outputs instead
    boxes [B, K, 4] float32 xyxy px, scores [B, K] float32, labels [B, K] int64, num_dets [B] int64
with K = max_det; rows beyond num_dets are padding (box 0, score 0, label -1); rows are sorted by
score. NMS is class-aware and multi-label (a box may be kept once per class whose score passes
``conf``), the same rule as ``detector.models.postprocess``; conf, iou and max_det are baked in.
(One difference: postprocess ranks at most 30,000 (anchor, class) pairs before NMS, the graph
all of them; they differ only when more than that pass ``conf``, i.e. with conf near 0.)

Index convention: B images, A anchor points (all levels), C classes, S boxes NMS selected over
the batch, K = max_det output rows per image.

Exporter. ``torch.onnx.export(dynamo=False)``, the TorchScript-tracing exporter, for two reasons:
the torch.export-based exporter needs ``onnxscript``, which is not a dependency of this project,
and the tracer gives a documented, stable hook for an op torch has no equivalent of: a
``torch.autograd.Function`` with a ``symbolic`` static method, here emitting NonMaxSuppression.
Everything after NMS (gathering, per-image top-K, padding) is ordinary torch code that the tracer
records, so the whole graph is one export with no hand-edited ONNX. Anchors are recomputed from
the feature maps' traced shapes (``Shape`` ops in the graph), so one file serves every batch and
image size when ``dynamic=True``. Files are written atomically (temporary file, then rename).

Metadata (``metadata_props``, strings): format, names and category_ids (JSON lists), imgsz,
stride, strides, num_classes, dynamic, nms and, with NMS, conf, iou and max_det.

``layout="ultralytics"`` writes the same graphs in ultralytics' YOLOv8 layout instead (output
``output0``, ultralytics' metadata, ours beside it): see ``detector.export.layouts``. Reading
(``OnnxDetector``) takes both, and files ultralytics wrote, and hands out our layout's outputs.
"""
from __future__ import annotations

import copy
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from detector.boxes import make_anchors
from detector.export import layouts
from detector.models.detector import MAX_STRIDE, DetectionModel
from detector.timing import median_ms

FORMAT = "detector-onnx-v1"
DEFAULT_OPSET = 17
OPSET_RANGE = (11, 20)  # Range and dynamic shapes need 11; 20 is the TorchScript exporter's highest
RAW_OUTPUTS = ("predictions",)
NMS_OUTPUTS = ("boxes", "scores", "labels", "num_dets")


class OnnxLayoutError(ValueError):
    """An ONNX file whose inputs/outputs are not one of the two layouts this project writes."""


class DecodedDetector(nn.Module):
    """DetectionModel -> predictions [B, A, 4 + C], with anchors built from the traced feature shapes.

    The head builds its anchors from Python ints (constants once traced); here they are rebuilt
    from ``feature.shape`` so that a dynamic-size export stays correct at every size. The head's
    own constant anchors are left unused and dropped from the graph.
    """

    def __init__(self, model: DetectionModel):
        super().__init__()
        self.model = model

    def features(self, images: Tensor) -> list[Tensor]:
        return self.model.neck(self.model.backbone(images))  # 3 maps, strides 8, 16, 32

    def anchors(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """anchor points [A, 2] px and strides [A] of the traced feature shapes (not constants)."""
        sizes = [(f.shape[2], f.shape[3]) for f in features]
        return make_anchors(sizes, list(self.model.strides), device=features[0].device, dtype=features[0].dtype)

    def forward(self, images: Tensor) -> Tensor:
        features = self.features(images)
        anchor_points, strides = self.anchors(features)
        out = self.model.head(features)
        return DetectionModel.decode(out._replace(anchor_points=anchor_points, strides=strides))  # [B, A, 4 + C]


class _NonMaxSuppression(torch.autograd.Function):
    """ONNX NonMaxSuppression: boxes [B, A, 4] xyxy, scores [B, C, A] -> selected [S, 3] int64
    rows (image, class, anchor). Per image and class: keep score > conf, suppress IoU > iou, at
    most ``max_per_class`` boxes. ``forward`` is the same computation in torch, used while tracing."""

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, max_per_class: int, iou: float, conf: float) -> Tensor:
        selected = []
        for image in range(boxes.shape[0]):
            label, anchor = (scores[image] > conf).nonzero(as_tuple=True)  # [N], [N]
            keep = batched_nms(boxes[image, anchor], scores[image, label, anchor], label, iou)  # by score
            label, anchor = label[keep], anchor[keep]
            # rank of each kept box within its class (keep is score-ordered), to cap every class
            by_class = torch.sort(label, stable=True)  # groups classes, keeps score order inside
            first = torch.searchsorted(by_class.values, by_class.values)  # [N] start of each one's class
            rank = torch.empty_like(label)
            rank[by_class.indices] = torch.arange(len(label), device=label.device) - first
            cap = rank < max_per_class
            label, anchor = label[cap], anchor[cap]
            selected.append(torch.stack((torch.full_like(label, image), label, anchor), 1))
        return torch.cat(selected).long() if selected else boxes.new_zeros((0, 3), dtype=torch.long)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class: int, iou: float, conf: float):
        return g.op(
            "NonMaxSuppression", boxes, scores,
            g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.long)),
            g.op("Constant", value_t=torch.tensor([iou], dtype=torch.float32)),
            g.op("Constant", value_t=torch.tensor([conf], dtype=torch.float32)),
            center_point_box_i=0,  # boxes are (x1, y1, x2, y2)
        )


class DetectorWithNMS(nn.Module):
    """predictions [B, A, 4 + C] -> boxes [B, K, 4], scores [B, K], labels [B, K], num_dets [B]."""

    def __init__(self, decoded: DecodedDetector, conf: float = 0.25, iou: float = 0.7, max_det: int = 100):
        super().__init__()
        self.decoded, self.conf, self.iou, self.max_det = decoded, float(conf), float(iou), int(max_det)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        predictions = self.decoded(images)
        boxes = predictions[..., :4]  # [B, A, 4] px
        scores = predictions[..., 4:].transpose(1, 2).contiguous()  # [B, C, A], the layout NMS wants
        batch, num_classes, num_anchors = scores.shape
        selected = _NonMaxSuppression.apply(boxes, scores, self.max_det, self.iou, self.conf)  # [S, 3]
        image, label, anchor = selected[:, 0], selected[:, 1], selected[:, 2]  # [S] each
        score = scores.flatten()[(image * num_classes + label) * num_anchors + anchor]  # [S]
        box = boxes.flatten(0, 1)[image * num_anchors + anchor]  # [S, 4]

        k = self.max_det
        # One row per image holding the scores of its own selections (-1 elsewhere), padded with K
        # columns of -1 so that top-K always has K candidates; padding columns index zero boxes.
        own = image[None, :] == torch.arange(batch, device=image.device)[:, None]  # [B, S]
        ranked = torch.where(own, score[None, :], torch.full_like(score[None, :], -1.0))  # [B, S]
        padding = torch.full_like(scores[:, 0, :1], -1.0).expand(-1, k)  # [B, K] (S may be 0)
        ranked = torch.cat((ranked, padding), 1)  # [B, S + K]
        top_score, top_index = ranked.topk(k, dim=1)  # [B, K], [B, K] sorted by score
        valid = top_score >= 0  # [B, K]
        box = torch.cat((box, box.new_zeros(k, 4)))  # [S + K, 4]
        label = torch.cat((label, label.new_full((k,), -1)))  # [S + K]
        out_boxes = torch.where(valid[..., None], box[top_index], torch.zeros_like(box[top_index]))  # [B, K, 4]
        out_labels = torch.where(valid, label[top_index], torch.full_like(top_index, -1))  # [B, K]
        out_scores = top_score.clamp(min=0)  # [B, K]
        return out_boxes, out_scores, out_labels, valid.long().sum(1)


def export_onnx(model: DetectionModel, path: str | os.PathLike, imgsz: int = 640, dynamic: bool = False,
                nms: bool = False, conf: float = 0.25, iou: float = 0.7, max_det: int = 100,
                opset: int = DEFAULT_OPSET, batch: int = 1, layout: str = "ours") -> Path:
    """Export ``model`` (a copy is fused and put in eval mode; the argument is left untouched).

    imgsz: the traced square size (the fixed input size unless ``dynamic``); a multiple of 32.
    dynamic: batch, height and width are free axes. nms: see the module docstring.
    layout: "ours" or "ultralytics" (ultralytics' YOLOv8 output layout and metadata; see
    ``detector.export.layouts``). Returns the path of the written file, with the metadata above.
    """
    if imgsz % MAX_STRIDE:
        raise ValueError(f"imgsz={imgsz} must be a multiple of {MAX_STRIDE}")
    if not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        raise ValueError(f"opset={opset} is not supported; choose {OPSET_RANGE[0]} to {OPSET_RANGE[1]}")
    if nms and not (0 <= conf < 1 and 0 < iou <= 1 and max_det >= 1):
        raise ValueError(f"NMS options out of range: conf={conf} (0 to 1), iou={iou} (0 to 1], "
                         f"max_det={max_det} (>= 1)")
    layouts.check_layout(layout)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    decoded = DecodedDetector(copy.deepcopy(model).cpu().float().eval().fuse())
    module = DetectorWithNMS(decoded, conf=conf, iou=iou, max_det=max_det) if nms else decoded
    module = layouts.wrap(module, layout, nms)
    outputs = (NMS_OUTPUTS if nms else RAW_OUTPUTS) if layout == "ours" else layouts.ULTRALYTICS_OUTPUTS
    dynamic_axes = None
    if dynamic and layout != "ours":
        dynamic_axes = layouts.dynamic_axes(nms)
    elif dynamic:
        dynamic_axes = {"images": {0: "batch", 2: "height", 3: "width"}}
        if nms:
            dynamic_axes.update({"boxes": {0: "batch"}, "scores": {0: "batch"}, "labels": {0: "batch"},
                                 "num_dets": {0: "batch"}})
        else:
            dynamic_axes["predictions"] = {0: "batch", 1: "anchors"}
    example = torch.rand(batch, 3, imgsz, imgsz)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # the tracer warns about the head's int() anchor sizes (unused here, see DecodedDetector)
            # and about the legacy exporter itself; the dynamic-shape tests guard what they cover
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", message=".*torch.jit.script. is deprecated.*")
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
            torch.onnx.export(module, (example,), tmp, dynamo=False, input_names=["images"],
                              output_names=list(outputs), dynamic_axes=dynamic_axes, opset_version=opset,
                              do_constant_folding=True)
        metadata = {
            "format": FORMAT, "names": json.dumps(list(getattr(model, "names", []))),
            "category_ids": json.dumps(list(getattr(model, "category_ids", []))),
            "num_classes": str(model.num_classes), "imgsz": str(imgsz), "stride": str(MAX_STRIDE),
            "strides": json.dumps(list(model.strides)), "dynamic": str(dynamic).lower(),
            "nms": str(nms).lower(),
        }
        if nms:
            metadata.update({"conf": str(conf), "iou": str(iou), "max_det": str(max_det)})
        shapes = _output_shapes(model, imgsz, batch, dynamic, nms, max_det)
        if layout != "ours":
            metadata = layouts.ultralytics_metadata(
                metadata, model_name=str(getattr(model, "name", "")), names=list(getattr(model, "names", [])),
                num_classes=model.num_classes, imgsz=imgsz, batch=batch, dynamic=dynamic, nms=nms, opset=opset,
                stride=MAX_STRIDE, conf=conf, iou=iou, max_det=max_det)
            shapes = layouts.output_shapes(shapes, nms)
        _finish_proto(tmp, metadata, shapes)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _finish_proto(path: str | os.PathLike, metadata: dict[str, str], output_shapes: dict[str, list]) -> None:
    """Store the metadata and write the output shapes (ints, or names for free axes): the tracer
    leaves some of them as generated names such as 'Concatpredictions_dim_2'."""
    import onnx

    proto = onnx.load(str(path))
    for output in proto.graph.output:
        shape = output.type.tensor_type.shape
        del shape.dim[:]
        for size in output_shapes[output.name]:
            dim = shape.dim.add()
            if isinstance(size, int):
                dim.dim_value = size
            else:
                dim.dim_param = size
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def _output_shapes(model: DetectionModel, imgsz: int, batch: int, dynamic: bool, nms: bool, max_det: int) -> dict:
    b = "batch" if dynamic else batch
    if nms:
        return {"boxes": [b, max_det, 4], "scores": [b, max_det], "labels": [b, max_det], "num_dets": [b]}
    anchors = "anchors" if dynamic else sum((imgsz // s) ** 2 for s in model.strides)
    return {"predictions": [b, anchors, 4 + model.num_classes]}


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata written by ``export_onnx``, decoded: lists, ints, floats and bools."""
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return decode_metadata(props)


def decode_metadata(props: dict[str, str]) -> dict:
    out = dict(props)
    for key in ("names", "category_ids", "strides"):
        if key in out:
            out[key] = json.loads(out[key])
    for key in ("num_classes", "imgsz", "stride", "max_det"):
        if key in out:
            out[key] = int(out[key])
    for key in ("conf", "iou"):
        if key in out:
            out[key] = float(out[key])
    for key in ("dynamic", "nms"):
        if key in out:
            out[key] = out[key] == "true"
    return out


def check_onnx(path: str | os.PathLike) -> None:
    """onnx.checker with full shape inference; raises onnx.checker.ValidationError."""
    import onnx

    onnx.checker.check_model(str(path), full_check=True)


class OnnxDetector:
    """An onnxruntime session over one of our two layouts, in our output convention or in
    ultralytics' (``layout=ultralytics``, or a detection file ultralytics exported).

    ``layout`` is "raw" (output predictions) or "nms"; ``convention`` "ours" or "ultralytics";
    ``metadata`` as ``read_metadata`` (translated from ultralytics' keys for its files). Calls
    return our layout's outputs whatever the convention. A file whose inputs/outputs are none of
    these raises ``OnnxLayoutError`` naming what it has instead.
    """

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.path = Path(path)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
        except Exception as error:  # not a model file, truncated, or an op onnxruntime lacks
            raise OnnxLayoutError(f"onnxruntime cannot load {path}: {str(error).splitlines()[0][:300]}") from None
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = tuple(o.name for o in self.session.get_outputs())
        if inputs != ["images"] or outputs not in (RAW_OUTPUTS, NMS_OUTPUTS, layouts.ULTRALYTICS_OUTPUTS):
            raise OnnxLayoutError(
                f"{path} has inputs {inputs} and outputs {list(outputs)}; expected input ['images'] and outputs "
                f"{list(RAW_OUTPUTS)} or {list(NMS_OUTPUTS)} (a file written by tools/export.py), or "
                f"{list(layouts.ULTRALYTICS_OUTPUTS)} (ultralytics' YOLOv8 detection layout)")
        props = self.session.get_modelmeta().custom_metadata_map
        self.convention = "ultralytics" if outputs == layouts.ULTRALYTICS_OUTPUTS else "ours"
        if self.convention == "ultralytics":
            self.metadata = decode_metadata(layouts.read_ultralytics_metadata(props))
            self.layout = "nms" if self.metadata.get("nms") else "raw"
            problem = layouts.ultralytics_problem(props, self.layout, self.session.get_outputs()[0].shape,
                                                  self.metadata.get("num_classes"))
            if problem:
                raise OnnxLayoutError(f"{path} is not a detection file in ultralytics' layout: {problem}")
        else:
            self.metadata = decode_metadata(props)
            self.layout = "nms" if outputs == NMS_OUTPUTS else "raw"
        shape = self.session.get_inputs()[0].shape  # [B, 3, H, W], str for free axes
        self.fixed_size = tuple(shape[2:]) if all(isinstance(s, int) for s in shape[2:]) else None
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """images float32 [B, 3, H, W] in [0, 1] -> {output name: array}."""
        names = [o.name for o in self.session.get_outputs()]
        outputs = dict(zip(names, self.session.run(names, {"images": np.ascontiguousarray(images, np.float32)})))
        if self.convention == "ultralytics":
            return layouts.from_ultralytics(outputs["output0"], end2end=self.layout == "nms")
        return outputs


def ort_latency_ms(detector: OnnxDetector, images: np.ndarray, runs: int = 20, warmup: int = 3) -> float:
    """Median wall time of one session.run in milliseconds."""
    return median_ms(lambda: detector(images), runs=runs, warmup=warmup)


def nms_outputs_to_detections(outputs: dict[str, np.ndarray]) -> list[dict]:
    """The NMS layout -> torchvision dicts per image {"boxes" [N, 4], "scores" [N], "labels" [N]}."""
    results = []
    for boxes, scores, labels, count in zip(outputs["boxes"], outputs["scores"], outputs["labels"],
                                            outputs["num_dets"]):
        n = int(count)
        results.append({"boxes": torch.from_numpy(boxes[:n]), "scores": torch.from_numpy(scores[:n]),
                        "labels": torch.from_numpy(labels[:n])})
    return results


def detection_difference(expected: list[dict], actual: list[dict]) -> float:
    """Max abs difference of boxes (px) and scores between two detection lists of the same images.

    Each expected detection is matched to the closest actual one of the same label (so two
    runtimes that order ties differently still match); ``inf`` when a count differs or a label
    has no counterpart.
    """
    worst = 0.0
    for a, b in zip(expected, actual, strict=True):
        if len(a["scores"]) != len(b["scores"]):
            return float("inf")
        if len(a["scores"]) == 0:
            continue
        rows_a = torch.cat((a["boxes"].float().cpu(), a["scores"].float().cpu()[:, None]), 1)  # [N, 5]
        rows_b = torch.cat((b["boxes"].float().cpu(), b["scores"].float().cpu()[:, None]), 1)  # [N, 5]
        distance = (rows_a[:, None] - rows_b[None]).abs().amax(-1)  # [N, N]
        same_label = a["labels"].long().cpu()[:, None] == b["labels"].long().cpu()[None]  # [N, N]
        distance = torch.where(same_label, distance, torch.full_like(distance, float("inf")))
        worst = max(worst, distance.amin(1).max().item(), distance.amin(0).max().item())
    return worst


def max_difference(model: DetectionModel, detector: OnnxDetector, images: np.ndarray) -> float:
    """Largest abs difference between onnxruntime and the PyTorch model (as given, in eval mode) on
    ``images`` float32 [B, 3, H, W]: of ``predictions`` (px and scores) for the raw layout; of the
    detections against ``model.predict`` at the exported conf/iou/max_det for the NMS layout
    (``inf`` when they do not keep the same boxes)."""
    outputs = detector(images)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            batch = torch.from_numpy(images).to(next(model.parameters()).device)
            if detector.layout == "raw":
                reference = model(batch).cpu()  # [B, A, 4 + C]
                return (torch.from_numpy(outputs["predictions"]) - reference).abs().max().item()
            meta = detector.metadata
            reference = model.predict(batch, conf=meta["conf"], iou=meta["iou"], max_det=meta["max_det"])
            return detection_difference(reference, nms_outputs_to_detections(outputs))
    finally:
        model.train(was_training)


def describe(detector: OnnxDetector) -> list[str]:
    """One line per input and output: name, element type and shape (free axes by name)."""
    lines = []
    for kind, values in (("input", detector.session.get_inputs()), ("output", detector.session.get_outputs())):
        for value in values:
            lines.append(f"{kind:6s} {value.name:12s} {value.type:16s} {list(value.shape)}")
    return lines
