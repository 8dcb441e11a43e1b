"""Batching: images stacked, targets padded to the batch's largest GT count with a mask.

Output dict (B images, M = largest GT count in the batch, possibly 0):
    images      uint8 [B, 3, H, W], channels-last strides (the trainer converts to float / 255 on the device);
                in a DataLoader worker a LeasedImages, which arrives in the main process as that tensor
    boxes       float32 [B, M, 4] xyxy px in the (augmented or letterboxed) image
    labels      int64 [B, M]
    gt_mask     bool [B, M], True for real GTs
    image_ids   int64 [B]
    orig_sizes  int64 [B, 2] (H, W) of the original image
    letterbox   float32 [B, 3] (scale, pad_x, pad_y); (1, 0, 0) without letterbox
    left_out    list[str]: the images of the batch that could not be used (a val set's
                ``left_out_item``s, detector/data/base.py), "path: reason"; B counts only the others
                (possibly 0: then images is uint8 [0, 3, 0, 0])
"""
from __future__ import annotations

import torch

from detector.data.shared_batch import for_handover, new_batch


def stack_images(images: list[torch.Tensor]) -> torch.Tensor:
    """[B, 3, H, W] in channels-last layout (strides of a [B, H, W, 3] array), the layout the
    trainer runs the model in. In a DataLoader worker the batch is written straight into shared
    memory, a segment reused once the main process has let go of it (detector/data/shared_batch.py),
    so handing it over copies nothing more.
    The training pipeline hands over HWC images as [3, H, W] views: each lands with one plain copy
    (a planar NCHW batch would need a strided copy per image)."""
    first = images[0]
    channels, height, width = first.shape
    out = new_batch((len(images), height, width, channels), like=first)
    for i, image in enumerate(images):
        out[i].copy_(image.permute(1, 2, 0))  # a plain copy when the image is an HWC view
    return out.permute(0, 3, 1, 2)


def collate_detection(batch: list[tuple[torch.Tensor, dict]]) -> dict:
    left_out = [target["left_out"] for image, target in batch if image is None]
    if left_out:
        batch = [item for item in batch if item[0] is not None]
    images = stack_images([image for image, _ in batch]) if batch else torch.zeros(0, 3, 0, 0, dtype=torch.uint8)
    size = len(batch)
    max_gt = max((len(t["labels"]) for _, t in batch), default=0)
    boxes = torch.zeros(size, max_gt, 4, dtype=torch.float32)
    labels = torch.zeros(size, max_gt, dtype=torch.int64)
    mask = torch.zeros(size, max_gt, dtype=torch.bool)
    for i, (_, target) in enumerate(batch):
        n = len(target["labels"])
        boxes[i, :n] = target["boxes"].float()
        labels[i, :n] = target["labels"]
        mask[i, :n] = True
    return {
        "images": for_handover(images), "boxes": boxes, "labels": labels, "gt_mask": mask,
        "image_ids": torch.tensor([int(t["image_id"]) for _, t in batch], dtype=torch.int64),
        "orig_sizes": torch.tensor([list(t["orig_size"]) for _, t in batch], dtype=torch.int64).reshape(-1, 2),
        "letterbox": torch.tensor([list(t.get("letterbox", (1.0, 0.0, 0.0))) for _, t in batch],
                                  dtype=torch.float32).reshape(-1, 3),
        "left_out": left_out,
    }
