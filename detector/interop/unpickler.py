"""Read a foreign torch checkpoint (an ultralytics .pt) without running code from it.

A torch zip checkpoint is a pickle (``<root>/data.pkl``) whose persistent ids point at raw storage
records (``<root>/data/<key>``). ``torch.load(weights_only=True)`` refuses the pickled module
objects of an ultralytics file, and ``weights_only=False`` would import ultralytics and run whatever
the file names. This reader sits in between: every global the pickle names goes through an
allow-list. Tensors and plain containers are rebuilt; classes under ``ultralytics.*`` and
``torch.nn.modules.*`` become inert :class:`Record` instances holding only the pickled state (their
code is never imported); any other global is refused by name with an error that names the file.
"""
from __future__ import annotations

import pickle
import pickletools
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from detector.engine.checkpoint import CheckpointError

# torch.save pickles a storage's legacy typed class; its name gives the element type.
STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
# Module roots whose classes are turned into inert records, never imported.
RECORD_ROOTS = ("ultralytics.", "torch.nn.modules.")
# The original YOLOv5 repository pickles its own top-level packages.
YOLOV5_ROOTS = ("models.yolo", "models.common", "models.experimental", "utils.")


class Record:
    """Inert stand-in for a pickled object of a class outside the allow-list of plain types.

    ``source`` is the class's pickled dotted path, ``args`` what its constructor received and
    ``state`` its ``__dict__`` (for a torch module: ``_parameters``, ``_buffers``, ``_modules`` and
    attributes such as ``yaml``, ``names``, ``stride``). Nothing of the original class is called.
    """

    source = "?"

    def __new__(cls, *args, **kwargs):
        record = object.__new__(cls)
        record.args, record.state = args, {}
        return record

    def __init__(self, *args, **kwargs):  # REDUCE calls the class; arguments are kept by __new__
        pass

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.state = dict(state) if isinstance(state, dict) else {"_state": state}

    @property
    def class_name(self) -> str:
        return self.source.rsplit(".", 1)[-1]

    def get(self, key, default=None):
        return self.state.get(key, default)

    def children(self) -> dict:
        """The submodules in registration order (torch modules keep them in ``_modules``)."""
        return dict(self.state.get("_modules") or {})

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The tensors ``state_dict()`` would return for the original module, with the same names."""
        out = {}
        skip = set(self.state.get("_non_persistent_buffers_set") or ())
        for group in ("_parameters", "_buffers"):
            for name, value in (self.state.get(group) or {}).items():
                if isinstance(value, torch.Tensor) and name not in skip:
                    out[prefix + name] = value
        for name, child in self.children().items():
            if isinstance(child, Record):
                out.update(child.tensors(f"{prefix}{name}."))
        return out

    def __repr__(self) -> str:
        return f"<record of {self.source}>"


_RECORD_TYPES: dict[str, type] = {}


def record_type(source: str) -> type:
    """One Record subclass per pickled class path, so NEWOBJ/REDUCE can 'construct' it inertly."""
    if source not in _RECORD_TYPES:
        _RECORD_TYPES[source] = type(source.rsplit(".", 1)[-1], (Record,), {"source": source})
    return _RECORD_TYPES[source]


class Refused(pickle.UnpicklingError):
    """The pickle asks for something outside the allow-list (a call, an attribute, a state)."""


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if storage.numel() == 0:  # an empty tensor; a non-empty shape over no bytes is refused, not allocated
        if any(int(n) == 0 for n in size):
            return torch.zeros(tuple(size), dtype=storage.dtype)
        raise Refused(f"a tensor of shape {tuple(size)} over an empty storage")
    return torch.as_strided(storage, tuple(size), tuple(stride), offset).clone()


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data


def _latin1_encode(text, encoding="latin1"):
    """Protocol-2 pickles store bytes as _codecs.encode(str, 'latin1'); nothing else is allowed."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise Refused(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _numpy_scalar(dtype, data=None):
    """numpy scalars (metrics in a checkpoint) -> Python numbers; the dtype is parsed from its name."""
    name = dtype.args[0] if isinstance(dtype, Record) and dtype.args else None
    if not isinstance(name, str) or not isinstance(data, bytes):
        raise Refused("refused a numpy scalar without a plain dtype name")
    return np.frombuffer(data, dtype=np.dtype(name))[0].item()


def _safe_getattr(owner, name):
    """``getattr(Detect, 'forward')`` as pickled by fused models: an inert marker, never a method."""
    if isinstance(owner, (type, Record)) and issubclass(owner if isinstance(owner, type) else type(owner), Record) \
            and isinstance(name, str) and not name.startswith("_"):
        return record_type(f"{owner.source}.{name}")()
    raise Refused(f"refused getattr({owner!r}, {name!r})")


PLAIN_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "list"): list,
    ("builtins", "dict"): dict, ("builtins", "tuple"): tuple, ("builtins", "getattr"): _safe_getattr,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): tuple, ("torch", "device"): lambda *args: ":".join(map(str, args)),
    ("_codecs", "encode"): _latin1_encode,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar, ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): record_type("numpy.dtype"),
    **{(module, name): (lambda *parts: "/".join(map(str, parts)))
       for module in ("pathlib", "pathlib._local") for name in ("Path", "PosixPath", "WindowsPath")},
}


class RestrictedUnpickler(pickle._Unpickler):  # the Python implementation: its opcodes can be overridden
    """Allow-listed globals only; state is set on Records only; storages come from the zip archive."""

    def load_build(self):
        """BUILD sets an object's state: allowed on inert Records only (never on a tensor, type or function)."""
        state = self.stack.pop()
        instance = self.stack[-1]
        if isinstance(instance, Record):
            instance.__setstate__(state)
        elif type(instance) is OrderedDict and isinstance(state, dict):  # a state_dict's _metadata
            for key, value in state.items():
                if not isinstance(key, str) or key.startswith("__"):
                    raise Refused(f"refused the attribute {key!r} on an OrderedDict")
                setattr(instance, key, value)
        else:
            raise Refused(f"refused to set the state of a {type(instance).__name__}")

    dispatch = {**pickle._Unpickler.dispatch, pickle.BUILD[0]: load_build}

    def __init__(self, handle, path: Path, archive: zipfile.ZipFile, root: str):
        super().__init__(handle)
        self.path, self.archive, self.root = path, archive, root
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str):
        module = "builtins" if module == "__builtin__" else module
        if (module, name) in PLAIN_GLOBALS:
            return PLAIN_GLOBALS[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.startswith(RECORD_ROOTS) or module in ("ultralytics", "torch.nn"):
            return record_type(f"{module}.{name}")
        if module.startswith(YOLOV5_ROOTS):
            raise CheckpointError(
                f"{self.path} is a YOLOv5 checkpoint from the ultralytics/yolov5 repository (it pickles "
                f"{module}.{name}); this project builds YOLOv8 detection models and imports only YOLOv8 files")
        raise CheckpointError(
            f"{self.path} names the global {module}.{name}, which is not on the allow-list of a YOLOv8 "
            "checkpoint (tensors, plain containers, ultralytics and torch.nn modules); refusing to load it")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise Refused(f"unsupported persistent id {str(pid)[:80]}")
        dtype, key = pid[1].dtype, str(pid[2])
        if key not in self.storages:
            data = bytearray(self.archive.read(f"{self.root}/data/{key}"))
            self.storages[key] = (torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype))
        return self.storages[key]


def _open_archive(path: Path) -> tuple[zipfile.ZipFile, str]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as handle:
            head = handle.read(16)
        if head.startswith(b"\x80\x02\x8a\x0a"):  # the magic number that starts torch's pre-1.6 format
            raise CheckpointError(f"{path} uses torch's legacy (pre-1.6, non-zip) format, which this reader does "
                                  "not support; re-save it with a current torch (torch.save) first")
        raise CheckpointError(f"{path} is not a torch checkpoint (not a zip archive: empty, truncated or "
                              "another kind of file)")
    try:
        archive = zipfile.ZipFile(path)
        names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error}; the file is corrupted or truncated") from None
    pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if any(n.endswith("/constants.pkl") for n in names):
        raise CheckpointError(f"{path} is a TorchScript archive, not a checkpoint; pass the .pt that torch.save wrote")
    if not pickles:
        raise CheckpointError(f"{path} is not a checkpoint (no data.pkl in the archive)")
    root = pickles[0].split("/")[0]
    byteorder = f"{root}/byteorder"
    if byteorder in names and archive.read(byteorder).strip() not in (b"little", b""):
        raise CheckpointError(f"{path} was written on a big-endian machine; not supported")
    return archive, root


def pickled_globals(path: str | Path) -> set[str]:
    """The dotted globals the checkpoint's pickle names, read without unpickling anything."""
    archive, root = _open_archive(Path(path))
    with archive:
        data = archive.read(f"{root}/data.pkl")
    found, strings = set(), []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                found.add(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.add(f"{strings[-2]}.{strings[-1]}")
            if isinstance(arg, str):
                strings.append(arg)
    except Exception as error:
        raise CheckpointError(f"cannot read checkpoint {path}: its pickle is corrupt ({error})") from None
    return found


def restricted_load(path: str | Path):
    """The checkpoint's object with tensors (CPU, stored dtype) and inert records; raises CheckpointError."""
    path = Path(path)
    archive, root = _open_archive(path)
    with archive:
        try:
            with archive.open(f"{root}/data.pkl") as handle:
                return RestrictedUnpickler(handle, path, archive, root).load()
        except CheckpointError:
            raise
        except Refused as error:
            raise CheckpointError(f"{path} was refused: {error} (outside the allow-list of a YOLOv8 checkpoint; "
                                  "nothing from the file was run)") from None
        except Exception as error:  # truncated records, bad CRC, a malformed pickle
            raise CheckpointError(
                f"cannot read checkpoint {path} ({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
                "the file is corrupted or truncated") from None
