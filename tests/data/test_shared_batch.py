"""Reused worker batch buffers: batches stay intact however the consumer holds them, slots are
freed only when every view of a batch is gone, and segments really are reused."""
import gc
import os

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from detector.data import shared_batch
from detector.data.collate import collate_detection
from detector.data.shared_batch import LeasedImages, SLOTS, _received


class Numbered(Dataset):
    """Image i is filled with i % 251 (uint8 HWC viewed as [3, H, W]), one box."""

    def __len__(self):
        return 64

    def __getitem__(self, i):
        image = torch.full((24, 20, 3), i % 251, dtype=torch.uint8).permute(2, 0, 1)
        target = {"boxes": torch.tensor([[1.0, 2.0, 5.0, 9.0]]), "labels": torch.tensor([i % 3]),
                  "image_id": i, "orig_size": (24, 20)}
        return image, target


def batch_values(batch) -> list[int]:
    images = batch["images"]
    assert isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.shape[1:] == (3, 24, 20)
    values = images.amin(dim=(1, 2, 3))
    assert torch.equal(values, images.amax(dim=(1, 2, 3)))  # each image one value: nothing half-overwritten
    return values.tolist()


def expected(batch_size=4) -> list[list[int]]:
    return [list(range(i, i + batch_size)) for i in range(0, 64, batch_size)]


def segment_inode(images: torch.Tensor) -> int:
    fd, _ = images.untyped_storage()._share_fd_cpu_()
    return os.fstat(fd).st_ino


@pytest.mark.parametrize("keep_all", [False, True])
def test_worker_batches_intact_whether_dropped_or_kept(keep_all):
    loader = DataLoader(Numbered(), batch_size=4, num_workers=1, collate_fn=collate_detection)
    if keep_all:  # every batch still held while later ones arrive: no slot may be reused under it
        batches = list(loader)
        assert [batch_values(b) for b in batches] == expected()
        assert [b["image_ids"].tolist() for b in batches] == expected()
    else:
        inodes = set()
        for batch, want in zip(loader, expected()):
            assert batch_values(batch) == want
            inodes.add(segment_inode(batch["images"]))
        assert len(inodes) <= SLOTS  # 16 batches through a handful of reused segments


def test_view_kept_after_batch_dropped_keeps_its_slot():
    loader = iter(DataLoader(Numbered(), batch_size=4, num_workers=1, collate_fn=collate_detection))
    images = next(loader)["images"]
    # a tensor on the same memory that does not hold the batch tensor itself (as .numpy() or set_ make)
    kept = torch.empty(0, dtype=torch.uint8).set_(images.untyped_storage(), images.stride(0),
                                                  (2,) + images.shape[1:], images.stride())
    del images
    later = [batch_values(next(loader)) for _ in range(15)]
    assert later == expected()[1:]
    assert kept.amin(dim=(1, 2, 3)).tolist() == [1, 2] and kept.amax(dim=(1, 2, 3)).tolist() == [1, 2]


def test_slot_freed_when_last_view_goes():
    free = torch.zeros(3, dtype=torch.uint8)
    tensor = torch.arange(24, dtype=torch.uint8).reshape(2, 3, 4)
    received = _received(tensor, free, 1)
    assert received is tensor
    view = received.permute(0, 2, 1)[:, 1:]
    del tensor, received
    gc.collect()
    assert free.tolist() == [0, 0, 0]  # a view still holds the storage
    del view
    gc.collect()
    assert free.tolist() == [0, 1, 0]


def test_outside_workers_nothing_changes():
    batch = collate_detection([Numbered()[i] for i in range(3)])
    assert isinstance(batch["images"], torch.Tensor) and not batch["images"].is_shared()
    assert batch_values(batch) == [0, 1, 2]
    assert batch["images"].is_contiguous(memory_format=torch.channels_last)


def test_slots_taken_fresh_when_all_leased(monkeypatch):
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())
    monkeypatch.setattr(shared_batch, "_slots", None)
    tensors = [shared_batch.new_batch((2, 8), like=torch.zeros(1, dtype=torch.uint8)) for _ in range(SLOTS + 2)]
    handed = [shared_batch.for_handover(t) for t in tensors]
    assert all(isinstance(h, LeasedImages) for h in handed[:SLOTS])
    assert all(h is t for h, t in zip(handed[SLOTS:], tensors[SLOTS:]))  # fresh segments, no lease
    assert len({t.untyped_storage().data_ptr() for t in tensors}) == SLOTS + 2
    shared_batch._slots.free[2] = 1  # the main process let go of slot 2
    again = shared_batch.new_batch((2, 8), like=torch.zeros(1, dtype=torch.uint8))
    assert again.untyped_storage().data_ptr() == tensors[2].untyped_storage().data_ptr()
    bigger = shared_batch.new_batch((4, 8), like=torch.zeros(1, dtype=torch.uint8))
    assert not isinstance(shared_batch.for_handover(bigger), LeasedImages)  # no free slot left
