"""Start a run from pretrained weights (``pretrained=PATH``) and freeze leading layers (``freeze=K``).

PATH is one of our checkpoints or an ultralytics YOLOv8 detection .pt (read by detector.interop,
never by unpickling code). Every tensor whose name and shape match is loaded, a module (conv, BN)
whole or not at all. When the class count differs, the class branch keeps the fresh
initialisation the head gave it (the prior bias log(5 / C / (640 / s)^2) on its last conv): those
tensors are counted "re-initialised" (at scale n the branch is max(64, min(C, 100)) wide, so all of
it is new; from s up only its last conv). Anything else that does not fit is "skipped". A
checkpoint of another scale fails before training starts.

``freeze=K`` follows ultralytics' ``freeze``: its layers model.0 .. model.K-1 (yolov8.yaml order:
backbone 0-9, neck 10-21, head 22) stop training. Their counterparts here come from the same
index map the importer uses. ultralytics always freezes its DFL conv; ours has no such weights (the
decode computes the expectation over bins with a fixed ramp), so nothing needs freezing for it.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Iterable

from torch import nn

from detector.engine.checkpoint import CheckpointError, read_checkpoint
from detector.interop.ultralytics import LAYER_PREFIXES, convert_state, is_ultralytics_checkpoint

log = logging.getLogger("detector")
CLASS_BRANCH = "head.cls_branches."


def read_pretrained(path: str | os.PathLike) -> tuple[dict, dict]:
    """(our-named state dict, model_args) from our checkpoint or an ultralytics one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"pretrained={path}: file not found")
    if is_ultralytics_checkpoint(path):
        state, info = convert_state(path)
        return state, info["model_args"]
    checkpoint = read_checkpoint(path)
    return checkpoint["model"], dict(checkpoint["model_args"])


def load_pretrained(model: nn.Module, path: str | os.PathLike, log: Callable[[str], None] = log.info) -> dict:
    """Copy every matching tensor of the checkpoint at ``path`` into ``model``; returns the counts.

    Raises CheckpointError when the checkpoint's scale differs from the model's (naming the right
    one) or when nothing at all matches.
    """
    state, args = read_pretrained(path)
    scale = getattr(model, "scale", None)
    if scale not in (None, "custom") and args.get("scale") != scale:
        raise CheckpointError(f"pretrained={path}: checkpoint is scale {args.get('scale')}, the model is scale "
                              f"{scale}; use model={args.get('scale')}")
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
    not_in_file = [name for name in own if name not in state]
    counts = {"loaded": len(loaded), "reinitialised": len(reinitialised), "skipped": len(skipped),
              "not_in_checkpoint": len(not_in_file)}
    log(f"pretrained {path}: loaded {len(loaded)}, re-initialised {len(reinitialised)}, skipped {len(skipped)} "
        f"tensors" + (f" (checkpoint has {args.get('num_classes')} classes, the model {model.num_classes}: class "
                      "branch re-initialised with the prior bias)" if reinitialised else "")
        + (f"; {len(not_in_file)} model tensors not in the checkpoint keep their init" if not_in_file else ""))
    return counts


def freeze_prefixes(layers: int | Iterable[int]) -> list[str]:
    """Our module prefixes of ultralytics' layers ``range(layers)`` (or the listed indices)."""
    indices = range(layers) if isinstance(layers, int) else list(layers)
    if isinstance(layers, int) and layers < 0 or any(int(i) < 0 for i in indices):
        raise ValueError(f"freeze={layers}: layer indices must be >= 0")
    return [LAYER_PREFIXES[i] + "." for i in indices if i in LAYER_PREFIXES]


def freeze_layers(model: nn.Module, layers: int | Iterable[int]) -> int:
    """Set requires_grad=False on the parameters of ultralytics' first ``layers`` layers; returns how many.

    BatchNorm statistics of frozen layers still update in train mode, as in ultralytics.
    """
    prefixes = freeze_prefixes(layers)
    count = 0
    for name, param in model.named_parameters():
        if any(name.startswith(p) for p in prefixes):
            param.requires_grad_(False)
            count += 1
    return count
