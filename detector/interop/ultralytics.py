"""Import an ultralytics YOLOv8 detection checkpoint into our Detector, without ultralytics.

An ultralytics .pt is a dict: 'model' and/or 'ema' hold a pickled ``DetectionModel`` (fp16 once
saved by its trainer), next to 'train_args', 'date', 'version', ... The pickled model's
``model`` attribute is the layer list of yolov8.yaml (23 layers, index 0..22); its state names read
``model.<layer>.<submodule path>``. Our layout matches it layer for layer, so the import is a fixed
renaming of layer indices (``LAYER_PREFIXES``) plus the head's ``cv2``/``cv3`` -> box/cls branches.

Module paths differ across ultralytics versions (``ultralytics.nn.modules.Conv`` in 8.0,
``ultralytics.nn.modules.conv.Conv`` later): layers are recognised by class name only.
"""
from __future__ import annotations

from pathlib import Path

import torch

from detector.engine.checkpoint import CheckpointError
from detector.interop.unpickler import Record, pickled_globals, restricted_load
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
PROJECT_BUILDS = "this project builds YOLOv8 detection models (C2f/SPPF backbone, Detect head; scales n/s/m/l/x)"

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
    """True when the file's pickle names ultralytics classes (checked without unpickling)."""
    try:
        return any(name.startswith("ultralytics.") for name in pickled_globals(path))
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
        raise CheckpointError(f"{path} has no pickled model under 'ema' or 'model' (keys: {sorted(checkpoint)}); "
                              "it is not an ultralytics model checkpoint")
    check_architecture(checkpoint[key], path)
    return checkpoint[key], checkpoint, key


def check_architecture(model: Record, path: Path) -> None:
    """Refuse, before any mapping, every checkpoint that is not a YOLOv8 detection model."""
    if model.class_name in MODEL_KINDS:
        raise CheckpointError(f"{path} is {MODEL_KINDS[model.class_name]}; {PROJECT_BUILDS}")
    layers = model.children().get("model")
    names = tuple(layer.class_name for layer in (layers.children().values() if isinstance(layers, Record) else ()))
    for name in names:
        if name in LAYER_KINDS:
            raise CheckpointError(f"{path} is {LAYER_KINDS[name]}; {PROJECT_BUILDS}")
    if model.class_name not in ("DetectionModel", "YOLOv10DetectionModel") or names != YOLOV8_LAYERS:
        shown = ", ".join(names[:30]) or "none"
        raise CheckpointError(f"{path} is a {model.class_name} with layers [{shown}], not the YOLOv8 detection "
                              f"layout; {PROJECT_BUILDS}")
    head = layers.children()[str(HEAD_INDEX)]
    if "one2one_cv2" in head.children() and head.children()["one2one_cv2"] is not None:
        raise CheckpointError(f"{path} has an end-to-end (NMS-free) Detect head; {PROJECT_BUILDS}")


def infer_scale(model: Record, tensors: dict[str, torch.Tensor], path: Path) -> str:
    """The scale whose widths and depths the weights have, cross-checked against the yaml's multiples."""
    stem_width = tensors["model.0.conv.weight"].shape[0]
    depth = len(model.children()["model"].children()["2"].children()["m"].children())
    matches = [name for name, s in SCALES.items() if s.channels(64) == stem_width and s.repeats(3) == depth]
    yaml = model.get("yaml") or {}
    declared = yaml.get("scale")
    if not declared and "depth_multiple" in yaml and "width_multiple" in yaml:
        declared = next((name for name, s in SCALES.items() if (s.depth, s.width) ==
                         (float(yaml["depth_multiple"]), float(yaml["width_multiple"]))), None)
    if not matches:
        raise CheckpointError(f"{path} has a custom width/depth (stem width {stem_width}, {depth} bottleneck(s) in "
                              f"layer 2) that matches no scale; {PROJECT_BUILDS}")
    # Widths and depths pick n and s apart only through the width, m/l/x through both; l and x differ in width.
    scale = matches[0]
    if declared and declared in SCALES and declared != scale:
        raise CheckpointError(f"{path}: its yaml says scale {declared!r} but its weights have the widths of "
                              f"scale {scale!r}; the file is inconsistent")
    return scale


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


def class_names(model: Record, num_classes: int) -> list[str]:
    names = model.get("names")
    if isinstance(names, dict):
        names = [str(names.get(i, names.get(str(i), f"class{i}"))) for i in range(num_classes)]
    names = [str(n) for n in (names or [])]
    return names if len(names) == num_classes else [f"class{i}" for i in range(num_classes)]


def convert_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Our-named fp32 state dict of an ultralytics checkpoint, and what was read (model_args, names, ...)."""
    path = Path(path)
    model, checkpoint, key = read_ultralytics(path)
    tensors = model.tensors()
    head = model.children()["model"].children()[str(HEAD_INDEX)]
    num_classes, reg_max = int(head.get("nc")), int(head.get("reg_max", 16))
    dfl = tensors.get(f"model.{HEAD_INDEX}.dfl.conv.weight")
    if reg_max > 1 and (dfl is None or not torch.equal(dfl.float().flatten(), torch.arange(reg_max).float())):
        raise CheckpointError(f"{path}: the DFL projection is not the fixed 0..{reg_max - 1} ramp YOLOv8 uses")
    stride = head.get("stride")
    if isinstance(stride, torch.Tensor) and stride.numel() and stride.tolist() != [8.0, 16.0, 32.0]:
        raise CheckpointError(f"{path}: head strides {stride.tolist()} are not YOLOv8's 8/16/32")
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
                           "reg_max": reg_max},
            "names": class_names(model, num_classes), "weights": key, "unmapped": unmapped,
            "version": str(checkpoint.get("version", "?")), "date": str(checkpoint.get("date", "?")),
            "imgsz": args.get("imgsz") if isinstance(args.get("imgsz"), int) else 640}
    return state, info


def load_ultralytics(path: str | Path):
    """(Detector in eval mode with .names, report dict) from an ultralytics YOLOv8 detection .pt.

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
    model.load_state_dict(state)
    model.names = info["names"]
    model.category_ids = []
    report = {**info, "source": str(path), "mapped": len(state), "total": len(state) + len(info["unmapped"])}
    return model.eval(), report
