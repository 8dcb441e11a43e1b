"""Checkpoints: written atomically, loaded with ``torch.load(weights_only=True)``.

A checkpoint holds only tensors and plain containers:
    format        "detector-checkpoint-v1"
    model         state dict of the weights to use for inference (the EMA weights)
    model_args    {"scale", "num_classes", "reg_max", "cls_width"}: enough to rebuild the DetectionModel
    names         class names; category_ids: label -> category id of the data set's json
    config        the resolved run config as a plain dict
    epoch         the last completed epoch (0-based)
    metrics       validation metrics of that epoch
    train_state   (last.pt only) raw model, EMA, optimizer and scaler state, iteration, RNG states
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

import torch

FORMAT = "detector-checkpoint-v1"


TMP_SUFFIX = ".tmp"
MAX_CLASSES, MAX_REG_MAX = 10_000, 64


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, refused (foreign globals, another task) or not one we read."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, read-only folder); the previous file is intact."""


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` atomically: a crash leaves the old file or the new one, never half.

    Ctrl-C during the write lets the write finish and interrupts right after it (torch's zip writer turns a
    KeyboardInterrupt in mid-write into an unrelated RuntimeError, which would hide the interrupt). A write that
    fails (disk full, read-only folder) removes its temporary file, keeps the previous ``path`` and raises
    ``CheckpointWriteError`` naming the folder.
    """
    path = Path(path)
    with interrupts_deferred():
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
            with os.fdopen(fd, "wb") as handle:
                torch.save({"format": FORMAT, **state}, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except (OSError, RuntimeError) as error:  # torch's zip writer reports a failed write as a RuntimeError
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            raise CheckpointWriteError(_write_failure(path, error)) from None
        except BaseException:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            raise


def _write_failure(path: Path, error: BaseException) -> str:
    cause = error
    while not isinstance(cause, OSError) and cause.__context__ is not None:  # torch wraps the OSError
        cause = cause.__context__
    reason = os.strerror(cause.errno) if isinstance(cause, OSError) and cause.errno else \
        f"{type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}"
    try:
        free = shutil.disk_usage(path.parent).free
        space = f"; {free / 2**20:.0f} MiB free there"
    except OSError:
        space = ""
    kept = f"the previous {path.name} is kept" if path.is_file() else f"no {path.name} was written"
    return (f"cannot write checkpoint {path.name} in {path.parent} ({reason}{space}); {kept}. Free disk space or "
            "make the folder writable (out_dir=... or hydra.run.dir=... choose another), then resume")


def remove_orphaned_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed write left in ``folder`` (``.<name>.<random>.tmp``); returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for tmp in folder.glob(f".*.pt.*{TMP_SUFFIX}"):
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


@contextlib.contextmanager
def interrupts_deferred():
    """Hold SIGINT back for the block, then raise ``KeyboardInterrupt`` if one came in meanwhile.

    Only the main thread can set signal handlers; elsewhere (and under a custom SIGINT handler) nothing changes.
    """
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    received = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if received:
        raise KeyboardInterrupt


def read_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """The checkpoint's dict, or a ``CheckpointError`` that says what is wrong with the file.

    Besides ``torch.load(weights_only=True)`` (tensors and plain containers only): no tensor may view more
    elements than its storage holds (a stride-0 view is a few bytes on disk and any size once copied), and the
    saved config must name only the project's own components (detector.engine.saved_config).
    """
    from detector.engine.saved_config import checked_config

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated zip, pickle of objects, not a torch file at all
        raise CheckpointError(
            f"cannot read checkpoint {path} ({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
            "the file is corrupted or truncated, or was not written by this project"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} checkpoint (written by another tool?)")
    _check_tensors(state, path, "")
    if "config" in state:
        checked_config(state["config"], f"checkpoint {path}")
    return state


def _check_tensors(node, path: Path, where: str) -> None:
    """Refuse tensors that view more elements than their storage holds (expanded, overlapping)."""
    if isinstance(node, torch.Tensor):
        if node.numel() * node.element_size() > node.untyped_storage().nbytes():
            raise CheckpointError(f"{path}: tensor {where or '<root>'} of shape {tuple(node.shape)} views more "
                                  "elements than its storage holds (a stride-0 or overlapping view); refusing it")
    elif isinstance(node, dict):
        for key, value in node.items():
            _check_tensors(value, path, f"{where}.{key}" if where else str(key))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            _check_tensors(value, path, f"{where}[{i}]")


def checked_model_args(state: dict, path: str | os.PathLike) -> dict:
    """``state["model_args"]`` once it is in range and agrees with the weights' shapes, before any model is built
    (a header that says 10**9 classes would otherwise allocate gigabytes). ``arch`` names an architecture of
    detector.models.registry; a checkpoint without it (written before YOLO11 was added) is a YOLOv8 one."""
    from detector.models.head import class_branch_width
    from detector.models.registry import DEFAULT_ARCH, architectures

    args, weights = state.get("model_args"), state.get("model")
    if not isinstance(args, dict) or not isinstance(weights, dict):
        raise CheckpointError(f"{path}: no model_args / model weights mapping; it is not a complete checkpoint")
    arch, scale = args.get("arch", DEFAULT_ARCH), args.get("scale")
    num_classes, reg_max = args.get("num_classes"), args.get("reg_max", 16)
    known = architectures()
    if not isinstance(arch, str) or arch not in known:
        raise CheckpointError(f"{path}: model_args.arch is {arch!r}; valid: {', '.join(known)}")
    if not isinstance(scale, str) or scale not in known[arch].scales:
        raise CheckpointError(f"{path}: model_args.scale is {scale!r}; valid for {arch}: "
                              f"{', '.join(known[arch].scales)}")
    for key, value, top in (("num_classes", num_classes, MAX_CLASSES), ("reg_max", reg_max, MAX_REG_MAX)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
            raise CheckpointError(f"{path}: model_args.{key} is {value!r}; expected an integer in [1, {top}]")
    for branch, expected, key in (("cls_branches", num_classes, "num_classes"),
                                  ("box_branches", 4 * reg_max, "reg_max")):
        weight = weights.get(f"head.{branch}.0.2.weight")
        if not isinstance(weight, torch.Tensor) or weight.ndim != 4 or weight.shape[0] != expected:
            shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else None
            raise CheckpointError(f"{path}: model_args.{key}={args.get(key, reg_max)} does not fit the weights "
                                  f"(head.{branch}.0.2.weight has shape {shape}, expected {expected} outputs)")
    cls_width = args.get("cls_width")
    hidden = class_branch_width(weights)
    if cls_width is not None and (isinstance(cls_width, bool) or not isinstance(cls_width, int) or
                                  hidden is None or hidden[0] != cls_width):
        raise CheckpointError(f"{path}: model_args.cls_width={cls_width!r} does not fit the weights "
                              "(the class branch's first hidden conv, head.cls_branches.0.0)")
    return {"arch": arch, "scale": scale, "num_classes": num_classes, "reg_max": reg_max, "cls_width": cls_width}


def load_state(model: torch.nn.Module, weights: dict, path: str | os.PathLike, what: str = "weights") -> None:
    """``model.load_state_dict(weights)``, a CheckpointError naming the file and the first mismatches otherwise."""
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError, AttributeError) as error:
        detail = " ".join(str(error).split())[:400]
        raise CheckpointError(f"{path}: its {what} do not fit the model its config describes ({detail})") from None


def plain_list(state: dict, key: str, kind: type, path) -> list:
    """``state[key]`` as a list of ``kind`` (names: str, category ids: int), or a CheckpointError."""
    value = state.get(key) or []
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
        raise CheckpointError(f"{path}: {key} is not a list of {kind.__name__}")
    return list(value)


def load_checkpoint(path: str | os.PathLike, map_location="cpu"):
    """(DetectionModel in eval mode with the checkpoint's inference weights, config dict).

    An ultralytics YOLOv8 detection .pt is recognised and imported (detector.interop, no code from
    the file runs); its config dict holds ``imgsz`` and ``source: "ultralytics"``.
    """
    from detector.interop.ultralytics import is_ultralytics_checkpoint, load_ultralytics
    from detector.models.detector import build_model

    if Path(path).is_file() and is_ultralytics_checkpoint(path):
        model, report = load_ultralytics(path)
        return model.to(map_location), {"imgsz": report["imgsz"], "source": "ultralytics",
                                        "model": dict(report["model_args"])}
    state = read_checkpoint(path, map_location)
    model = build_model(**checked_model_args(state, path))
    load_state(model, state["model"], path)
    model.names, model.category_ids = plain_list(state, "names", str, path), plain_list(state, "category_ids", int, path)
    return model.eval(), state.get("config", {})


def capture_rng_state() -> dict:
    import random

    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    import random

    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    """random.setstate wants the nested tuples back that a round trip may turn into lists."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
