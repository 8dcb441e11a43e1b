"""Checkpoint writes that fail (disk full, read-only folder) and writes a kill left half-done: the previous
file is kept, the error names the folder, and the next run cleans the temporary file up."""
import errno
import logging
import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from detector.engine import checkpoint
from detector.engine.checkpoint import (CheckpointWriteError, read_checkpoint, remove_orphaned_temporaries,
                                        save_checkpoint)
from detector.engine.trainer import train

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


class FillingDisk:
    """A file handle that takes ``room`` bytes, then fails as a full disk does (ENOSPC)."""

    def __init__(self, handle, room: int):
        self.handle, self.room = handle, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def fill_disk_after(monkeypatch, room: int):
    real_fdopen = os.fdopen
    monkeypatch.setattr(checkpoint.os, "fdopen", lambda fd, mode: FillingDisk(real_fdopen(fd, mode), room))


@pytest.mark.parametrize("room", [0, 5000])  # nothing written / a part of the archive written
def test_a_full_disk_keeps_the_previous_file_and_names_the_folder(tmp_path, monkeypatch, room):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    fill_disk_after(monkeypatch, room)
    with pytest.raises(CheckpointWriteError) as error:
        save_checkpoint({"epoch": 2, "w": torch.arange(10000.0)}, path)
    message = str(error.value)
    assert str(path.parent) in message and "No space left on device" in message and "previous last.pt is kept" in message
    monkeypatch.undo()
    assert read_checkpoint(path)["epoch"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left


def test_a_read_only_folder_is_named(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(checkpoint.tempfile, "mkstemp", refuse)  # as root, chmod cannot make a folder read-only
    with pytest.raises(CheckpointWriteError, match=f"in {tmp_path}.*Permission denied.*no best.pt was written"):
        save_checkpoint({"epoch": 1}, tmp_path / "best.pt")


def test_orphaned_temporaries_are_removed_and_nothing_else(tmp_path):
    (tmp_path / ".last.pt.k2j3h4.tmp").write_bytes(b"half")
    (tmp_path / "last.pt").write_bytes(b"x")
    (tmp_path / "notes.tmp").write_bytes(b"mine")
    assert [p.name for p in remove_orphaned_temporaries(tmp_path)] == [".last.pt.k2j3h4.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "notes.tmp"]
    assert remove_orphaned_temporaries(tmp_path / "missing") == []


def test_the_trainer_stops_with_the_error_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, caplog):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / ".last.pt.orphan.tmp").write_bytes(b"killed mid-write")
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            f"data.root={tmp_path / 'shapes'}", "data.num_train=4", "data.num_val=2", "data.min_size=64",
            "data.max_size=96", "imgsz=64", "batch_size=4", "workers=0", "progress=false", "close_mosaic=1",
            "warmup.min_iters=1", "epochs=2", "device=cpu", "cache=off"])
    real_save, writes = checkpoint.save_checkpoint, []

    def save_then_fill(state, path):  # epoch 1's last.pt and best.pt are written, then the disk is full
        if len(writes) == 2:
            fill_disk_after(monkeypatch, 0)
        writes.append(Path(path).name)
        real_save(state, path)

    monkeypatch.setattr("detector.engine.trainer.save_checkpoint", save_then_fill)
    with caplog.at_level(logging.WARNING, logger="detector"), pytest.raises(CheckpointWriteError, match="kept"):
        train(cfg, run)
    assert "temporary file of a checkpoint write that did not finish" in caplog.text
    monkeypatch.undo()
    assert read_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 0  # epoch 1's file, intact
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
