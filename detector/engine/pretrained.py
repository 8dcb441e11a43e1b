"""Start a run from pretrained weights (``pretrained=PATH``) and freeze leading layers (``freeze=K``).

PATH is one of our checkpoints or an ultralytics YOLOv8 or YOLO11 detection .pt (read by
detector.interop, never by unpickling code). Every tensor whose name and shape match is loaded, a
module (conv, BN) whole or not at all. When the class count differs, as in ultralytics 8.4:

- the model is built with the checkpoint's class-branch width (``source_cls_width``; at scale n the
  default width max(64, min(C, 100)) depends on C), so the branch's hidden layers transfer and only
  its last conv is new, with the prior bias log(5 / C / (640 / s)^2): those tensors are counted
  "re-initialised";
- rows of that last conv whose class name is also a class of the checkpoint (case and surrounding
  spaces ignored) are copied from it ("remapped"): a COCO model fine-tuned on "person" keeps its
  person classifier.

Anything else that does not fit is "skipped". A checkpoint of another architecture or scale fails
before training starts.

``freeze=K`` follows ultralytics' ``freeze``: its layers model.0 .. model.K-1 stop training, in the
layer order of the model's architecture (yolov8.yaml: backbone 0-9, neck 10-21, head 22, so
``freeze=10`` is the backbone; yolo11.yaml: backbone 0-10, neck 11-22, head 23, ``freeze=11``).
Their counterparts here come from the same index map the importer uses (the registry's). ultralytics
always freezes its DFL conv; ours has no such weights (the decode computes the expectation over bins
with a fixed ramp), so nothing needs freezing for it.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from detector.engine.checkpoint import CheckpointError, checked_model_args, plain_list, read_checkpoint
from detector.interop.ultralytics import convert_state, is_ultralytics_checkpoint
from detector.models.registry import DEFAULT_ARCH, get_architecture, resolve

log = logging.getLogger("detector")
CLASS_BRANCH = "head.cls_branches."


def read_pretrained(path: str | os.PathLike) -> tuple[dict, dict]:
    """(our-named state dict, model_args with ``names``) from our checkpoint or an ultralytics one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"pretrained={path}: file not found")
    if is_ultralytics_checkpoint(path):
        state, info = convert_state(path)
        return state, {**info["model_args"], "names": list(info["names"])}
    checkpoint = read_checkpoint(path)
    return checkpoint["model"], {**checked_model_args(checkpoint, path),
                                 "names": plain_list(checkpoint, "names", str, path)}


def source_cls_width(source: tuple[dict, dict], scale: str, num_classes: int, arch: str | None = None) -> int | None:
    """The checkpoint's class-branch hidden width when it differs from the default width a model of
    ``num_classes`` would get at the same architecture and scale (so that the hidden layers can transfer),
    else None. ``scale``: a model name ("yolo11n") or a scale of ``arch`` (None: YOLOv8)."""
    from detector.models.head import class_branch_width, default_cls_width

    state, args = source
    try:
        architecture, scale = resolve(scale, arch)
    except ValueError:
        return None
    hidden = class_branch_width(state)
    if (args.get("arch", DEFAULT_ARCH), args.get("scale")) != (architecture.name, scale) or hidden is None:
        return None
    width, in_width = hidden
    return width if width != default_cls_width((in_width,), num_classes) else None


def load_pretrained(model: nn.Module, path: str | os.PathLike, log: Callable[[str], None] = log.info,
                    names: list[str] | None = None, source: tuple[dict, dict] | None = None) -> dict:
    """Copy every matching tensor of the checkpoint at ``path`` into ``model``; returns the counts.

    ``names``: the model's class names, for the remap by name; ``source``: ``read_pretrained(path)``
    when already read. Raises CheckpointError when the checkpoint's architecture or scale differs from
    the model's (naming the right model) or when nothing at all matches.
    """
    state, args = source or read_pretrained(path)
    scale, arch = getattr(model, "scale", None), getattr(model, "arch", DEFAULT_ARCH)
    their_arch, their_scale = args.get("arch", DEFAULT_ARCH), args.get("scale")
    if scale not in (None, "custom") and (their_arch, their_scale) != (arch, scale):
        option = their_scale if their_arch == DEFAULT_ARCH else f"{their_arch}{their_scale}"  # configs/model
        what = (f"scale {their_scale}, the model is scale {scale}" if their_arch == arch else
                f"{their_arch}{their_scale}, the model is {arch}{scale}")
        raise CheckpointError(f"pretrained={path}: checkpoint is {what}; use model={option}")
    own = model.state_dict()
    # A module (conv, BN) loads whole or not at all: fresh BN weights beside stale statistics mean nothing.
    misfit = {name.rpartition(".")[0] for name, tensor in state.items()
              if name not in own or own[name].shape != tensor.shape}
    loaded, reinitialised, skipped = {}, [], []
    for name, tensor in state.items():
        if name.rpartition(".")[0] not in misfit:
            loaded[name] = tensor
        elif name.startswith(CLASS_BRANCH) and name in own:
            reinitialised.append(name)  # class count differs: keep the head's fresh init and prior bias
        else:
            skipped.append(name)
    if not loaded:
        raise CheckpointError(f"pretrained={path}: no tensor matches the model by name and shape")
    model.load_state_dict(loaded, strict=False)
    remapped = remap_classes_by_name(model, state, args.get("names") or [], names or []) if reinitialised else []
    not_in_file = [name for name in own if name not in state]
    counts = {"loaded": len(loaded), "reinitialised": len(reinitialised), "skipped": len(skipped),
              "not_in_checkpoint": len(not_in_file)}
    log(f"pretrained {path}: loaded {len(loaded)}, re-initialised {len(reinitialised)}, skipped {len(skipped)} "
        f"tensors" + (f" (checkpoint has {args.get('num_classes')} classes, the model {model.num_classes}: class "
                      "branch re-initialised with the prior bias)" if reinitialised else "")
        + (f"; classifier rows copied by name for {len(remapped)} of {model.num_classes} classes: "
           f"{', '.join(remapped[:10])}" if remapped else "")
        + (f"; {len(not_in_file)} model tensors not in the checkpoint keep their init" if not_in_file else ""))
    return {**counts, "remapped": len(remapped)} if remapped else counts


def remap_classes_by_name(model: nn.Module, state: dict, source_names: list[str], names: list[str]) -> list[str]:
    """Copy the checkpoint's last class-conv rows (weight, bias) into the model's rows of the same class name;
    returns the names copied. Levels whose conv input widths differ are left as initialised."""
    def key(name) -> str | None:  # placeholder names (class0, 0, ...) say nothing about a class
        name = str(name).strip().lower()
        return None if re.fullmatch(r"(class)?\d+", name) else name

    lookup = {key(n): i for i, n in enumerate(source_names) if key(n)}
    pairs = [(i, lookup[key(n)]) for i, n in enumerate(names) if key(n) in lookup]
    if not pairs or [i for i, _ in pairs] == [j for _, j in pairs] == list(range(len(source_names))):
        return []
    own, copied = model.state_dict(), False
    with torch.no_grad():
        for level in range(len(model.head.cls_branches)):
            weight, bias = f"{CLASS_BRANCH}{level}.2.weight", f"{CLASS_BRANCH}{level}.2.bias"
            if weight not in state or state[weight].shape[1:] != own[weight].shape[1:]:
                continue
            for ours, theirs in pairs:
                own[weight][ours].copy_(state[weight][theirs])
                own[bias][ours].copy_(state[bias][theirs])
            copied = True
    return [str(names[i]) for i, _ in pairs] if copied else []


def freeze_prefixes(layers: int | Iterable[int], arch: str | None = None) -> list[str]:
    """Our module prefixes of ultralytics' layers ``range(layers)`` (or the listed indices) of ``arch``
    (None: YOLOv8)."""
    prefixes = get_architecture(arch).layer_prefixes
    indices = range(layers) if isinstance(layers, int) else list(layers)
    if isinstance(layers, int) and layers < 0 or any(int(i) < 0 for i in indices):
        raise ValueError(f"freeze={layers}: layer indices must be >= 0")
    return [prefixes[i] + "." for i in indices if i in prefixes]


def freeze_layers(model: nn.Module, layers: int | Iterable[int]) -> int:
    """Set requires_grad=False on the parameters of ultralytics' first ``layers`` layers, in the layer order
    of the model's architecture (``model.arch``); returns how many.

    BatchNorm statistics of frozen layers still update in train mode, as in ultralytics.
    """
    prefixes = freeze_prefixes(layers, getattr(model, "arch", DEFAULT_ARCH))
    count = 0
    for name, param in model.named_parameters():
        if any(name.startswith(p) for p in prefixes):
            param.requires_grad_(False)
            count += 1
    return count
