"""Hostile checkpoints, crafted by hand: each is small on disk and declares far more than it holds.

A torch zip checkpoint is ``<root>/data.pkl`` (a pickle whose persistent ids name storage records)
plus ``<root>/data/<key>`` records of raw little-endian bytes. The helpers write such files from a
pickle and records, a pickle from a tensor's (offset, size, stride) over a storage, and deflate
records whose central-directory entry declares a size that the stream does not hold. ``CRAFTED``
names the raw files and ``ULTRALYTICS`` the genuine fixture with one header value or structure broken;
test_limits.py expects each to be refused with a named CheckpointError.
"""
from __future__ import annotations

import io
import pickle
import struct
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path

import torch

from detector.interop.unpickler import ITEMSIZE, STORAGE_DTYPES, Record

ROOT = "archive"
MiB, GiB = 1 << 20, 1 << 30


def write_checkpoint(path: Path, pickle_bytes: bytes, records: dict | None = None) -> Path:
    """A torch-style zip: data.pkl, byteorder and records (key -> bytes stored, or a Deflated)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{ROOT}/data.pkl", pickle_bytes)
        archive.writestr(f"{ROOT}/byteorder", "little")
        for key, data in (records or {}).items():
            name = f"{ROOT}/data/{key}"
            if isinstance(data, Deflated):
                data.write(archive, name)
            else:
                archive.writestr(name, data)
    return path


class Deflated:
    """A deflate record: ``head``, ``size`` bytes ``fill``, ``tail``, as a real stream of ~1 KB per MiB,
    whose central directory may declare ``declared`` bytes instead (zipfile trusts the central directory)."""

    def __init__(self, size: int, declared: int | None = None, fill: bytes = b"\0", head: bytes = b"",
                 tail: bytes = b""):
        self.size, self.fill, self.head, self.tail = size, fill, head, tail
        self.declared = len(head) + size + len(tail) if declared is None else declared

    def stream(self) -> tuple[bytes, int]:
        """(raw deflate bytes, crc32): after a full flush every MiB of fill compresses to the same block."""
        compressor, chunk = zlib.compressobj(9, zlib.DEFLATED, -15), self.fill * MiB
        whole, rest = divmod(self.size, MiB)
        first = compressor.compress(self.head) + compressor.flush(zlib.Z_FULL_FLUSH)
        block = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
        last = compressor.compress(self.fill * rest + self.tail) + compressor.flush()
        crc = zlib.crc32(self.head)
        for _ in range(whole):
            crc = zlib.crc32(chunk, crc)
        return first + block * whole + last, zlib.crc32(self.fill * rest + self.tail, crc)

    def write(self, archive: zipfile.ZipFile, name: str) -> None:
        data, crc = self.stream()
        info = zipfile.ZipInfo(name)
        with archive.open(info, "w") as handle:  # written stored: zipfile must not re-compress the stream
            handle.write(data)
        # The central directory is written at close from these fields.
        info.compress_type, info.CRC, info.file_size = zipfile.ZIP_DEFLATED, crc, self.declared

class Storage:
    """Stands for a storage record in a pickle: written as torch's persistent id."""

    def __init__(self, key: str, numel: int, storage_type: str = "FloatStorage"):
        self.key, self.numel, self.storage_type = key, numel, storage_type


class Tensor:
    """A tensor as torch pickles it: _rebuild_tensor_v2(storage, offset, size, stride, ...)."""

    def __init__(self, storage: Storage, offset: int, size: tuple, stride: tuple):
        self.args = (storage, offset, tuple(size), tuple(stride), False, OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


class Global:
    """A class path written as GLOBAL without importing it (ultralytics is not installed)."""

    def __init__(self, source: str):
        self.source = source

    def __call__(self, *args):  # never called: pickle only insists that a reduce function be callable
        raise TypeError(self.source)


class CraftPickler(pickle._Pickler):  # the Python implementation: save() can be overridden
    """Protocol 2 as torch writes it; Records are written back as their pickled class + state and
    torch tensors as a storage record each (collected in ``records``)."""

    def __init__(self, file):
        super().__init__(file, protocol=2)
        self.records: dict[str, bytes] = {}

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return "storage", getattr(torch, obj.storage_type), obj.key, "cpu", obj.numel
        return None

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, Global):
            module, name = obj.source.rsplit(".", 1)
            self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())
            return
        super().save(obj, save_persistent_id)

    def reducer_override(self, obj):
        if isinstance(obj, Record):
            return Global(obj.source), obj.args, obj.state
        if isinstance(obj, torch.Tensor):
            key, data = str(len(self.records)), obj.detach().contiguous()
            self.records[key] = data.view(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b""
            storage_type = {torch.float16: "HalfStorage", torch.float32: "FloatStorage", torch.int64: "LongStorage",
                            torch.bool: "BoolStorage"}[data.dtype]
            return Tensor(Storage(key, data.numel(), storage_type), 0, data.shape, data.stride()).__reduce__()
        return NotImplemented


def dumps(obj) -> tuple[bytes, dict[str, bytes]]:
    buffer = io.BytesIO()
    pickler = CraftPickler(buffer)
    pickler.dump(obj)
    return buffer.getvalue(), pickler.records


def resave(obj, path: Path) -> Path:
    """Write a restricted_load result (Records, tensors, containers) back as a checkpoint file."""
    data, records = dumps(obj)
    return write_checkpoint(path, data, records)


def tensor_file(path: Path, size, stride, offset=0, numel=1, record=None, storage_type="FloatStorage") -> Path:
    """{'w': one tensor (offset, size, stride) over one storage of numel elements (zeros unless given)}."""
    itemsize = ITEMSIZE[STORAGE_DTYPES[storage_type]]
    data, _ = dumps({"w": Tensor(Storage("0", numel, storage_type), offset, size, stride)})
    return write_checkpoint(path, data, {"0": bytes(numel * itemsize) if record is None else record})


# Hand-made pickles (opcodes of protocol 2), each a few hundred bytes to a few MB.
def binput(index: int) -> bytes:
    return pickle.LONG_BINPUT + struct.pack("<I", index)


def binget(index: int) -> bytes:
    return pickle.LONG_BINGET + struct.pack("<I", index)


def global_(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def copy_bomb(items: int, copies: int) -> bytes:
    """list(L) ``copies`` times over one memoised list L of ``items`` Nones: 8 * items * copies bytes."""
    out = [pickle.PROTO, b"\x02", global_("builtins", "list"), binput(0),
           pickle.EMPTY_LIST, binput(1), pickle.MARK, pickle.NONE * items, pickle.APPENDS, pickle.POP,
           pickle.EMPTY_LIST, pickle.MARK]
    out += [binget(0) + binget(1) + pickle.TUPLE1 + pickle.REDUCE] * copies
    return b"".join(out + [pickle.APPENDS, pickle.STOP])


def nested_lists(levels: int, width: int) -> bytes:
    """Pushes L_levels, where L_0 = [None] and L_k = [L_{k-1}] * width: width**levels leaves, few bytes."""
    out = [pickle.EMPTY_LIST, pickle.NONE, pickle.APPEND, binput(100)]
    for level in range(1, levels + 1):
        out += [pickle.POP, pickle.EMPTY_LIST, pickle.MARK, binget(100 + level - 1) * width, pickle.APPENDS,
                binput(100 + level)]
    return b"".join(out)


def string_bomb(levels: int = 9, width: int = 10) -> bytes:
    """torch.device(L): str() of a list nested ``levels`` deep, width**levels * 6 characters."""
    return b"".join([pickle.PROTO, b"\x02", global_("torch", "device"), nested_lists(levels, width),
                     pickle.TUPLE1, pickle.REDUCE, pickle.STOP])


def hash_bomb(levels: int = 9, width: int = 10) -> bytes:
    """A dict whose key is a tuple nested ``levels`` deep: hashing it visits width**levels tuples."""
    out = [pickle.PROTO, b"\x02", pickle.EMPTY_DICT, pickle.EMPTY_TUPLE, binput(100)]
    for level in range(1, levels + 1):
        out += [pickle.POP, pickle.MARK, binget(100 + level - 1) * width, pickle.TUPLE, binput(100 + level)]
    return b"".join(out + [pickle.NONE, pickle.SETITEM, pickle.STOP])


def getattr_chain(links: int = 1000, name_length: int = 10_000) -> bytes:
    """getattr(getattr(Detect, n), n)... with a long name n: the pickled paths grow quadratically."""
    out = [pickle.PROTO, b"\x02", global_("builtins", "getattr"), binput(0),
           pickle.BINUNICODE, struct.pack("<I", name_length), b"a" * name_length, binput(1),
           global_("ultralytics.nn.modules.head", "Detect")]
    for _ in range(links):
        out += [binput(2), binget(0), binget(2), binget(1), pickle.TUPLE2, pickle.REDUCE]
    return b"".join(out + [pickle.STOP])


def append_flood(items: int) -> bytes:
    """One list of ``items`` references to one memoised object: 2 bytes of pickle per element."""
    return b"".join([pickle.PROTO, b"\x02", pickle.NONE, binput(0), pickle.EMPTY_LIST, pickle.MARK,
                     binget(0) * items, pickle.APPENDS, pickle.STOP])


def deflated_pickle_file(path: Path, size: int) -> Path:
    """A data.pkl of ``size`` EMPTY_SET opcodes (216 bytes of memory each), deflated to ~size/1000."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        Deflated(size, fill=pickle.EMPTY_SET, head=pickle.PROTO + b"\x02", tail=pickle.STOP).write(
            archive, f"{ROOT}/data.pkl")
        archive.writestr(f"{ROOT}/byteorder", "little")
    return path


def pickle_file(path: Path, data: bytes) -> Path:
    return write_checkpoint(path, data)


# The crafted files: name -> builder(path). Sizes on disk are a few hundred bytes to ~2 MB.
CRAFTED = {
    "stride0_4e9_elements_over_4_bytes": lambda p: tensor_file(p, (65536, 65536), (0, 0), numel=1),
    "overlapping_strides_1e9_over_80k": lambda p: tensor_file(p, (65536, 16384), (1, 1), numel=65536 + 16384),
    "overlapping_strides_4x4_over_16": lambda p: tensor_file(p, (4, 4), (1, 1), numel=16),
    "offset_past_the_end": lambda p: tensor_file(p, (4,), (1,), offset=1 << 40, numel=4),
    "negative_stride": lambda p: tensor_file(p, (4,), (-1,), offset=3, numel=4),
    "record_declares_16GiB": lambda p: write_checkpoint(
        p, dumps({"w": Tensor(Storage("0", 4 * GiB, "FloatStorage"), 0, (4 * GiB,), (1,))})[0],
        {"0": Deflated(MiB, declared=16 * GiB)}),
    "record_expands_to_2GiB": lambda p: write_checkpoint(
        p, dumps({"w": Tensor(Storage("0", GiB // 2, "FloatStorage"), 0, (GiB // 2,), (1,))})[0],
        {"0": Deflated(2 * GiB)}),
    "record_shorter_than_numel": lambda p: tensor_file(p, (4,), (1,), numel=4, record=bytes(10)),
    "record_longer_than_numel": lambda p: tensor_file(p, (2,), (1,), numel=2, record=bytes(16)),
    "list_copies_3GB": lambda p: pickle_file(p, copy_bomb(20_000, 20_000)),
    "device_string_6e9_chars": lambda p: pickle_file(p, string_bomb()),
    "nested_tuple_key_1e9_hashes": lambda p: pickle_file(p, hash_bomb()),
    "getattr_chain_5GB_of_names": lambda p: pickle_file(p, getattr_chain()),
    "data_pkl_deflated_1GB_of_sets": lambda p: deflated_pickle_file(p, GiB),
    "bytearray8_declares_4GiB": lambda p: pickle_file(
        p, pickle.PROTO + b"\x05" + pickle.BYTEARRAY8 + struct.pack("<Q", 4 * GiB) + pickle.STOP),
}


def nested(levels: int, width: int = 10) -> list:
    """[[...]] * width nested ``levels`` deep: pickled through the memo in a few hundred bytes."""
    value = [None]
    for _ in range(levels):
        value = [value] * width
    return value


def _layers(checkpoint) -> dict:
    return checkpoint["model"].state["_modules"]["model"].state["_modules"]


def _head(checkpoint) -> Record:
    return _layers(checkpoint)["22"]


def _set(mapping: dict, key, value):
    mapping[key] = value


# The genuine fixture with one thing broken: name -> mutate(checkpoint dict), applied before resave().
ULTRALYTICS = {
    "nc_1e9": lambda c: _set(_head(c).state, "nc", 10 ** 9),
    "nc_string": lambda c: _set(_head(c).state, "nc", "80"),
    "nc_81_vs_80_channel_tensors": lambda c: _set(_head(c).state, "nc", 81),
    "reg_max_1e6": lambda c: _set(_head(c).state, "reg_max", 10 ** 6),
    "imgsz_string": lambda c: _set(c["train_args"], "imgsz", "640"),
    "width_multiple_100": lambda c: _set(c["model"].state["yaml"], "width_multiple", 100.0),
    "model_without_modules": lambda c: c["model"].state.pop("_modules"),
    "head_missing": lambda c: _layers(c).pop("22"),
    "layer_of_wrong_type": lambda c: _set(_layers(c), "5", 12),
    "head_dfl_missing": lambda c: _head(c).state["_modules"].pop("dfl"),
    "module_cycle": lambda c: _set(_layers(c)["0"].state["_modules"], "loop", c["model"]),
    "class_name_string_bomb": lambda c: _set(c["model"].state, "names", {0: nested(9)}),
    "version_string_bomb": lambda c: _set(c, "version", nested(9)),
}


def ultralytics_variant(path: Path, fixture: Path, name: str) -> Path:
    from detector.interop.unpickler import restricted_load

    checkpoint = restricted_load(fixture)
    ULTRALYTICS[name](checkpoint)
    return resave(checkpoint, path)


def record(source: str, **state) -> Record:
    """A Record as restricted_load returns one: pickled back as ``source`` with ``state``."""
    made = type(source.rsplit(".", 1)[-1], (Record,), {"source": source})()
    made.state = state
    return made


def small_checkpoint() -> dict:
    """A few-KB checkpoint with what a real one holds: records, fp16 tensors, a view, containers, numbers."""
    torch.manual_seed(0)
    weight = torch.randn(4, 3, 3, 3).half()
    conv = record("torch.nn.modules.conv.Conv2d", _parameters={"weight": weight, "bias": None}, _buffers={},
                  _modules={}, training=False, stride=(1, 1))
    bn = record("torch.nn.modules.batchnorm.BatchNorm2d", _parameters={"weight": torch.ones(4).half()},
                _buffers={"running_mean": torch.zeros(4), "num_batches_tracked": torch.tensor(3)},
                _non_persistent_buffers_set=set(), _modules={})
    layer = record("ultralytics.nn.modules.conv.Conv", _modules=OrderedDict(conv=conv, bn=bn), _parameters={},
                   _buffers={}, f=-1, i=0)
    model = record("ultralytics.nn.tasks.DetectionModel", _modules={"model": layer}, _parameters={}, _buffers={},
                   names={0: "cat", 1: "dog"}, yaml={"nc": 2, "scale": "n", "depth_multiple": 0.33},
                   stride=torch.tensor([8.0, 16.0, 32.0]))
    return {"model": model, "ema": None, "epoch": -1, "date": "2024-01-01", "train_args": {"imgsz": 640, "lr0": 0.01},
            "flags": frozenset({"a", "b"}), "pair": (1, 2.5, True, None, b"\x00\xff"), "big": 2 ** 70}
