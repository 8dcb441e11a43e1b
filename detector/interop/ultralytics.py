"""Import an ultralytics YOLOv8 or YOLO11 detection checkpoint into our DetectionModel, without ultralytics.

An ultralytics .pt is a dict: 'model' and/or 'ema' hold a pickled ``DetectionModel`` (fp16 once
saved by its trainer), next to 'train_args', 'date', 'version', ... The pickled model's
``model`` attribute is the layer list of its yaml (yolov8.yaml: 23 layers, 0..22; yolo11.yaml: 24,
0..23); its state names read ``model.<layer>.<submodule path>``. The layer classes, in order, name
the architecture of the registry (detector.models.registry) whose layout matches it layer for
layer, so the import is that architecture's fixed renaming of layer indices (``layer_prefixes``)
plus the head's ``cv2``/``cv3`` -> box/cls branches. Other families (YOLOv5u, v9, v10, YOLO12,
YOLO26, RT-DETR, ...) and other tasks are refused by name before any tensor is read.

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
from detector.models.registry import DEFAULT_ARCH, Architecture, architectures, get_architecture

HEAD_BRANCHES = {"cv2": "box_branches", "cv3": "cls_branches"}
MAX_CLS_WIDTH = 4096
PROJECT_BUILDS = ("this project builds YOLOv8 detection models (C2f/SPPF backbone, Detect head) and YOLO11 ones "
                  "(C3k2/SPPF/C2PSA backbone, Detect head), scales n/s/m/l/x")
# Ranges of the header values a model is built from.
MAX_CLASSES, MAX_REG_MAX, IMGSZ_RANGE, MAX_MULTIPLE = 10_000, 64, (32, 8192), 4.0

# What a checkpoint is, recognised from its model class or from a layer class it contains.
MODEL_KINDS = {
    "SegmentationModel": "a segmentation model (YOLOv8-seg style)", "PoseModel": "a pose-estimation model",
    "ClassificationModel": "a classification model", "OBBModel": "an oriented-box (OBB) model",
    "RTDETRDetectionModel": "an RT-DETR model", "WorldModel": "a YOLO-World model",
    "YOLOEModel": "a YOLOE model", "YOLOESegModel": "a YOLOE segmentation model",
}
# Checked in this order (YOLO12 and YOLOv10 files also hold C3k2 / C2f blocks), only for a layout no
# architecture of the registry has.
LAYER_KINDS = {
    "Segment": "a segmentation model (Segment head)", "Pose": "a pose-estimation model (Pose head)",
    "OBB": "an oriented-box model (OBB head)", "Classify": "a classification model",
    "RTDETRDecoder": "an RT-DETR model", "HGStem": "an RT-DETR model (HGNet backbone)",
    "WorldDetect": "a YOLO-World model", "A2C2f": "a YOLO12 model (A2C2f blocks)",
    "v10Detect": "a YOLOv10 model (v10Detect head)", "SCDown": "a YOLOv10 model (SCDown blocks)",
    "C2fCIB": "a YOLOv10 model (C2fCIB blocks)", "RepNCSPELAN4": "a YOLOv9 model (GELAN blocks)",
    "C3": "a YOLOv5u model (C3 blocks)",
    # YOLO11's blocks in a layout that is not yolo11.yaml's (a custom or newer yaml)
    "C3k2": "a YOLO11 model (C3k2 blocks) in a layout other than yolo11.yaml's",
    "C2PSA": "a YOLO11 model (C2PSA blocks) in a layout other than yolo11.yaml's",
}
# An end-to-end (one-to-one, NMS-free) Detect head on a registered layout: what that file is.
END_TO_END = {"yolo11": "a YOLO26 model (YOLO11's layer list with an end-to-end, NMS-free Detect head)"}


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
    """(the pickled model as a Record, the checkpoint dict, 'ema' or 'model'), refusing other tasks and
    families (``check_architecture`` names the architecture)."""
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


def check_architecture(model: Record, path: Path) -> Architecture:
    """The registry's architecture whose detection layout the pickled model has; every other checkpoint
    is refused, before any mapping, naming what it is where its classes tell."""
    if model.class_name in MODEL_KINDS:
        raise CheckpointError(f"{path} is {MODEL_KINDS[model.class_name]}; {PROJECT_BUILDS}")
    if not isinstance(model.get("_modules"), dict):
        raise CheckpointError(f"{path}: its pickled {model.class_name} has no submodules (_modules is "
                              f"{short(model.get('_modules'))}); the file is malformed")
    layers = model.children().get("model")
    layers = layers.children() if isinstance(layers, Record) else {}
    names = tuple(_class_name(layer) for layer in layers.values())
    arch = next((a for a in architectures().values() if a.layers == names), None)
    if arch is None:
        kind = next((kind for name, kind in LAYER_KINDS.items() if name in names), None)
        if kind is not None:
            raise CheckpointError(f"{path} is {kind}; {PROJECT_BUILDS}")
    if model.class_name not in ("DetectionModel", "YOLOv10DetectionModel") or arch is None:
        shown = ", ".join(names[:30]) or "none"
        raise CheckpointError(f"{path} is a {model.class_name} with layers [{shown}], not the YOLOv8 detection "
                              f"layout nor YOLO11's; {PROJECT_BUILDS}")
    if list(layers) != [str(i) for i in range(len(arch.layers))]:
        raise CheckpointError(f"{path}: its layers are named {short(list(layers))}, not 0..{arch.head_index}; "
                              "the file is malformed")
    if submodule(model, path, f"model.{arch.head_index}").children().get("one2one_cv2") is not None:
        if arch.name in END_TO_END:
            raise CheckpointError(f"{path} is {END_TO_END[arch.name]}; {PROJECT_BUILDS}")
        raise CheckpointError(f"{path} has an end-to-end (NMS-free) Detect head; {PROJECT_BUILDS}")
    return arch


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


def head_args(head: Record, tensors: dict[str, torch.Tensor], path: Path, head_index: int) -> tuple[int, int]:
    """(nc, reg_max) of the Detect head (layer ``head_index``), in range and agreeing with its tensors' shapes."""
    nc = checked_int(head.get("nc"), 1, MAX_CLASSES, path, f"the Detect head's nc (model.{head_index}.nc)")
    reg_max = checked_int(head.get("reg_max", 16), 1, MAX_REG_MAX, path,
                          f"the Detect head's reg_max (model.{head_index}.reg_max)")
    for branch, width in (("cv2", 4 * reg_max), ("cv3", nc)):  # the last 1x1 conv of each level: box, class
        for level in range(3):
            for name in (f"model.{head_index}.{branch}.{level}.2.{part}" for part in ("weight", "bias")):
                tensor = tensors.get(name)
                if tensor is None or tensor.dim() == 0 or tensor.shape[0] != width:
                    found = "missing" if tensor is None else f"of shape {tuple(tensor.shape)}"
                    raise CheckpointError(f"{path}: {name} is {found}, but nc={nc} and reg_max={reg_max} need "
                                          f"{width} output channels; the file is inconsistent")
    dfl = tensors.get(f"model.{head_index}.dfl.conv.weight")
    if reg_max > 1 and (dfl is None or dfl.shape != (1, reg_max, 1, 1)
                        or not torch.equal(dfl.float().flatten(), torch.arange(reg_max).float())):
        raise CheckpointError(f"{path}: the DFL projection is not the fixed 0..{reg_max - 1} ramp YOLOv8 uses")
    return nc, reg_max


def infer_scale(model: Record, tensors: dict[str, torch.Tensor], path: Path, arch: Architecture | None = None) -> str:
    """The scale of ``arch`` (None: YOLOv8) whose widths and depths the weights have, cross-checked against
    the yaml's scale or multiples."""
    arch = arch or get_architecture(DEFAULT_ARCH)
    stem = tensors.get("model.0.conv.weight")
    if stem is None or stem.dim() != 4:
        raise CheckpointError(f"{path}: the stem conv weight model.0.conv.weight is "
                              f"{'missing' if stem is None else f'of shape {tuple(stem.shape)}'}")
    stem_width = stem.shape[0]
    depth = len(submodule(model, path, "model.2.m").children())
    matches = [name for name, s in arch.scales.items()
               if s.channels(64) == stem_width and s.repeats(arch.probe_repeats) == depth]
    declared = declared_scale(model, path, arch)
    if not matches:
        raise CheckpointError(f"{path} has a custom width/depth (stem width {stem_width}, {depth} block(s) in "
                              f"layer 2) that matches no {arch.title} scale; {PROJECT_BUILDS}")
    # Stem width and layer 2's depth tell every scale apart (YOLOv8: m/l by both; YOLO11: m/l by the depth).
    scale = matches[0]
    if declared and declared != scale:
        raise CheckpointError(f"{path}: its yaml says scale {declared!r} but its weights have the widths of "
                              f"scale {scale!r}; the file is inconsistent")
    return scale


def declared_scale(model: Record, path: Path, arch: Architecture | None = None) -> str | None:
    """The scale the model's yaml declares (its 'scale', else its depth and width multiples), checked."""
    scales = (arch or get_architecture(DEFAULT_ARCH)).scales
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
    if declared is not None and declared != "" and not (type(declared) is str and declared in scales):
        raise CheckpointError(f"{path}: the yaml's scale is {short(declared)}, not one of {'/'.join(scales)}")
    if not declared and None not in multiples.values():
        declared = next((name for name, s in scales.items() if all(math.isclose(a, b) for a, b in
                         zip((s.depth, s.width), multiples.values()))), None)
    return declared or None


def to_our_name(name: str, arch: Architecture | None = None) -> str | None:
    """'model.4.m.0.cv1.conv.weight' -> 'backbone.stage2.1.m.0.cv1.conv.weight' in the layout of ``arch``
    (None: YOLOv8); None if it has no counterpart."""
    arch = arch or get_architecture(DEFAULT_ARCH)
    parts = name.split(".")
    if len(parts) < 2 or parts[0] != "model" or not parts[1].isdigit() or int(parts[1]) not in arch.layer_prefixes:
        return None
    index, rest = int(parts[1]), parts[2:]
    if index == arch.head_index:
        if not rest or rest[0] not in HEAD_BRANCHES:
            return None  # the DFL conv: a constant 0..reg_max-1 projection that our decode computes itself
        rest = [HEAD_BRANCHES[rest[0]], *rest[1:]]
    return ".".join([arch.layer_prefixes[index], *rest])


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
    arch = check_architecture(model, path)  # checked there already; here for its name
    try:
        tensors = model.tensors()
    except Malformed as error:
        raise CheckpointError(f"{path}: {error}; the file is malformed") from None
    head = submodule(model, path, f"model.{arch.head_index}")
    num_classes, reg_max = head_args(head, tensors, path, arch.head_index)
    stride = head.get("stride")
    if isinstance(stride, torch.Tensor) and stride.numel() and stride.tolist() != [8.0, 16.0, 32.0]:
        raise CheckpointError(f"{path}: head strides {short(stride.tolist())} are not {arch.title}'s 8/16/32")
    state, unmapped = {}, []
    for name, tensor in tensors.items():
        ours = to_our_name(name, arch)
        if ours is None:
            unmapped.append(name)
        else:
            state[ours] = tensor.float() if tensor.is_floating_point() else tensor
    args = checkpoint.get("train_args")
    args = args.state if isinstance(args, Record) else (args if isinstance(args, dict) else {})
    info = {"model_args": {"arch": arch.name, "scale": infer_scale(model, tensors, path, arch),
                           "num_classes": num_classes, "reg_max": reg_max,
                           "cls_width": class_branch_width(state, num_classes, path, arch.head_index)},
            "names": class_names(model, num_classes, path), "weights": key, "unmapped": unmapped,
            "version": _text(checkpoint.get("version", "?")), "date": _text(checkpoint.get("date", "?")),
            "imgsz": image_size(args, path)}
    return state, info


def class_branch_width(state: dict[str, torch.Tensor], num_classes: int, path: Path,
                       head_index: int) -> int | None:
    """The class branch's hidden width when it is not the default for ``num_classes`` (ultralytics 8.4
    keeps a checkpoint's width when it fine-tunes it to another class count), else None."""
    from detector.models.head import class_branch_width as hidden_width, default_cls_width

    widths = hidden_width(state)
    if widths is None:
        raise CheckpointError(f"{path}: the head has no class branch (model.{head_index}.cv3.0.0)")
    width, in_width = widths
    if not 1 <= width <= MAX_CLS_WIDTH:
        raise CheckpointError(f"{path}: class-branch width {width} is outside 1..{MAX_CLS_WIDTH}")
    return None if width == default_cls_width((in_width,), num_classes) else width


def _text(value) -> str:
    return value[:200] if type(value) is str else short(value, 200)


def load_ultralytics(path: str | Path):
    """(DetectionModel in eval mode with .names, report dict) from an ultralytics YOLOv8 or YOLO11 detection .pt.

    The report says which weights were used ('ema' preferred over 'model'), the scale, class count,
    how many tensors were mapped and which were not (the DFL constant, verified to be 0..reg_max-1).
    """
    from detector.models.detector import build_model

    path = Path(path)
    state, info = convert_state(path)
    model = build_model(**info["model_args"])
    title = f"{get_architecture(info['model_args']['arch']).title}{info['model_args']['scale']}"
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    wrong = [f"{k} {tuple(state[k].shape)} vs ours {tuple(own[k].shape)}" for k in state
             if k in own and state[k].shape != own[k].shape]
    if missing or extra or wrong:
        detail = "; ".join(x for x in (f"missing {missing[:5]}" if missing else "", f"extra {extra[:5]}" if extra
                                       else "", f"shape {wrong[:3]}" if wrong else "") if x)
        raise CheckpointError(f"{path}: the weights do not fit a {title} ({detail})")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:  # a dtype that cannot be copied into ours (complex, say)
        raise CheckpointError(f"{path}: the weights do not load into a {title} "
                              f"({str(error).splitlines()[0][:200]})") from None
    model.names = info["names"]
    model.category_ids = []
    report = {**info, "source": str(path), "mapped": len(state), "total": len(state) + len(info["unmapped"])}
    return model.eval(), report
