"""Training throughput of model n at 640, batch 8, with the step split into its parts.

data (TrainDataset with mosaic, one process, per batch), forward, assignment, loss (criterion
minus assignment), backward, optimizer. Uses COCO128 when ../shared/data/coco128 (or
$COCO128) exists, else the shapes set. Times are medians over the measured steps, in ms.
"""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import torch

from detector.assigners import TaskAlignedAssigner
from detector.data.collate import collate_detection
from detector.data.pipeline import TrainDataset
from detector.engine.optim import build_optimizer
from detector.losses.criterion import DetectionCriterion
from detector.losses.modules import DistributionFocalLoss, IoULoss, QualityFocalLoss
from detector.models.detector import build_model

PARTS = ("data", "forward", "assignment", "loss", "backward", "optimizer")


class TimedAssigner:
    """Wraps an assigner and records how long each call takes."""

    def __init__(self, assigner):
        self.assigner, self.seconds = assigner, 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        result = self.assigner(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        return result


def coco128_root() -> Path | None:
    """$COCO128, else ../shared/data/coco128 beside the checkout, when it holds images/train2017."""
    root = Path(os.environ.get("COCO128", Path(__file__).resolve().parents[3] / "shared" / "data" / "coco128"))
    return root if (root / "images" / "train2017").is_dir() else None


def base_dataset():
    root = coco128_root()
    if root is not None:
        from detector.data.yolo import YoloDetection

        return "coco128", YoloDetection(root, "train2017")
    from detector.data.synthetic import shapes_splits

    return "shapes", shapes_splits(num_train=64, num_val=8).train


def run(quick: bool = False) -> list[dict]:
    imgsz, batch_size = (320, 4) if quick else (640, 8)
    steps, warmup = (2, 1) if quick else (6, 2)
    name, dataset = base_dataset()
    train_set = TrainDataset(dataset, imgsz=imgsz, seed=0)
    num_classes = len(dataset.names)
    model = build_model("n", num_classes=num_classes).train()
    assigner = TimedAssigner(TaskAlignedAssigner(num_classes=num_classes))
    criterion = DetectionCriterion(assigner=assigner, cls_loss=QualityFocalLoss(loss_weight=1.5),
                                   box_loss=IoULoss(kind="ciou", loss_weight=7.5),
                                   dfl_loss=DistributionFocalLoss(loss_weight=1.5))
    optimizer = build_optimizer(lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.937, nesterov=True), model, 5e-4)
    times = {part: [] for part in PARTS}
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        batch = collate_detection([train_set[(step * batch_size + i) % len(train_set)] for i in range(batch_size)])
        images = batch["images"].float() / 255
        t1 = time.perf_counter()
        outputs = model(images)
        t2 = time.perf_counter()
        assigner.seconds = 0.0
        losses = criterion(outputs, batch["labels"], batch["boxes"], batch["gt_mask"])
        t3 = time.perf_counter()
        (losses["loss"] * batch_size).backward()
        t4 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t5 = time.perf_counter()
        if step >= warmup:
            for part, seconds in zip(PARTS, (t1 - t0, t2 - t1, assigner.seconds, t3 - t2 - assigner.seconds,
                                             t4 - t3, t5 - t4)):
                times[part].append(seconds * 1000)
    medians = {part: statistics.median(values) for part, values in times.items()}
    step_ms = sum(medians.values())
    compute_ms = step_ms - medians["data"]
    rows = [{"data_set": name, "part": part, "ms": ms, "share_of_step": ms / step_ms} for part, ms in medians.items()]
    rows.append({"data_set": name, "part": "total step", "ms": step_ms, "share_of_step": 1.0})
    rows.append({"data_set": name, "part": f"images/s (imgsz {imgsz}, batch {batch_size}, data in-line)",
                 "ms": batch_size / step_ms * 1000, "share_of_step": ""})
    rows.append({"data_set": name, "part": "images/s (compute only: data in workers)",
                 "ms": batch_size / compute_ms * 1000, "share_of_step": ""})
    rows.append({"data_set": name, "part": "assignment + loss share of compute",
                 "ms": medians["assignment"] + medians["loss"],
                 "share_of_step": (medians["assignment"] + medians["loss"]) / compute_ms})
    return rows
