"""Checkpoints: written atomically, loaded with ``torch.load(weights_only=True)``.

A checkpoint holds only tensors and plain containers:
    format        "detector-checkpoint-v1"
    model         state dict of the weights to use for inference (the EMA weights)
    model_args    {"scale", "num_classes", "reg_max"}: enough to rebuild the Detector
    names         class names; category_ids: label -> category id of the data set's json
    config        the resolved run config as a plain dict
    epoch         the last completed epoch (0-based)
    metrics       validation metrics of that epoch
    train_state   (last.pt only) raw model, EMA, optimizer and scaler state, iteration, RNG states
"""
from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from pathlib import Path

import torch

FORMAT = "detector-checkpoint-v1"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, refused (foreign globals, another task) or not one we read."""


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` atomically: a crash leaves the old file or the new one, never half.

    Ctrl-C during the write lets the write finish and interrupts right after it (torch's zip writer turns a
    KeyboardInterrupt in mid-write into an unrelated RuntimeError, which would hide the interrupt).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with interrupts_deferred():
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save({"format": FORMAT, **state}, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


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
    """The checkpoint's dict, or a ``CheckpointError`` that says what is wrong with the file."""
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
    return state


def load_checkpoint(path: str | os.PathLike, map_location="cpu"):
    """(Detector in eval mode with the checkpoint's inference weights, config dict).

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
    model = build_model(**state["model_args"])
    model.load_state_dict(state["model"])
    model.names = list(state.get("names", []))
    model.category_ids = list(state.get("category_ids", []))
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
