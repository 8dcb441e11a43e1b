"""Import an ultralytics YOLOv8 detection checkpoint into our DetectionModel, without ultralytics.

An ultralytics .pt is a dict: 'model' and/or 'ema' hold a pickled ``DetectionModel`` (fp16 once
saved by its trainer), next to 'train_args', 'date', 'version', ... The pickled model's
``model`` attribute is the layer list of yolov8.yaml (23 layers, index 0..22); its state names read
``model.<layer>.<submodule path>``. Our layout matches it layer for layer, so the import is a fixed
renaming of layer indices (``LAYER_PREFIXES``) plus the head's ``cv2``/``cv3`` -> box/cls branches.

Module paths differ across ultralytics versions (``ultralytics.nn.modules.Conv`` in 8.0,
``ultralytics.nn.modules.conv.Conv`` later): layers are recognised by class name only.

Everything read from the file is checked for type and range, and the head's values against its
tensors, before a model is built from them: a malformed file gives a CheckpointError naming the
file and the value, never a traceback or a model sized by a lying header.
"""
from __future__ import annotations

import math
from itertools import islice
from pathlib import Path

import torch

from detector.engine.checkpoint import CheckpointError
from detector.interop.limits import CheckpointTooLarge, short
from detector.interop.unpickler import Malformed, Record, pickled_globals, restricted_load
from detector.models.backbone import SCALES

# The YOLOv8 detection layout by class name (yolov8.yaml, any scale).
YOLOV8_LAYERS = ("Conv", "Conv", "C2f", "Conv", "C2f", "Conv", "C2f", "Conv", "C2f", "SPPF", "Upsample", "Concat",
                 "C2f", "Upsample", "Concat", "C2f", "Conv", "Concat", "C2f", "Conv", "Concat", "C2f", "Detect")
HEAD_INDEX = 22
# ultralytics layer index -> our module path (layers without weights: Upsample/Concat 10, 11, 13, 14, 17, 20).
LAYER_PREFIXES = {
    0: "backbone.stem", 1: "backbone.stage1.0", 2: "backbone.stage1.1", 3: "backbone.stage2.0",
    4: "backbone.stage2.1", 5: "backbone.stage3.0", 6: "backbone.stage3.1", 7: "backbone.stage4.0",
    8: "backbone.stage4.1", 9: "backbone.stage4.2", 12: "neck.top_down4", 15: "neck.top_down3",
    16: "neck.down3", 18: "neck.bottom_up4", 19: "neck.down4", 21: "neck.bottom_up5",
    HEAD_INDEX: "head",
}
HEAD_BRANCHES = {"cv2": "box_branches", "cv3": "cls_branches"}
MAX_CLS_WIDTH = 4096
PROJECT_BUILDS = "this project builds YOLOv8 detection models (C2f/SPPF backbone, Detect head; scales n/s/m/l/x)"
# Ranges of the header values a model is built from.
MAX_CLASSES, MAX_REG_MAX, IMGSZ_RANGE, MAX_MULTIPLE = 10_000, 64, (32, 8192), 4.0

# What a checkpoint is, recognised from its model class or from a layer class it contains.
MODEL_KINDS = {
    "SegmentationModel": "a segmentation model (YOLOv8-seg style)", "PoseModel": "a pose-estimation model",
    "ClassificationModel": "a classification model", "OBBModel": "an oriented-box (OBB) model",
    "RTDETRDetectionModel": "an RT-DETR model", "WorldModel": "a YOLO-World model",
    "YOLOEModel": "a YOLOE model", "YOLOESegModel": "a YOLOE segmentation model",
}
LAYER_KINDS = {
    "C3k2": "a YOLO11 model (C3k2 blocks)", "C2PSA": "a YOLO11 model (C2PSA blocks)",
    "A2C2f": "a YOLO12 model (A2C2f blocks)", "C3": "a YOLOv5u model (C3 blocks)",
    "RepNCSPELAN4": "a YOLOv9 model (GELAN blocks)", "v10Detect": "a YOLOv10 model (v10Detect head)",
    "SCDown": "a YOLOv10 model (SCDown blocks)", "Segment": "a segmentation model (Segment head)",
    "Pose": "a pose-estimation model (Pose head)", "OBB": "an oriented-box model (OBB head)",
    "Classify": "a classification model", "RTDETRDecoder": "an RT-DETR model",
    "WorldDetect": "a YOLO-World model", "HGStem": "an RT-DETR model (HGNet backbone)",
}


def is_ultralytics_checkpoint(path: str | Path) -> bool:
    """True when the file's pickle names ultralytics classes (checked without unpickling); raises
    CheckpointTooLarge for a file whose pickle record declares more than the file holds."""
    try:
        return any(name.startswith("ultralytics.") for name in pickled_globals(path))
    except CheckpointTooLarge:
        raise  # a file declaring more than it holds: refused here, not handed to another reader
    except CheckpointError:
        return False


def read_ultralytics(path: str | Path) -> tuple[Record, dict, str]:
    """(the pickled model as a Record, the checkpoint dict, 'ema' or 'model'), refusing other tasks."""
    path = Path(path)
    checkpoint = restricted_load(path)
    if isinstance(checkpoint, Record):  # torch.save(model) rather than a trainer dict
        checkpoint = {"model": checkpoint}
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} holds a {type(checkpoint).__name__}, not an ultralytics checkpoint dict")
    key = next((k for k in ("ema", "model") if isinstance(checkpoint.get(k), Record)), None)
    if key is None:
        keys = ", ".join(sorted(short(k, 40) for k in islice(checkpoint, 20)))
        raise CheckpointError(f"{path} has no pickled model under 'ema' or 'model' (keys: {keys}); "
                              "it is not an ultralytics model checkpoint")
    check_architecture(checkpoint[key], path)
    return checkpoint[key], checkpoint, key


def check_architecture(model: Record, path: Path) -> None:
    """Refuse, before any mapping, every checkpoint that is not a YOLOv8 detection model."""
    if model.class_name in MODEL_KINDS:
        raise CheckpointError(f"{path} is {MODEL_KINDS[model.class_name]}; {PROJECT_BUILDS}")
    if not isinstance(model.get("_modules"), dict):
        raise CheckpointError(f"{path}: its pickled {model.class_name} has no submodules (_modules is "
                              f"{short(model.get('_modules'))}); the file is malformed")
    layers = model.children().get("model")
    layers = layers.children() if isinstance(layers, Record) else {}
    names = tuple(_class_name(layer) for layer in layers.values())
    for name in names:
        if name in LAYER_KINDS:
            raise CheckpointError(f"{path} is {LAYER_KINDS[name]}; {PROJECT_BUILDS}")
    if model.class_name not in ("DetectionModel", "YOLOv10DetectionModel") or names != YOLOV8_LAYERS:
        shown = ", ".join(names[:30]) or "none"
        raise CheckpointError(f"{path} is a {model.class_name} with layers [{shown}], not the YOLOv8 detection "
                              f"layout; {PROJECT_BUILDS}")
    if list(layers) != [str(i) for i in range(len(YOLOV8_LAYERS))]:
        raise CheckpointError(f"{path}: its layers are named {short(list(layers))}, not 0..{HEAD_INDEX}; "
                              "the file is malformed")
    if submodule(model, path, f"model.{HEAD_INDEX}").children().get("one2one_cv2") is not None:
        raise CheckpointError(f"{path} has an end-to-end (NMS-free) Detect head; {PROJECT_BUILDS}")


def _class_name(layer) -> str:
    return layer.class_name if isinstance(layer, Record) else type(layer).__name__


def submodule(model: Record, path: Path, dotted: str) -> Record:
    """``model.<dotted>`` as a Record, or a CheckpointError naming what is missing or of the wrong type."""
    node = model
    for key in dotted.split("."):
        node = node.children().get(key)
        if not isinstance(node, Record):
            raise CheckpointError(f"{path}: the pickled model has no module {dotted} ({key!r} is {short(node)}); "
                                  "the file is malformed")
    return node


def checked_int(value, low: int, high: int, path: Path, what: str) -> int:
    if type(value) is not int or not low <= value <= high:
        raise CheckpointError(f"{path}: {what} is {short(value)}, not an integer in {low}..{high}")
    return value


def head_args(head: Record, tensors: dict[str, torch.Tensor], path: Path) -> tuple[int, int]:
    """(nc, reg_max) of the Detect head, in range and agreeing with its tensors' shapes."""
    nc = checked_int(head.get("nc"), 1, MAX_CLASSES, path, f"the Detect head's nc (model.{HEAD_INDEX}.nc)")
    reg_max = checked_int(head.get("reg_max", 16), 1, MAX_REG_MAX, path,
                          f"the Detect head's reg_max (model.{HEAD_INDEX}.reg_max)")
    for branch, width in (("cv2", 4 * reg_max), ("cv3", nc)):  # the last 1x1 conv of each level: box, class
        for level in range(3):
            for name in (f"model.{HEAD_INDEX}.{branch}.{level}.2.{part}" for part in ("weight", "bias")):
                tensor = tensors.get(name)
                if tensor is None or tensor.dim() == 0 or tensor.shape[0] != width:
                    found = "missing" if tensor is None else f"of shape {tuple(tensor.shape)}"
                    raise CheckpointError(f"{path}: {name} is {found}, but nc={nc} and reg_max={reg_max} need "
                                          f"{width} output channels; the file is inconsistent")
    dfl = tensors.get(f"model.{HEAD_INDEX}.dfl.conv.weight")
    if reg_max > 1 and (dfl is None or dfl.shape != (1, reg_max, 1, 1)
                        or not torch.equal(dfl.float().flatten(), torch.arange(reg_max).float())):
        raise CheckpointError(f"{path}: the DFL projection is not the fixed 0..{reg_max - 1} ramp YOLOv8 uses")
    return nc, reg_max


def infer_scale(model: Record, tensors: dict[str, torch.Tensor], path: Path) -> str:
    """The scale whose widths and depths the weights have, cross-checked against the yaml's multiples."""
    stem = tensors.get("model.0.conv.weight")
    if stem is None or stem.dim() != 4:
        raise CheckpointError(f"{path}: the stem conv weight model.0.conv.weight is "
                              f"{'missing' if stem is None else f'of shape {tuple(stem.shape)}'}")
    stem_width = stem.shape[0]
    depth = len(submodule(model, path, "model.2.m").children())
    matches = [name for name, s in SCALES.items() if s.channels(64) == stem_width and s.repeats(3) == depth]
    declared = declared_scale(model, path)
    if not matches:
        raise CheckpointError(f"{path} has a custom width/depth (stem width {stem_width}, {depth} bottleneck(s) in "
                              f"layer 2) that matches no scale; {PROJECT_BUILDS}")
    # Widths and depths pick n and s apart only through the width, m/l/x through both; l and x differ in width.
    scale = matches[0]
    if declared and declared != scale:
        raise CheckpointError(f"{path}: its yaml says scale {declared!r} but its weights have the widths of "
                              f"scale {scale!r}; the file is inconsistent")
    return scale


def declared_scale(model: Record, path: Path) -> str | None:
    """The scale the model's yaml declares (its 'scale', else its depth and width multiples), checked."""
    yaml = model.get("yaml")
    if yaml is None:
        return None
    if not isinstance(yaml, dict):
        raise CheckpointError(f"{path}: the model's yaml is {short(yaml)}, not a dict")
    multiples = {}
    for key in ("depth_multiple", "width_multiple"):
        value = yaml.get(key)
        if value is not None and not (type(value) in (int, float) and 0 < value <= MAX_MULTIPLE):
            raise CheckpointError(f"{path}: the yaml's {key} is {short(value)}, not a number in (0, {MAX_MULTIPLE}]")
        multiples[key] = value
    declared = yaml.get("scale")
    if declared is not None and declared != "" and not (type(declared) is str and declared in SCALES):
        raise CheckpointError(f"{path}: the yaml's scale is {short(declared)}, not one of {'/'.join(SCALES)}")
    if not declared and None not in multiples.values():
        declared = next((name for name, s in SCALES.items() if all(math.isclose(a, b) for a, b in
                         zip((s.depth, s.width), multiples.values()))), None)
    return declared or None


def to_our_name(name: str) -> str | None:
    """'model.4.m.0.cv1.conv.weight' -> 'backbone.stage2.1.m.0.cv1.conv.weight'; None if it has no counterpart."""
    parts = name.split(".")
    if parts[0] != "model" or not parts[1].isdigit() or int(parts[1]) not in LAYER_PREFIXES:
        return None
    index, rest = int(parts[1]), parts[2:]
    if index == HEAD_INDEX:
        if not rest or rest[0] not in HEAD_BRANCHES:
            return None  # the DFL conv: a constant 0..reg_max-1 projection that our decode computes itself
        rest = [HEAD_BRANCHES[rest[0]], *rest[1:]]
    return ".".join([LAYER_PREFIXES[index], *rest])


def class_names(model: Record, num_classes: int, path: Path) -> list[str]:
    names = model.get("names")
    if isinstance(names, dict):
        names = [names.get(i, names.get(str(i), f"class{i}")) for i in range(num_classes)]
    names = list(names) if isinstance(names, (list, tuple)) else []
    for i, name in enumerate(names):
        if type(name) not in (str, int, float):
            raise CheckpointError(f"{path}: class name {i} is {short(name)}, not a string")
    names = [str(n) if type(n) is not int else short(n) for n in names]
    return names if len(names) == num_classes else [f"class{i}" for i in range(num_classes)]


def image_size(args: dict, path: Path) -> int:
    """train_args' imgsz (an int, or [h, w]: the larger), 640 when absent."""
    imgsz = args.get("imgsz", 640)
    sizes = list(imgsz) if type(imgsz) in (list, tuple) and 1 <= len(imgsz) <= 2 else [imgsz]
    low, high = IMGSZ_RANGE
    if not all(type(n) is int and low <= n <= high for n in sizes):
        raise CheckpointError(f"{path}: train_args imgsz is {short(imgsz)}, not an integer in {low}..{high}")
    return max(sizes)


def convert_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Our-named fp32 state dict of an ultralytics checkpoint, and what was read (model_args, names, ...)."""
    path = Path(path)
    model, checkpoint, key = read_ultralytics(path)
    try:
        tensors = model.tensors()
    except Malformed as error:
        raise CheckpointError(f"{path}: {error}; the file is malformed") from None
    num_classes, reg_max = head_args(submodule(model, path, f"model.{HEAD_INDEX}"), tensors, path)
    stride = submodule(model, path, f"model.{HEAD_INDEX}").get("stride")
    if isinstance(stride, torch.Tensor) and stride.numel() and stride.tolist() != [8.0, 16.0, 32.0]:
        raise CheckpointError(f"{path}: head strides {short(stride.tolist())} are not YOLOv8's 8/16/32")
    state, unmapped = {}, []
    for name, tensor in tensors.items():
        ours = to_our_name(name)
        if ours is None:
            unmapped.append(name)
        else:
            state[ours] = tensor.float() if tensor.is_floating_point() else tensor
    args = checkpoint.get("train_args")
    args = args.state if isinstance(args, Record) else (args if isinstance(args, dict) else {})
    info = {"model_args": {"scale": infer_scale(model, tensors, path), "num_classes": num_classes,
                           "reg_max": reg_max, "cls_width": class_branch_width(state, num_classes, path)},
            "names": class_names(model, num_classes, path), "weights": key, "unmapped": unmapped,
            "version": _text(checkpoint.get("version", "?")), "date": _text(checkpoint.get("date", "?")),
            "imgsz": image_size(args, path)}
    return state, info


def class_branch_width(state: dict[str, torch.Tensor], num_classes: int, path: Path) -> int | None:
    """The class branch's hidden width when it is not the default for ``num_classes`` (ultralytics 8.4
    keeps a checkpoint's width when it fine-tunes it to another class count), else None."""
    from detector.models.head import default_cls_width

    hidden = state.get("head.cls_branches.0.0.conv.weight")
    if hidden is None or hidden.ndim != 4:
        raise CheckpointError(f"{path}: the head has no class branch (model.{HEAD_INDEX}.cv3.0.0)")
    width = int(hidden.shape[0])
    if not 1 <= width <= MAX_CLS_WIDTH:
        raise CheckpointError(f"{path}: class-branch width {width} is outside 1..{MAX_CLS_WIDTH}")
    return None if width == default_cls_width((int(hidden.shape[1]),), num_classes) else width


def _text(value) -> str:
    return value[:200] if type(value) is str else short(value, 200)


def load_ultralytics(path: str | Path):
    """(DetectionModel in eval mode with .names, report dict) from an ultralytics YOLOv8 detection .pt.

    The report says which weights were used ('ema' preferred over 'model'), the scale, class count,
    how many tensors were mapped and which were not (the DFL constant, verified to be 0..reg_max-1).
    """
    from detector.models.detector import build_model

    path = Path(path)
    state, info = convert_state(path)
    model = build_model(**info["model_args"])
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    wrong = [f"{k} {tuple(state[k].shape)} vs ours {tuple(own[k].shape)}" for k in state
             if k in own and state[k].shape != own[k].shape]
    if missing or extra or wrong:
        detail = "; ".join(x for x in (f"missing {missing[:5]}" if missing else "", f"extra {extra[:5]}" if extra
                                       else "", f"shape {wrong[:3]}" if wrong else "") if x)
        raise CheckpointError(f"{path}: the weights do not fit a YOLOv8{info['model_args']['scale']} "
                              f"({detail})")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:  # a dtype that cannot be copied into ours (complex, say)
        raise CheckpointError(f"{path}: the weights do not load into a YOLOv8{info['model_args']['scale']} "
                              f"({str(error).splitlines()[0][:200]})") from None
    model.names = info["names"]
    model.category_ids = []
    report = {**info, "source": str(path), "mapped": len(state), "total": len(state) + len(info["unmapped"])}
    return model.eval(), report
