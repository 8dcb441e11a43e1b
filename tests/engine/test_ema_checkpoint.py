import math

import pytest
import torch
from torch import nn

from detector.engine.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from detector.engine.ema import ModelEMA


def test_ema_ramp_and_average():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = ModelEMA(model, decay=0.9, tau=1.0)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    d = 0.9 * (1 - math.exp(-1))
    assert ema.module.weight[0, 0].item() == pytest.approx(1 - d)
    assert not ema.module.weight.requires_grad
    state = ema.state_dict()
    other = ModelEMA(model, decay=0.9, tau=1.0)
    other.load_state_dict(state)
    assert other.updates == 1 and torch.equal(other.module.weight, ema.module.weight)


def test_checkpoint_round_trip_weights_only(tmp_path):
    path = tmp_path / "ckpt" / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}, "epoch": 3, "config": {"a": [1, 2]}}, path)
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 3 and state["format"] == "detector-checkpoint-v1"
    assert read_checkpoint(path)["config"] == {"a": [1, 2]}
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_corrupted_and_missing_checkpoints_are_reported(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(1000)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a crash mid-write of a non-atomic writer
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nope.pt")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a detector-checkpoint"):
        read_checkpoint(tmp_path / "other.pt")


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1}, path)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(CheckpointError, match="previous last.pt is kept"):
        save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert read_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_ctrl_c_during_a_write_finishes_the_file_then_interrupts(tmp_path, monkeypatch, request):
    import signal

    # the default handler, as in a command-line run (a library imported by an earlier test may leave its own)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1}, path)
    real_save = torch.save

    def save_interrupted_halfway(obj, handle):  # Ctrl-C arrives while torch is writing
        # raise_signal, not os.kill(getpid()): the kernel may hand a process-directed signal to any thread (an
        # earlier test's onnxruntime or OpenVINO pool), and the main thread then sees it late, after the block
        signal.raise_signal(signal.SIGINT)
        real_save(obj, handle)

    monkeypatch.setattr(torch, "save", save_interrupted_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"epoch": 2, "weights": torch.arange(1000.0)}, path)
    monkeypatch.undo()
    state = read_checkpoint(path)
    assert state["epoch"] == 2 and torch.equal(state["weights"], torch.arange(1000.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
