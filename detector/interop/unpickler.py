"""Read a foreign torch checkpoint (an ultralytics .pt) without running code from it.

A torch zip checkpoint is a pickle (``<root>/data.pkl``) whose persistent ids point at raw storage
records (``<root>/data/<key>``). ``torch.load(weights_only=True)`` refuses the pickled module
objects of an ultralytics file, and ``weights_only=False`` would import ultralytics and run whatever
the file names. This reader sits in between: every global the pickle names goes through an
allow-list. Tensors and plain containers are rebuilt; classes under ``ultralytics.*`` and
``torch.nn.modules.*`` become inert :class:`Record` instances holding only the pickled state (their
code is never imported); any other global is refused by name with an error that names the file.
What the file declares (record sizes, tensor shapes, the objects its opcodes build) is bounded by
what it holds (detector.interop.limits), so a small file cannot take gigabytes of memory either.
"""
from __future__ import annotations

import io
import pickle
import pickletools
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from detector.engine.checkpoint import CheckpointError
from detector.interop.limits import (CONTAINER_ITEM_COST, DEFLATE_SLACK, MAX_MODULE_DEPTH, MAX_MODULES, MAX_SOURCE,
                                     RECORD_TYPE_COST, TENSOR_BYTES_PER_STORAGE_BYTE, CheckpointTooLarge,
                                     LimitExceeded, MeteredDispatch, RecordReader, WorkBudget, check_key,
                                     check_view, container_items, short)

# torch.save pickles a storage's legacy typed class; its name gives the element type.
STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
ITEMSIZE = {dtype: torch.empty((), dtype=dtype).element_size() for dtype in STORAGE_DTYPES.values()}
# The dtypes a pickle may name as torch.<name> (vars(): getattr(torch, name) would import submodules).
TORCH_DTYPES = {name: value for name, value in vars(torch).items() if isinstance(value, torch.dtype)}
# Module roots whose classes are turned into inert records, never imported.
RECORD_ROOTS = ("ultralytics.", "torch.nn.modules.")
# The original YOLOv5 repository pickles its own top-level packages.
YOLOV5_ROOTS = ("models.yolo", "models.common", "models.experimental", "utils.")


class Malformed(ValueError):
    """A pickled module tree that is no tree: it contains itself, or nests or shares beyond MAX_MODULES."""


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
        if type(state) is tuple and len(state) == 2 and all(p is None or isinstance(p, dict) for p in state):
            state = {**(state[0] or {}), **(state[1] or {})}  # (dict, slot state)
        self.state = dict(state) if isinstance(state, dict) else {"_state": state}

    @property
    def class_name(self) -> str:
        return self.source.rsplit(".", 1)[-1]

    def get(self, key, default=None):
        return self.state.get(key, default)

    def children(self) -> dict:
        """The submodules in registration order (torch modules keep them in ``_modules``); {} if there is none."""
        modules = self.state.get("_modules")
        return dict(modules) if isinstance(modules, dict) else {}

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The tensors ``state_dict()`` would return for the original module, with the same names.

        Raises Malformed for a tree that contains itself or has more than MAX_MODULES modules (one
        submodule shared under many names, nested, would otherwise name exponentially many tensors).
        """
        out = {}
        self._collect(prefix, out, [MAX_MODULES], ())
        return out

    def _collect(self, prefix: str, out: dict, left: list[int], above: tuple[int, ...]) -> None:
        if id(self) in above:
            raise Malformed(f"its module tree loops: {prefix[:-1] or 'the root'} is a module that contains itself")
        left[0] -= 1
        if left[0] < 0 or len(above) > MAX_MODULE_DEPTH:
            raise Malformed(f"its module tree has more than {MAX_MODULES} modules or {MAX_MODULE_DEPTH} levels")
        skip = self.state.get("_non_persistent_buffers_set")
        skip = {n for n in skip if type(n) is str} if isinstance(skip, (set, frozenset, list, tuple)) else set()
        for group in ("_parameters", "_buffers"):
            values = self.state.get(group)
            for name, value in (values.items() if isinstance(values, dict) else ()):
                if type(name) is str and isinstance(value, torch.Tensor) and name not in skip:
                    out[prefix + name] = value
        for name, child in self.children().items():
            if type(name) is str and isinstance(child, Record):
                child._collect(f"{prefix}{name}.", out, left, (*above, id(self)))

    def __repr__(self) -> str:
        return f"<record of {self.source}>"


def _record_type(source: str) -> type:
    """A Record subclass for one pickled class path, so NEWOBJ/REDUCE can 'construct' it inertly."""
    return type(source.rsplit(".", 1)[-1], (Record,), {"source": source})


class Refused(pickle.UnpicklingError):
    """The pickle asks for something outside the allow-list (a call, an attribute, a state)."""


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data


def _latin1_encode(text, encoding="latin1"):
    """Protocol-2 pickles store bytes as _codecs.encode(str, 'latin1'); nothing else is allowed."""
    if type(encoding) is not str or encoding not in ("latin1", "latin-1") or type(text) is not str:
        raise Refused(f"refused _codecs.encode with encoding {short(encoding)}")
    return text.encode("latin1")


def _device(*parts):
    """torch.device('cuda', 0) as pickled -> 'cuda:0' (a short name and an index only)."""
    if len(parts) > 2 or not all((type(p) is str and len(p) <= 64) or (type(p) is int and abs(p) < 1 << 31)
                                 for p in parts):
        raise Refused(f"refused torch.device{short(parts)}")
    return ":".join(map(str, parts))


def _path(*parts):
    """A pickled pathlib path (its parts) -> the parts joined by '/', as a string."""
    if not all(type(p) is str for p in parts) or sum(map(len, parts)) > 4096:
        raise Refused(f"refused a path of parts {short(parts)}")
    return "/".join(parts)


NUMPY_DTYPE = _record_type("numpy.dtype")


def _numpy_scalar(dtype, data=None):
    """numpy scalars (metrics in a checkpoint) -> Python numbers; the dtype is parsed from its name."""
    name = dtype.args[0] if isinstance(dtype, NUMPY_DTYPE) and dtype.args else None
    if not (type(name) is str and len(name) <= 8 and type(data) is bytes):
        raise Refused("refused a numpy scalar without a plain dtype name")
    kind = np.dtype(name)
    if kind.kind not in "biufc" or len(data) != kind.itemsize:
        raise Refused(f"refused a numpy scalar of dtype {short(name)} over {len(data)} bytes")
    return np.frombuffer(data, dtype=kind)[0].item()


PLAIN_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "list"): list,
    ("builtins", "dict"): dict, ("builtins", "tuple"): tuple,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): tuple, ("torch", "device"): _device,
    ("_codecs", "encode"): _latin1_encode,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar, ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): NUMPY_DTYPE,
    **{(module, name): _path for module in ("pathlib", "pathlib._local")
       for name in ("Path", "PosixPath", "WindowsPath")},
}
class RestrictedUnpickler(pickle._Unpickler):  # the Python implementation: its opcodes can be overridden
    """Allow-listed globals only; state is set on Records only; storages come from the zip archive.

    Every opcode and every call is charged to a WorkBudget, every dict key and set item is checked to
    hash cheaply, and tensors never take more memory than their storage records (see limits).
    """

    def __init__(self, data: bytes, path: Path, records: RecordReader, root: str):
        super().__init__(io.BytesIO(data))
        self.path, self.records, self.root = path, records, root
        self.pickle_bytes = len(data)
        self.work = WorkBudget(min(len(data), records.file_bytes))  # a deflated pickle gets no more than the file
        self.dispatch = MeteredDispatch(type(self).dispatch, self.work)  # load() reads self.dispatch
        self.storages: dict[str, torch.Tensor] = {}
        self.storage_ids: set[int] = set()
        self.storage_bytes = self.tensor_bytes = 0
        self.record_types: dict[str, type] = {}
        self.globals = {**PLAIN_GLOBALS, ("torch._utils", "_rebuild_tensor_v2"): self.rebuild_tensor,
                        ("builtins", "getattr"): self.getattr_marker}

    def release(self) -> None:
        """Drop the memo, stack and storages now: the bound methods in ``globals`` make the unpickler a
        reference cycle, which would hold every storage until the cyclic garbage collector runs."""
        self.memo.clear()
        self.storages.clear()
        self.globals.clear()
        self.stack, self.metastack = [], []

    # Opcodes that set state, insert keys or call: checked and charged.
    def load_build(self):
        """BUILD sets an object's state: allowed on inert Records only (never on a tensor, type or function)."""
        state = self.stack.pop()
        instance = self.stack[-1]
        if isinstance(instance, Record):
            self.work.spend(sum(len(p) for p in (state if type(state) is tuple else (state,)) if isinstance(p, dict)))
            instance.__setstate__(state)
        elif type(instance) is OrderedDict and isinstance(state, dict):  # a state_dict's _metadata
            for key, value in state.items():
                if key != "_metadata":
                    raise Refused(f"refused the attribute {short(key)} on an OrderedDict")
                setattr(instance, key, value)
        else:
            raise Refused(f"refused to set the state of a {type(instance).__name__}")

    def _set_items(self, target, items: list) -> None:
        if not isinstance(target, dict):
            raise Refused(f"refused to set items on a {type(target).__name__}")
        if len(items) % 2:
            raise pickle.UnpicklingError("an odd number of items for a dict")
        self.work.spend(2 * len(items))
        for i in range(0, len(items), 2):
            check_key(items[i])
            target[items[i]] = items[i + 1]

    def load_setitem(self):
        value, key = self.stack.pop(), self.stack.pop()
        self._set_items(self.stack[-1], [key, value])

    def load_setitems(self):
        items = self.pop_mark()
        self._set_items(self.stack[-1], items)

    def load_dict(self):
        items, result = self.pop_mark(), {}
        self._set_items(result, items)
        self.append(result)

    def load_additems(self):
        items = self.pop_mark()
        target = self.stack[-1]
        if not isinstance(target, set):
            raise Refused(f"refused to add items to a {type(target).__name__}")
        self.work.spend(4 * len(items))
        for item in items:
            check_key(item)
        target.update(items)

    def load_frozenset(self):
        items = self.pop_mark()
        self.work.spend(4 * len(items))
        for item in items:
            check_key(item)
        self.append(frozenset(items))

    def _call(self, func, args, kwargs=None):
        """``func(*args, **kwargs)`` for REDUCE, NEWOBJ and INST, charged what the call copies."""
        if type(args) is not tuple or not (kwargs is None or type(kwargs) is dict):
            raise Refused("refused a call whose arguments are not a tuple")
        units = len(args) + len(kwargs or ())
        per_item = CONTAINER_ITEM_COST.get(func) if isinstance(func, type) else None
        if per_item is not None:
            units += per_item * container_items(func, args, kwargs)
        else:  # _codecs.encode copies its text; the other allowed calls copy nothing large
            units += sum(len(a) // 8 for a in args if type(a) in (str, bytes, bytearray))
        self.work.spend(units)
        return func(*args, **(kwargs or {}))

    def load_reduce(self):
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)

    def _construct(self, cls, args, kwargs=None):
        if not (isinstance(cls, type) and issubclass(cls, Record)):
            raise Refused(f"refused NEWOBJ of {short(cls)}")
        return self._call(cls, args, kwargs)  # Record.__new__ keeps the arguments; __init__ does nothing

    def load_newobj(self):
        args = self.stack.pop()
        self.stack[-1] = self._construct(self.stack[-1], args)

    def load_newobj_ex(self):
        kwargs, args = self.stack.pop(), self.stack.pop()
        self.stack[-1] = self._construct(self.stack[-1], args, kwargs)

    def _instantiate(self, klass, args):  # INST and OBJ (protocols 0 and 1)
        self.append(self._call(klass, tuple(args)))

    def load_bytearray8(self):
        """BYTEARRAY8 allocates its declared length before reading it: the pickle must hold that many bytes."""
        size = int.from_bytes(self.read(8), "little")
        if size > self.pickle_bytes:
            raise LimitExceeded(f"a bytearray of {size} bytes declared in a pickle of {self.pickle_bytes}")
        data = bytearray(size)
        self.readinto(data)
        self.append(data)

    dispatch = {**pickle._Unpickler.dispatch, pickle.BUILD[0]: load_build, pickle.BYTEARRAY8[0]: load_bytearray8,
                pickle.SETITEM[0]: load_setitem, pickle.SETITEMS[0]: load_setitems, pickle.DICT[0]: load_dict,
                pickle.ADDITEMS[0]: load_additems, pickle.FROZENSET[0]: load_frozenset, pickle.REDUCE[0]: load_reduce,
                pickle.NEWOBJ[0]: load_newobj, pickle.NEWOBJ_EX[0]: load_newobj_ex}

    def find_class(self, module: str, name: str):
        module = "builtins" if module == "__builtin__" else module
        if (module, name) in self.globals:
            return self.globals[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        if module == "torch" and name in TORCH_DTYPES:
            return TORCH_DTYPES[name]
        if module.startswith(RECORD_ROOTS) or module in ("ultralytics", "torch.nn"):
            return self.record_type(f"{module}.{name}")
        if module.startswith(YOLOV5_ROOTS):
            raise CheckpointError(
                f"{self.path} is a YOLOv5 checkpoint from the ultralytics/yolov5 repository (it pickles "
                f"{module}.{name}); this project builds YOLOv8 and YOLO11 detection models and imports only their files")
        raise CheckpointError(
            f"{self.path} names the global {short(module, 200)[1:-1]}.{short(name, 200)[1:-1]}, which is not on "
            "the allow-list of a YOLOv8/YOLO11 checkpoint (tensors, plain containers, ultralytics and torch.nn modules); "
            "refusing to load it")

    def record_type(self, source: str) -> type:
        """One Record subclass per pickled class path and load (a type costs ~1 KB: charged)."""
        if source not in self.record_types:
            if len(source) > MAX_SOURCE:
                raise LimitExceeded(f"a pickled class path of {len(source)} characters (at most {MAX_SOURCE})")
            self.work.spend(RECORD_TYPE_COST)
            self.record_types[source] = _record_type(source)
        return self.record_types[source]

    def getattr_marker(self, owner, name):
        """``getattr(Detect, 'forward')`` as pickled by fused models: an inert marker, never a method."""
        record = owner if isinstance(owner, type) else type(owner)
        if issubclass(record, Record) and type(name) is str and name.isidentifier() and not name.startswith("_"):
            return self.record_type(f"{record.source}.{name}")()
        raise Refused(f"refused getattr({short(owner)}, {short(name)})")

    def persistent_load(self, pid):
        """A storage record, read once per key; its size must be the one the persistent id declares."""
        if not (type(pid) is tuple and len(pid) == 5 and type(pid[0]) is str and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and type(pid[2]) is str and type(pid[4]) is int
                and pid[4] >= 0):
            raise Refused(f"unsupported persistent id {short(pid, 80)}")
        dtype, key, numel = pid[1].dtype, pid[2], pid[4]
        if key in self.storages:
            storage = self.storages[key]
            if storage.dtype != dtype or storage.numel() != numel:
                raise LimitExceeded(f"the storage {short(key)} is declared as {numel} x {dtype} and as "
                                    f"{storage.numel()} x {storage.dtype}")
            return storage
        data = bytearray(self.records.read(f"{self.root}/data/{key}", expected=numel * ITEMSIZE[dtype]))
        storage = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
        self.storages[key] = storage
        self.storage_ids.add(id(storage))
        self.storage_bytes += len(data)
        return storage

    def rebuild_tensor(self, storage, offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
        """torch._utils._rebuild_tensor_v2, materialising no more elements than its storage holds."""
        if id(storage) not in self.storage_ids:
            raise Refused(f"refused a tensor over {short(storage)}, which is not a storage record")
        numel = check_view(size, stride, offset, storage.numel())
        if numel == 0:
            return torch.empty(tuple(size), dtype=storage.dtype)
        self.tensor_bytes += numel * storage.element_size()
        bound = TENSOR_BYTES_PER_STORAGE_BYTE * self.storage_bytes + DEFLATE_SLACK
        if self.tensor_bytes > bound:
            raise LimitExceeded(f"its tensors take {self.tensor_bytes} bytes, more than "
                                f"{TENSOR_BYTES_PER_STORAGE_BYTE} x the {self.storage_bytes} bytes of their storages")
        view = torch.as_strided(storage, tuple(size), tuple(stride), offset)
        # A view of its whole storage in order (each tensor of a module's state) is kept, as torch.load keeps it;
        # any other is copied, so that it does not hold the rest of its storage alive.
        return view if numel == storage.numel() and view.is_contiguous() else view.clone()


def _describe(error: BaseException) -> str:
    """'Type: first line of its message', bounded: an error may carry a value from the file (a KeyError)."""
    args = error.args
    message = args[0] if len(args) == 1 and type(args[0]) is str else (short(args) if args else "")
    lines = message[:1000].strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


def _open_archive(path: Path) -> tuple[zipfile.ZipFile, str, RecordReader]:
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
    except Exception as error:  # BadZipFile, OSError, and what a mangled header makes zipfile raise
        raise CheckpointError(f"cannot read checkpoint {path}: {_describe(error)}; the file is corrupted or "
                              "truncated") from None
    try:
        return (archive, *_check_archive(archive, path))
    except BaseException:
        archive.close()
        raise


def _check_archive(archive: zipfile.ZipFile, path: Path) -> tuple[str, RecordReader]:
    try:
        records = RecordReader(archive, path.stat().st_size)
    except LimitExceeded as error:
        raise CheckpointTooLarge(f"{path} was refused: {error}") from None
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if any(n.endswith("/constants.pkl") for n in names):
        raise CheckpointError(f"{path} is a TorchScript archive, not a checkpoint; pass the .pt that torch.save wrote")
    if not pickles:
        raise CheckpointError(f"{path} is not a checkpoint (no data.pkl in the archive)")
    root = pickles[0].split("/")[0]
    byteorder = f"{root}/byteorder"
    if byteorder in names:
        try:
            order = records.read(byteorder, at_most=16).strip()
        except Exception as error:
            raise CheckpointError(f"cannot read checkpoint {path}: {_describe(error)}; the file is corrupted or "
                                  "truncated") from None
        if order not in (b"little", b""):
            raise CheckpointError(f"{path} was written on a big-endian machine; not supported")
    return root, records


def pickled_globals(path: str | Path) -> set[str]:
    """The dotted globals the checkpoint's pickle names, read without unpickling anything."""
    path = Path(path)
    archive, root, records = _open_archive(path)
    found, strings = set(), []
    with archive:
        try:
            data = records.read(f"{root}/data.pkl")
            for op, arg, _ in pickletools.genops(data):
                if op.name == "GLOBAL":
                    found.add(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.add(f"{strings[-2]}.{strings[-1]}")
                if isinstance(arg, str):
                    strings.append(arg)
        except LimitExceeded as error:
            raise CheckpointTooLarge(f"{path} was refused: {error}") from None
        except Exception as error:
            raise CheckpointError(f"cannot read checkpoint {path}: its pickle is corrupt ({_describe(error)})") \
                from None
    return found


def restricted_load(path: str | Path):
    """The checkpoint's object with tensors (CPU, stored dtype) and inert records; raises CheckpointError."""
    path = Path(path)
    archive, root, records = _open_archive(path)
    with archive:
        try:
            unpickler = RestrictedUnpickler(records.read(f"{root}/data.pkl"), path, records, root)
            try:
                return unpickler.load()
            finally:
                unpickler.release()
        except CheckpointError:
            raise
        except LimitExceeded as error:
            raise CheckpointTooLarge(f"{path} was refused: {error} (more than a checkpoint of its size may make the "
                                  "reader allocate; refused before allocating it)") from None
        except Refused as error:
            raise CheckpointError(f"{path} was refused: {error} (outside the allow-list of a YOLOv8 checkpoint; "
                                  "nothing from the file was run)") from None
        except Exception as error:  # truncated records, bad CRC, a malformed pickle
            raise CheckpointError(f"cannot read checkpoint {path} ({_describe(error)}); the file is corrupted or "
                                  "truncated") from None
