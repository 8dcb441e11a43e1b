"""Against ultralytics itself (a test-only peer; skipped without it): raw-output parity at scales n
and s, predict parity on COCO128 images, and real files of other tasks/architectures refused."""
import os
import re
from copy import deepcopy
from datetime import datetime

import numpy as np
import pytest
import torch

from detector.engine.checkpoint import CheckpointError
from detector.interop import load_ultralytics

from tests.reference.yolov8 import ultralytics_xyxy

os.environ.setdefault("YOLO_OFFLINE", "1")  # no update checks or downloads from a test


def save_like_trainer(model, path, ultralytics):
    """What ultralytics' trainer writes: EMA weights in fp16 under 'ema', no live 'model', train args."""
    ema = deepcopy(model).half()
    for p in ema.parameters():
        p.requires_grad = False
    torch.save({"epoch": 0, "best_fitness": None, "model": None, "ema": ema, "updates": 10, "optimizer": None,
                "train_args": {"imgsz": 224, "model": "yolov8.yaml"}, "train_metrics": {"fitness": np.float64(0.1)},
                "date": datetime.now().isoformat(), "version": ultralytics.__version__}, path)
    return path


def calibrated(model):
    """Real BatchNorm statistics from random batches, so outputs are not the ~constant of an untrained net."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(2, 3, 160, 160))
        for box in model.model[-1].cv2:  # boxes of tens of pixels, as a trained model gives (not 500 px)
            box[-1].weight.mul_(0.5)
            box[-1].bias.copy_((-1.0 * torch.arange(16, dtype=torch.float32)).repeat(4))
    return model.eval()


@pytest.mark.parametrize("scale", ["n", "s"])
def test_raw_output_equals_ultralytics(tmp_path, ultralytics, scale):
    from ultralytics import YOLO
    from ultralytics.nn.tasks import load_checkpoint

    torch.manual_seed(0)
    built = calibrated(YOLO(f"yolov8{scale}.yaml").model)
    built.names = {i: f"thing{i}" for i in range(80)}
    path = save_like_trainer(built, tmp_path / f"yolov8{scale}.pt", ultralytics)
    reference = load_checkpoint(str(path))[0].float().eval()
    ours, report = load_ultralytics(path)
    assert report["model_args"]["scale"] == scale and report["weights"] == "ema"
    assert report["mapped"] == report["total"] - 1 and ours.names[7] == "thing7"
    images = torch.rand(2, 3, 160, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ultralytics_xyxy(reference(images)[0])
        got = ours(images)
        exact = ultralytics_xyxy(reference.double()(images.double())[0])
        got_exact = ours.double()(images.double())
    assert got.shape == expected.shape == (2, 735, 84)  # 20x28 + 10x14 + 5x7 anchors
    assert (got - expected).abs().max() < 1e-4
    assert (got_exact - exact).abs().max() < 1e-9  # in float64: the same function, to rounding
    assert expected[..., 4:].std() > 1e-3  # scores vary: the comparison is not between constants


@pytest.mark.coco128
def test_predict_matches_ultralytics_predict_on_coco128(ultralytics, ul_checkpoint, coco128_root):
    """Same letterbox on both sides: square (ultralytics' predict pads to a stride multiple unless
    rect=False) and no resize (images whose long side is 640, at imgsz 640; we resize down with
    INTER_AREA, ultralytics with INTER_LINEAR). ultralytics' predict keeps one class per box; ours
    is multi-label (as ultralytics' validator): each of ours it lacks must be a second label of a box."""
    from ultralytics import YOLO

    from detector.data.base import read_image
    from detector.predict import TorchPredictor, predict_image
    from detector.interop import load_ultralytics as load

    files = [p for p in sorted((coco128_root / "images" / "train2017").glob("*.jpg"))
             if max(read_image(p).shape[:2]) == 640][:6]
    conf, iou = 0.05, 0.7
    results = YOLO(str(ul_checkpoint)).predict([str(f) for f in files], imgsz=640, conf=conf, iou=iou, rect=False,
                                               device="cpu", verbose=False, save=False)
    predictor = TorchPredictor(load(ul_checkpoint)[0])
    total = 0
    for path, result in zip(files, results):
        ours = predict_image(predictor, read_image(path), imgsz=640, conf=conf, iou=iou)
        ref_boxes, ref_scores = result.boxes.xyxy, result.boxes.conf
        ref_labels = result.boxes.cls.long()
        matched = set()
        for box, score, label in zip(ref_boxes, ref_scores, ref_labels):
            close = ((ours["boxes"] - box).abs().max(1).values < 1.0) & (ours["labels"] == label) & \
                    ((ours["scores"] - score).abs() < 1e-3)
            assert close.any(), f"{path.name}: ultralytics' {box.tolist()} {float(score):.4f} {int(label)} not found"
            matched.add(int(close.nonzero()[0]))
        for i in set(range(len(ours["scores"]))) - matched:  # a second class on a box ultralytics kept once
            same_box = (ours["boxes"] - ours["boxes"][i]).abs().max(1).values < 1e-3
            assert (same_box & (ours["scores"] > ours["scores"][i])).any(), f"{path.name}: extra detection {i}"
        total += len(ref_scores)
    assert total > 0


@pytest.mark.parametrize("config, what", [
    ("yolov8n-seg.yaml", "a segmentation model (YOLOv8-seg style)"), ("yolov8n-pose.yaml", "a pose-estimation model"),
    ("yolov8n-cls.yaml", "a classification model"), ("yolov8n-obb.yaml", "an oriented-box (OBB) model"),
    ("yolov5n.yaml", "a YOLOv5u model (C3 blocks)"),
])
def test_real_files_of_other_tasks_are_refused(tmp_path, ultralytics, config, what):
    from ultralytics import YOLO

    path = save_like_trainer(YOLO(config).model, tmp_path / config.replace(".yaml", ".pt"), ultralytics)
    with pytest.raises(CheckpointError, match=re.escape(f"is {what}; this project builds YOLOv8 detection models")):
        load_ultralytics(path)
