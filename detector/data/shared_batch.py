"""Batch buffers that a DataLoader worker reuses once the main process has let go of them.

A worker hands each batch over in shared memory. torch allocates a new segment for every batch
(``posix_fallocate`` fills it with zeroed pages), the worker's writes then fault it in page by
page, and it is freed when the main process drops the batch: about 1 ms per 640 px image on the
2-core machine, a fifth of what the whole augmentation costs (docs/benchmarks.md).

Here each worker keeps up to ``SLOTS`` segments and writes a batch into one that the main process
no longer uses. The protocol is a lease per slot, one byte in a small flag array shared by the
worker and the main process (1 = free):

- the worker takes a free slot, sets its byte to 0 and writes the batch into the slot's segment;
- the images go over wrapped in ``LeasedImages``, whose unpickling in the main process gives back
  the plain tensor and registers a finalizer on its storage that sets the byte back to 1 when the
  last tensor viewing the segment (the batch, any slice or view of it) is gone;
- with no free slot (a consumer that keeps batches, e.g. ``list(loader)``) the worker allocates a
  fresh segment, as torch does, so a segment still in use is never written.

The one case this cannot see: a main process that passes the batch tensor on to another process
and drops it before that process is done with it. Outside a DataLoader worker nothing changes.
"""
from __future__ import annotations

import os
import weakref

import torch

SLOTS = 6  # in flight per worker: DataLoader prefetch (2) + the batch being used + the pin-memory copy + margin


class _Slots:
    """The worker's segments and their shared lease bytes (1 = free), made in the worker process."""

    def __init__(self):
        self.pid = os.getpid()
        self.free = torch.ones(SLOTS, dtype=torch.uint8).share_memory_()
        self.storages: list[torch.UntypedStorage | None] = [None] * SLOTS

    def take(self, nbytes: int) -> torch.UntypedStorage:
        """A free slot's segment of at least ``nbytes`` (the slot marked taken), else a fresh one."""
        for slot, storage in enumerate(self.storages):
            if self.free[slot] and storage is not None and storage.nbytes() >= nbytes:
                self.free[slot] = 0
                return storage
        for slot, storage in enumerate(self.storages):
            if self.free[slot]:  # empty, or too small for this batch: (re)made at this size
                self.storages[slot] = torch.UntypedStorage._new_shared(nbytes)
                self.free[slot] = 0
                return self.storages[slot]
        return torch.UntypedStorage._new_shared(nbytes)


_slots: _Slots | None = None


def _worker_slots() -> _Slots:
    global _slots
    if _slots is None or _slots.pid != os.getpid():  # a forked worker starts with its own
        _slots = _Slots()
    return _slots


class LeasedImages:
    """A batch tensor in a leased segment, as the worker hands it to the main process."""

    def __init__(self, tensor: torch.Tensor, free: torch.Tensor, slot: int):
        self.tensor, self.free, self.slot = tensor, free, slot

    def __reduce__(self):
        return _received, (self.tensor, self.free, self.slot)


def _release(free: torch.Tensor, slot: int) -> None:
    free[slot] = 1


def _received(tensor: torch.Tensor, free: torch.Tensor, slot: int) -> torch.Tensor:
    """In the main process: the plain tensor, its slot freed once its storage is gone."""
    finalizer = weakref.finalize(tensor.untyped_storage(), _release, free, slot)
    finalizer.atexit = False
    return tensor


def new_batch(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised ``like.dtype`` tensor of ``shape``: in a DataLoader worker in shared
    memory, a reused segment when one is free (hand it over through ``for_handover``); elsewhere
    plain memory."""
    if torch.utils.data.get_worker_info() is None:
        return like.new_empty(shape)
    numel = 1
    for size in shape:
        numel *= size
    storage = _worker_slots().take(numel * like.element_size())
    return like.new_empty(0).set_(storage, 0, shape)


def for_handover(tensor: torch.Tensor) -> torch.Tensor | LeasedImages:
    """What the worker puts in the batch for ``tensor`` (a view of a ``new_batch`` tensor): its
    lease when the tensor lies in a slot's segment, else the tensor itself."""
    if _slots is not None and _slots.pid == os.getpid():
        pointer = tensor.untyped_storage().data_ptr()
        for slot, storage in enumerate(_slots.storages):
            if storage is not None and storage.data_ptr() == pointer and not _slots.free[slot]:
                return LeasedImages(tensor, _slots.free, slot)
    return tensor
