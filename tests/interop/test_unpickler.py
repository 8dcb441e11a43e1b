"""The restricted reader: what it rebuilds, what it refuses, and that nothing from a file runs."""
import pickle
import re
import sys
import types
import zipfile
from collections import OrderedDict

import pytest
import torch
from torch import nn

from detector.engine.checkpoint import CheckpointError
from detector.interop.unpickler import Record, pickled_globals, restricted_load


def zip_checkpoint(path, pickle_bytes: bytes, root: str = "archive"):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{root}/data.pkl", pickle_bytes)
        archive.writestr(f"{root}/byteorder", "little")
    return path


@pytest.fixture
def fake_ultralytics(monkeypatch):
    """A module named ultralytics.nn.modules.conv holding a torch module class, so torch.save
    pickles it under that path without ultralytics being installed."""
    module = types.ModuleType("ultralytics.nn.modules.conv")

    class Conv(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, bias=False)
            self.bn = nn.BatchNorm2d(4)
            self.register_buffer("scratch", torch.ones(2), persistent=False)
            self.names = {0: "cat"}

    Conv.__module__, Conv.__qualname__ = module.__name__, "Conv"
    module.Conv = Conv
    for parent in ("ultralytics", "ultralytics.nn", "ultralytics.nn.modules"):  # pickle imports the path
        if parent not in sys.modules:
            monkeypatch.setitem(sys.modules, parent, types.ModuleType(parent))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return Conv


def test_module_objects_become_inert_records_with_the_state_dict_names(tmp_path, fake_ultralytics):
    torch.manual_seed(0)
    original = fake_ultralytics().half()
    original.bn.running_mean.uniform_()
    torch.save({"ema": original, "epoch": 3, "date": "today"}, tmp_path / "m.pt")

    loaded = restricted_load(tmp_path / "m.pt")
    record = loaded["ema"]
    assert isinstance(record, Record) and not isinstance(record, nn.Module)
    assert record.source == "ultralytics.nn.modules.conv.Conv" and record.class_name == "Conv"
    assert record.children()["conv"].source == "torch.nn.modules.conv.Conv2d"
    assert record.get("names") == {0: "cat"}
    tensors = record.tensors()
    expected = original.state_dict()
    assert list(tensors) == list(expected)  # the non-persistent buffer is left out, as state_dict does
    for name, value in expected.items():
        assert tensors[name].dtype == value.dtype and torch.equal(tensors[name], value), name
    assert loaded["epoch"] == 3 and loaded["date"] == "today"


def test_pickled_globals_lists_what_the_file_names_without_unpickling(tmp_path, fake_ultralytics):
    torch.save({"model": fake_ultralytics()}, tmp_path / "m.pt")
    found = pickled_globals(tmp_path / "m.pt")
    assert "ultralytics.nn.modules.conv.Conv" in found and "torch.nn.modules.conv.Conv2d" in found
    assert "collections.OrderedDict" in found


def test_a_disallowed_global_is_refused_by_name_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    path = zip_checkpoint(tmp_path / "evil.pt", payload)
    with pytest.raises(CheckpointError, match=r"evil\.pt names the global os\.system, which is not on the allow-list"):
        restricted_load(path)
    assert not marker.exists()


@pytest.mark.parametrize("payload, what", [
    (b"cbuiltins\neval\n(S'1+1'\ntR.", "builtins.eval"),
    (b"c__builtin__\nexec\n(S'x=1'\ntR.", "builtins.exec"),
    (b"ctorch\nload\n(S'x'\ntR.", "torch.load"),
    (b"cnumpy\nload\n(S'x'\ntR.", "numpy.load"),
])
def test_other_callables_are_refused(tmp_path, payload, what):
    with pytest.raises(CheckpointError, match="names the global " + re.escape(what)):
        restricted_load(zip_checkpoint(tmp_path / "x.pt", payload))


def test_getattr_reaches_only_record_classes(tmp_path):
    payload = b"c__builtin__\ngetattr\n(ccollections\nOrderedDict\nS'fromkeys'\ntR."
    with pytest.raises(CheckpointError, match=r"x\.pt.*refused getattr"):
        restricted_load(zip_checkpoint(tmp_path / "x.pt", payload))
    ok = b"c__builtin__\ngetattr\n(cultralytics.nn.modules.head\nDetect\nS'forward'\ntR."
    marker = restricted_load(zip_checkpoint(tmp_path / "y.pt", ok))
    assert isinstance(marker, Record) and marker.source == "ultralytics.nn.modules.head.Detect.forward"


def test_codecs_encode_only_for_latin1_bytes(tmp_path):
    good = pickle.dumps({"raw": b"\x00\xff"}, protocol=2)  # protocol 2 stores bytes via _codecs.encode
    assert b"_codecs" in good
    assert restricted_load(zip_checkpoint(tmp_path / "a.pt", good)) == {"raw": b"\x00\xff"}
    bad = b"c_codecs\nencode\n(S'x'\nS'rot13'\ntR."
    with pytest.raises(CheckpointError, match=r"b\.pt"):
        restricted_load(zip_checkpoint(tmp_path / "b.pt", bad))


def test_plain_containers_and_tensors_round_trip(tmp_path):
    value = {"a": [1, 2.5, None, True], "b": ("x", {3}), "c": OrderedDict(k=torch.arange(6).view(2, 3)[:, 1:]),
             "d": torch.tensor([1.5, 2.5], dtype=torch.float16), "e": torch.zeros(0), "f": torch.float16}
    torch.save(value, tmp_path / "plain.pt")
    loaded = restricted_load(tmp_path / "plain.pt")
    assert loaded["a"] == [1, 2.5, None, True] and loaded["b"] == ("x", {3}) and loaded["f"] is torch.float16
    assert torch.equal(loaded["c"]["k"], torch.tensor([[1, 2], [4, 5]]))  # a strided view of a shared storage
    assert loaded["d"].dtype == torch.float16 and loaded["d"].tolist() == [1.5, 2.5]
    assert loaded["e"].shape == (0,)


def test_numpy_scalars_become_python_numbers(tmp_path):
    np = pytest.importorskip("numpy")
    torch.save({"fitness": np.float64(0.25), "count": np.int64(7)}, tmp_path / "n.pt")
    assert restricted_load(tmp_path / "n.pt") == {"fitness": 0.25, "count": 7}


def test_bad_files_name_the_file(tmp_path, ul_checkpoint):
    data = ul_checkpoint.read_bytes()
    cases = {
        "missing.pt": None,
        "empty.pt": b"",
        "text.pt": b"this is not a checkpoint\n",
        "truncated.pt": data[: len(data) // 2],
        "image.pt": b"\xff\xd8\xff\xe0" + bytes(200),
    }
    for name, content in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(CheckpointError, match=re.escape(str(path))):
            restricted_load(path)


def test_corrupted_storage_bytes_are_detected(tmp_path, ul_checkpoint):
    data = bytearray(ul_checkpoint.read_bytes())
    with zipfile.ZipFile(ul_checkpoint) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)  # the largest weight record
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + 100: start + 110] = bytes(10)  # zero ten bytes of weights
    path = tmp_path / "corrupt.pt"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"corrupt\.pt.*(CRC|corrupt)"):
        restricted_load(path)


def test_legacy_and_torchscript_files_are_named_for_what_they_are(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=r"legacy\.pt uses torch's legacy \(pre-1\.6, non-zip\) format"):
        restricted_load(tmp_path / "legacy.pt")
    torch.jit.script(nn.Linear(2, 2)).save(str(tmp_path / "script.pt"))
    with pytest.raises(CheckpointError, match=r"script\.pt is a TorchScript archive"):
        restricted_load(tmp_path / "script.pt")


def test_a_yolov5_repository_checkpoint_is_named(tmp_path):
    payload = b"\x80\x02}X\x05\x00\x00\x00modelcmodels.yolo\nDetectionModel\n)\x81s."
    with pytest.raises(CheckpointError, match=r"v5\.pt is a YOLOv5 checkpoint from the ultralytics/yolov5 repository"):
        restricted_load(zip_checkpoint(tmp_path / "v5.pt", payload))


def test_state_is_set_on_records_only(tmp_path):
    payload = b"c__builtin__\nset\n)R}S'x'\nK\x01sb."  # set() then BUILD {'x': 1}
    with pytest.raises(CheckpointError, match=r"s\.pt was refused: refused to set the state of a set"):
        restricted_load(zip_checkpoint(tmp_path / "s.pt", payload))
