"""Bounds on what a foreign checkpoint may make the reader allocate, whatever sizes the file declares.

Every size in a checkpoint is a claim of the file: a zip record's uncompressed size, a storage's
element count in a persistent id, a tensor's shape and strides, the objects a pickle's opcodes
build. A file of a few hundred bytes can claim gigabytes. Each claim is checked against what the
file physically holds before anything is allocated, so that peak memory stays within a small
multiple of the file (units: bytes unless named):

- records (``RecordReader``): at most ``MAX_RECORDS``; a record's declared size must be the one its
  tensors declare; stored records together hold at most the file's bytes (so no two entries share
  data); deflated ones together expand to at most ``DEFLATE_RATIO`` x the file + ``DEFLATE_SLACK``;
  each is read to its declared size and no further, so a lying header cannot expand more.
- tensors (unpickler): inside their storage, never expanded (stride 0, overlapping strides), all
  together at most ``TENSOR_BYTES_PER_STORAGE_BYTE`` x the storages read + ``DEFLATE_SLACK``.
- pickle work (``WorkBudget``): a pickle has no loops, but an opcode can build a large object and an
  allowed call (``list(L)``, ``str`` of a nested list) can copy a large one. Each costs units of
  about 8 bytes of memory (``OPCODE_COST``, plus each element a call copies or an insert adds), at
  most ``WORK_PER_PICKLE_BYTE`` x the pickle's size (or the file's, if smaller: a deflated pickle),
  and at least ``MIN_WORK``. The genuine YOLOv8n pickle (96 KB) spends 3.6 units per byte; a pickle
  of nothing but the densest opcodes could take ~8 x 50 bytes per byte before it is refused.
  BYTEARRAY8, the one opcode that allocates before it reads, may not declare more than the pickle holds.
"""
from __future__ import annotations

import math
import pickle
import reprlib
import zipfile
from collections import OrderedDict

import torch

from detector.engine.checkpoint import CheckpointError

MAX_RECORDS = 100_000  # a YOLOv8x file has ~370; a zip's central directory costs ~300 bytes per entry
DEFLATE_RATIO = 100
DEFLATE_SLACK = 1 << 20
TENSOR_BYTES_PER_STORAGE_BYTE = 2  # tensors may view a storage twice (a weight and a slice of it), no more
WORK_PER_PICKLE_BYTE = 50
MIN_WORK = 1_000_000
MAX_DIMS = 32  # dimensions of one tensor
MAX_KEY_ITEMS = 256  # tuples inside one dict key or set item: hashing a tuple visits all of them, uncached
MAX_SOURCE = 256  # characters of one pickled class path
RECORD_TYPE_COST = 128  # work units of one Record class made for a pickled class path (~1 KB)
MAX_MODULES, MAX_MODULE_DEPTH = 100_000, 64  # of a pickled module tree (YOLOv8x: ~700 modules, 7 levels)

# What each opcode may allocate, in units of ~8 bytes (an object reference); 1 when not listed. Containers
# pay again per item as items go in (SETITEMS/ADDITEMS/calls), references that only move (APPENDS) do not.
OPCODE_COST = [1] * 256
for _op, _units in ((pickle.EMPTY_SET, 27), (pickle.FROZENSET, 27), (pickle.EMPTY_DICT, 8), (pickle.DICT, 8),
                    (pickle.EMPTY_LIST, 7), (pickle.LIST, 7), (pickle.TUPLE, 6), (pickle.TUPLE1, 6),
                    (pickle.TUPLE2, 7), (pickle.TUPLE3, 8), (pickle.REDUCE, 40), (pickle.NEWOBJ, 40),
                    (pickle.NEWOBJ_EX, 40), (pickle.INST, 40), (pickle.OBJ, 40), (pickle.BUILD, 16),
                    (pickle.PUT, 12), (pickle.BINPUT, 12), (pickle.LONG_BINPUT, 12), (pickle.MEMOIZE, 12),
                    (pickle.BINFLOAT, 3), (pickle.FLOAT, 3), (pickle.BININT, 4), (pickle.LONG1, 4),
                    (pickle.LONG4, 4), (pickle.MARK, 2)):
    OPCODE_COST[_op[0]] = _units
# Calls that copy a plain container: what each item copied costs.
CONTAINER_ITEM_COST = {list: 1, tuple: 1, set: 4, frozenset: 4, dict: 4, OrderedDict: 12}


class LimitExceeded(Exception):
    """The file declares more than it holds, or more work than its size allows; nothing was allocated."""


class CheckpointTooLarge(CheckpointError):
    """A checkpoint refused for a LimitExceeded: hostile or broken, never to be handed to another reader."""


class WorkBudget:
    """Units of pickle work left for one load (see the module docstring)."""

    def __init__(self, pickle_bytes: int):
        self.limit = max(MIN_WORK, WORK_PER_PICKLE_BYTE * pickle_bytes)
        self.left = self.limit

    def spend(self, units: int) -> None:
        self.left -= units
        if self.left < 0:
            self.exceeded()

    def exceeded(self):
        raise LimitExceeded(f"its pickle builds or copies more than {self.limit} units of objects "
                            f"({WORK_PER_PICKLE_BYTE} per byte of the pickle, at least {MIN_WORK})")

    @property
    def spent(self) -> int:
        return self.limit - self.left


class MeteredDispatch(dict):
    """An unpickler's opcode table for one load: looking an opcode up spends its OPCODE_COST."""

    def __init__(self, table: dict, work: WorkBudget):
        super().__init__(table)
        self.work = work

    def __getitem__(self, code: int):
        work = self.work
        work.left -= OPCODE_COST[code]
        if work.left < 0:
            work.exceeded()
        return dict.__getitem__(self, code)


class RecordReader:
    """Reads the records of one archive, each checked against its declaration and all against the file."""

    def __init__(self, archive: zipfile.ZipFile, file_bytes: int):
        count = len(archive.infolist())
        if count > MAX_RECORDS:
            raise LimitExceeded(f"its archive has {count} records (at most {MAX_RECORDS})")
        self.archive, self.file_bytes = archive, file_bytes
        self.stored = self.deflated = 0

    @property
    def total(self) -> int:
        return self.stored + self.deflated

    def read(self, name: str, expected: int | None = None, at_most: int | None = None) -> bytes:
        """The record's bytes; ``expected``: the size its tensors declare, ``at_most``: a bound for small ones."""
        try:
            info = self.archive.getinfo(name)
        except KeyError:
            raise LimitExceeded(f"its pickle names the record {name}, which the archive lacks") from None
        size = info.file_size
        if expected is not None and size != expected:
            raise LimitExceeded(f"the record {name} holds {size} bytes where its pickle declares {expected}")
        if at_most is not None and size > at_most:
            raise LimitExceeded(f"the record {name} declares {size} bytes (at most {at_most})")
        if info.compress_type == zipfile.ZIP_STORED:
            self.stored += size
            if self.stored > self.file_bytes:
                raise LimitExceeded(f"its stored records declare {self.stored} bytes, more than the file's "
                                    f"{self.file_bytes} (overlapping or lying entries)")
        else:
            self.deflated += size
            bound = DEFLATE_RATIO * self.file_bytes + DEFLATE_SLACK
            if self.deflated > bound:
                raise LimitExceeded(f"its compressed records declare {self.deflated} bytes uncompressed, more "
                                    f"than {DEFLATE_RATIO} x the file's {self.file_bytes} bytes + 1 MiB "
                                    f"(a decompression bomb); the record {name} alone declares {size}")
        with self.archive.open(info) as handle:
            data = handle.read(size + 1)  # zipfile stops at the declared size: one byte more shows a longer stream
        if len(data) != size:
            raise LimitExceeded(f"the record {name} holds {len(data)} bytes, not the {size} its header declares")
        return data


def check_view(size, stride, offset, available: int) -> int:
    """The element count of a tensor view (shape, strides, offset) over a storage of ``available``
    elements, refusing one that reaches outside the storage or addresses an element twice."""
    size, stride = _dims(size, "shape"), _dims(stride, "strides")
    if type(offset) is not int or not 0 <= offset < 1 << 62 or len(size) != len(stride):
        raise LimitExceeded(f"a tensor of shape {size} with strides {stride} at offset {short(offset)}")
    numel = math.prod(size)
    if numel == 0:
        return 0
    shown = f"a tensor of shape {size}, strides {stride}, offset {offset} over a storage of {available} elements"
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= available:
        raise LimitExceeded(f"{shown} reaches element {last}, past the storage's end")
    if numel > available - offset:
        raise LimitExceeded(f"{shown} has {numel} elements, more than the storage holds (stride 0 or overlapping "
                            "strides); refusing to expand it")
    if _overlaps(size, stride):
        raise LimitExceeded(f"{shown} has overlapping strides (an expanded view); refusing to materialise it")
    return numel


def _dims(values, what: str) -> tuple[int, ...]:
    if type(values) not in (tuple, list) or len(values) > MAX_DIMS \
            or not all(type(n) is int and 0 <= n < 1 << 62 for n in values):
        raise LimitExceeded(f"a tensor's {what} {short(values)} is not a list of at most {MAX_DIMS} "
                            "non-negative integers")
    return tuple(values)


def _overlaps(size: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """True when two indices may address one element: dimensions sorted by stride must each step over all
    the ones before. Stride 0 and expanded views fail, as may an exotic interleaving that torch.save of a
    module never writes."""
    extent = 0  # the largest offset the dimensions placed so far reach
    for step, n in sorted((s, n) for n, s in zip(size, stride) if n > 1):
        if step <= extent:
            return True
        extent += (n - 1) * step
    return False


def check_key(key) -> None:
    """Refuse a dict key or set item whose hash is costly: a tuple's hash visits its nested tuples, uncached."""
    if type(key) is not tuple:
        return  # str/bytes/int hash linearly in bytes the pickle holds; records, tensors and types by identity
    pending, seen = [key], 0
    while pending:
        item = pending.pop()
        seen += len(item)
        if seen > MAX_KEY_ITEMS:
            raise LimitExceeded(f"a dict key or set item nests more than {MAX_KEY_ITEMS} tuple items")
        pending.extend(x for x in item if type(x) is tuple)


def container_items(kind: type, args: tuple, kwargs: dict | None) -> int:
    """How many items ``kind(*args)`` copies (kind: a CONTAINER_ITEM_COST type); one plain container of
    cheaply hashed keys is the only argument accepted."""
    if kwargs or len(args) > 1:
        raise LimitExceeded(f"{kind.__name__}() with more than one argument")
    if not args:
        return 0
    items = args[0]
    if type(items) not in CONTAINER_ITEM_COST:
        raise LimitExceeded(f"{kind.__name__}() of a {type(items).__name__}, not of a plain container")
    if kind in (set, frozenset):
        for item in items:
            check_key(item)
    elif kind in (dict, OrderedDict) and not isinstance(items, dict):
        for pair in items:
            if type(pair) not in (tuple, list) or len(pair) != 2:
                raise LimitExceeded(f"{kind.__name__}() of a sequence that is not of pairs")
            check_key(pair[0])
    return len(items)


class _ShortRepr(reprlib.Repr):
    """reprlib for values from a file: plain containers abridged, anything else by its type's name only
    (a pickled class may be named 'list'; an int over 4300 digits has no str())."""

    PLAIN = (list, tuple, dict, set, frozenset, str)

    def __init__(self):
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother = 3, 60, 60

    def repr1(self, x, level):
        if type(x) in self.PLAIN:
            return super().repr1(x, level)
        if type(x) is OrderedDict:
            return self.repr_dict(x, level)
        if type(x) is int:
            return repr(x) if x.bit_length() <= 128 else f"<int of {x.bit_length()} bits>"
        if x is None or type(x) in (bool, float, torch.dtype):
            return repr(x)
        if type(x) in (bytes, bytearray):
            return repr(x[: self.maxstring])
        if isinstance(x, torch.Tensor):
            return f"<tensor of shape {tuple(x.shape)}, {x.dtype}>"
        return f"<{type(x).__name__[: self.maxother]}>"  # a Record: its pickled class name


_SHORT = _ShortRepr()


def short(value, limit: int = 120) -> str:
    """A repr of a value read from a file, at most ``limit`` characters however large or shared it is."""
    text = _SHORT.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
