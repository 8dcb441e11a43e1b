"""Our batches in YOLOv8's (ultralytics') form, for side-by-side runs: ``benchmarks/train.py``
feeds YOLOv8n the batches ours trains on, and ``tests/test_compare.py`` checks the conversion."""
from __future__ import annotations

import torch


def ultralytics_batch(batch: dict, imgsz: int) -> dict:
    """Our collated batch in YOLOv8's form: ``batch_idx [N]``, ``cls [N, 1]``, ``bboxes [N, 4]``
    normalised cx cy w h (ours: padded ``boxes [B, M, 4]`` xyxy px with ``gt_mask [B, M]``)."""
    mask = batch["gt_mask"]  # [B, M]
    boxes = batch["boxes"][mask]  # [N, 4] xyxy px
    cxcywh = torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], dim=1) / imgsz
    batch_idx = torch.arange(mask.shape[0]).unsqueeze(1).expand_as(mask)[mask].float()
    return {"batch_idx": batch_idx, "cls": batch["labels"][mask].float().unsqueeze(1), "bboxes": cxcywh}


def ultralytics_xyxy(raw):
    """ultralytics' eval output [B, 4 + C, A] (xywh px) -> ours [B, A, 4 + C] (xyxy px)."""
    import torch

    xy, wh = raw[:, :2], raw[:, 2:4]
    return torch.cat((xy - wh / 2, xy + wh / 2, raw[:, 4:]), 1).transpose(1, 2)
