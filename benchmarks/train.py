"""Training throughput of model n at 640, batch 8, with the step split into its parts; and ours
beside ultralytics' model of the same name (YOLOv8n and YOLO11n by default), per training image.

    detector bench train                                  # the breakdown, then yolov8n and yolo11n side by side
    detector bench train --models yolo11n,yolo11s         # the breakdown, then these side by side

The breakdown: data (TrainDataset with mosaic, one process, per batch), forward, assignment, loss
(criterion minus assignment), backward, optimizer. Uses COCO128 when ../shared/data/coco128 (or
$COCO128) exists, else the shapes set. Times are medians over the measured steps, in ms.

Side by side (when ``ultralytics`` is importable; it is not a dependency): one training step as
each framework's trainer makes it, on the same pre-built batches (same images, batch, imgsz and
threads, data loading excluded): forward, loss with assignment (ours: the default BCE + CIoU + DFL
criterion with TAL, the model and batch channels-last as our trainer runs them; ultralytics: its
model's own ``v8DetectionLoss``, BCE + CIoU + DFL with its TAL, on NCHW batches as its collate
makes), backward, gradient clipping at 10, the SGD step (the same three parameter groups for both)
and the EMA update. The two alternate in interleaved rounds, so drift on a shared machine hits both
alike; each figure is the median over rounds, with the fastest and slowest round beside it.
"""
from __future__ import annotations

import importlib.util
import statistics
import time

import torch

from detector.assigners import TaskAlignedAssigner
from detector.data.collate import collate_detection
from detector.data.pipeline import TrainDataset
from detector.engine.build import batch_images
from detector.engine.ema import ModelEMA
from detector.engine.optim import build_optimizer
from detector.losses.criterion import DetectionCriterion
from detector.losses.modules import BCELoss, DistributionFocalLoss, IoULoss
from detector.models.detector import build_model
from tests.reference.coco128 import coco128_root
from tests.reference.yolov8 import ultralytics_batch

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


def base_dataset():
    root = coco128_root()
    if root is not None:
        from detector.data.yolo import YoloDetection

        return "coco128", YoloDetection(root, "train2017")
    from detector.data.synthetic import shapes_splits

    return "shapes", shapes_splits(num_train=64, num_val=8).train


SIDE_BY_SIDE = ("yolov8n", "yolo11n")


def run(quick: bool = False, models: list[str] | None = None) -> list[dict]:
    rows = breakdown(quick)
    if importlib.util.find_spec("ultralytics") is not None:
        imgsz, batch_size, rounds, steps = (320, 4, 2, 1) if quick else (640, 8, 5, 2)
        for name in models or SIDE_BY_SIDE:
            rows += side_by_side(name, imgsz=imgsz, batch_size=batch_size, rounds=rounds, steps=steps)
    return rows


def breakdown(quick: bool = False) -> list[dict]:
    imgsz, batch_size = (320, 4) if quick else (640, 8)
    steps, warmup = (2, 1) if quick else (6, 2)
    name, dataset = base_dataset()
    train_set = TrainDataset(dataset, imgsz=imgsz, seed=0)
    num_classes = len(dataset.names)
    model = build_model("n", num_classes=num_classes).train().to(memory_format=torch.channels_last)
    assigner = TimedAssigner(TaskAlignedAssigner(num_classes=num_classes))
    criterion = DetectionCriterion(assigner=assigner, cls_loss=BCELoss(loss_weight=0.5),
                                   box_loss=IoULoss(kind="ciou", loss_weight=7.5),
                                   dfl_loss=DistributionFocalLoss(loss_weight=1.5))
    optimizer = build_optimizer(lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.937, nesterov=True), model, 5e-4)
    times = {part: [] for part in PARTS}
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        batch = collate_detection([train_set[(step * batch_size + i) % len(train_set)] for i in range(batch_size)])
        images = batch_images(batch["images"], torch.device("cpu"), torch.channels_last)  # as the trainer
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


def sgd(model):
    """YOLOv8's SGD (lr 0.01, momentum 0.937, Nesterov) over the same three groups for both models."""
    return build_optimizer(lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.937, nesterov=True), model, 5e-4)


def make_batches(dataset, imgsz: int, batch_size: int, count: int) -> list[dict]:
    """``count`` collated batches of mosaics, built once so that both models see the same pixels."""
    train_set = TrainDataset(dataset, imgsz=imgsz, seed=0)
    return [collate_detection([train_set[(b * batch_size + i) % len(train_set)] for i in range(batch_size)])
            for b in range(count)]


class OurStep:
    def __init__(self, model_name: str, num_classes: int):
        self.name = f"ours ({model_name})"
        self.model = build_model(model_name, num_classes=num_classes).train().to(memory_format=torch.channels_last)
        self.criterion = DetectionCriterion(
            assigner=TaskAlignedAssigner(num_classes=num_classes), cls_loss=BCELoss(loss_weight=0.5),
            box_loss=IoULoss(kind="ciou", loss_weight=7.5), dfl_loss=DistributionFocalLoss(loss_weight=1.5))
        self.optimizer, self.ema = sgd(self.model), ModelEMA(self.model)

    def __call__(self, batch: dict) -> None:
        images = batch_images(batch["images"], torch.device("cpu"), torch.channels_last)  # as our trainer
        losses = self.criterion(self.model(images), batch["labels"], batch["boxes"], batch["gt_mask"])
        (losses["loss"] * images.shape[0]).backward()
        _step(self.model, self.optimizer)
        self.ema.update(self.model)


class UltralyticsStep:
    def __init__(self, model_name: str, num_classes: int, imgsz: int):
        from ultralytics.cfg import get_cfg
        from ultralytics.nn.tasks import DetectionModel
        from ultralytics.utils.torch_utils import ModelEMA as UltralyticsEMA

        self.name = f"{model_name} (ultralytics)"
        self.model = DetectionModel(f"{model_name}.yaml", nc=num_classes, verbose=False).train()
        self.model.args = get_cfg()  # box 7.5, cls 0.5, dfl 1.5: what its loss reads
        self.optimizer, self.ema, self.imgsz = sgd(self.model), UltralyticsEMA(self.model), imgsz

    def __call__(self, batch: dict) -> None:
        images = batch["images"].contiguous().float() / 255  # NCHW, as its collate (torch.stack) gives
        targets = ultralytics_batch(batch, self.imgsz)
        loss, _ = self.model.loss(targets, self.model(images))
        loss.sum().backward()  # its trainer's form: the 3 gains applied, times the batch size
        _step(self.model, self.optimizer)
        self.ema.update(self.model)


def _step(model, optimizer) -> None:
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def side_by_side(model_name: str = "yolov8n", imgsz: int = 640, batch_size: int = 8, rounds: int = 5, steps: int = 2,
                 warmup: int = 2) -> list[dict]:
    """Per training image: ours and ultralytics' ``model_name`` in ``rounds`` interleaved rounds of ``steps`` steps each."""
    from benchmarks.model import canonical

    model_name = canonical(model_name)
    name, dataset = base_dataset()
    num_classes = len(dataset.names)
    batches = make_batches(dataset, imgsz, batch_size, count=max(steps, warmup))
    torch.manual_seed(0)
    contenders = [OurStep(model_name, num_classes), UltralyticsStep(model_name, num_classes, imgsz)]
    for contender in contenders:
        for b in range(warmup):
            contender(batches[b % len(batches)])
    per_image = {c.name: [] for c in contenders}  # ms per training image, one value a round
    for r in range(rounds):
        for contender in contenders if r % 2 == 0 else contenders[::-1]:
            start = time.perf_counter()
            for b in range(steps):
                contender(batches[b % len(batches)])
            per_image[contender.name].append((time.perf_counter() - start) * 1000 / (steps * batch_size))
    setting = f"{name}, imgsz {imgsz}, batch {batch_size}, {torch.get_num_threads()} threads, {rounds} rounds"
    rows = []
    for contender in contenders:
        values = per_image[contender.name]
        rows.append({"data_set": setting, "part": f"train step per image: {contender.name}",
                     "ms": statistics.median(values), "share_of_step": f"{min(values):.1f}-{max(values):.1f}"})
    ours, theirs = (statistics.median(per_image[c.name]) for c in contenders)
    rows.append({"data_set": setting, "part": f"speed ours / ultralytics {model_name} (>1: ours faster)",
                 "ms": theirs / ours, "share_of_step": ""})
    return rows
