"""Val images that cannot be used leave the metric with their boxes (never replaced by a neighbour,
whose detections would then count twice); a val set without boxes says that AP is undefined."""
from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from detector.data import CocoDetection, yolo_splits
from detector.data.collate import collate_detection
from detector.data.pipeline import TrainDataset
from detector.engine.build import build_val_loader
from detector.eval.evaluator import NO_BOXES, evaluate
from detector.eval.report import format_metrics_table, write_eval_outputs


@pytest.fixture(autouse=True)
def fresh_warnings(tmp_path, monkeypatch):
    """Once-per-process warnings forgotten, label caches in the test's folder."""
    monkeypatch.setattr("detector.data.index._reported", set())
    monkeypatch.setenv("DETECTOR_CACHE", str(tmp_path / "user_cache"))


def red_set(root, count=4, labelled=True):
    """``count`` 64 x 64 PNGs with a red block of its own size each, labelled (or not) in YOLO layout."""
    for i in range(count):
        x1, y1, x2, y2 = 8, 8 + i, 30 + i, 40
        pixels = np.zeros((64, 64, 3), np.uint8)
        pixels[y1:y2, x1:x2] = (255, 0, 0)
        (root / "images" / "val").mkdir(parents=True, exist_ok=True)
        (root / "labels" / "val").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / "images" / "val" / f"{i}.png")
        line = f"0 {(x1 + x2) / 128} {(y1 + y2) / 128} {(x2 - x1) / 64} {(y2 - y1) / 64}\n"
        (root / "labels" / "val" / f"{i}.txt").write_text(line if labelled else "")
    return root


def cut_short(path):
    path.write_bytes(path.read_bytes()[:60])  # the header reads (the image is indexed), the pixels do not


def splits_of(root):
    return yolo_splits(root=str(root), train_split="val", val_split="val", names=["a"], cache_dir=str(root / "c"))


def loader(splits, rect, batch_size=2):
    cfg = OmegaConf.create({"imgsz": 64, "val_batch_size": batch_size, "workers": 0})
    return build_val_loader(cfg, splits.val, rect=rect)


@pytest.mark.parametrize("rect", [False, True])
def test_an_undecodable_val_image_leaves_both_detections_and_ground_truth(tmp_path, caplog, rect, red_box_model):
    root = red_set(tmp_path / "set")
    cut_short(root / "images" / "val" / "1.png")
    splits = splits_of(root)
    with caplog.at_level(logging.WARNING, logger="detector"):
        result = evaluate(red_box_model, loader(splits, rect), splits.val_ann_file, [1], progress=False)
    # before: 1.png was replaced by 2.png, whose box then counted twice, and 1.png's box as missed (AP 0.69)
    assert sorted(d["image_id"] for d in result.detections) == [0, 2, 3]
    assert result.metrics["AP"] == pytest.approx(1.0) and result.metrics["AR100"] == pytest.approx(1.0)
    path = root / "images" / "val" / "1.png"
    assert result.left_out == [f"{path}: cannot be decoded (truncated or not an image)"]
    assert f"1 val image could not be decoded and was left out of the metric: {path}" in caplog.text


def test_a_batch_left_out_whole_is_skipped(tmp_path, red_box_model):
    root = red_set(tmp_path / "set")
    for name in ("0.png", "1.png"):
        cut_short(root / "images" / "val" / name)
    splits = splits_of(root)
    batches = list(loader(splits, rect=False))
    assert batches[0]["images"].shape == (0, 3, 0, 0) and batches[0]["image_ids"].tolist() == []
    assert len(batches[0]["left_out"]) == 2 and batches[1]["image_ids"].tolist() == [2, 3]
    result = evaluate(red_box_model, loader(splits, rect=False), splits.val_ann_file, [1], progress=False)
    assert result.metrics["AP"] == pytest.approx(1.0) and len(result.left_out) == 2


def test_direct_use_raises_and_training_still_replaces(tmp_path, caplog):
    from detector.data.base import ImageDecodeError

    root = red_set(tmp_path / "set")
    cut_short(root / "images" / "val" / "1.png")
    splits = splits_of(root)
    with pytest.raises(ImageDecodeError, match=r"1\.png: cannot be decoded"):
        splits.train[1]  # a data set used directly never gives another image in its place
    train = TrainDataset(splits.train, imgsz=64, mosaic=0.0)
    with caplog.at_level(logging.WARNING, logger="detector"):
        _, target = train[1]
    assert target["image_id"] == 2 and "1.png cannot be decoded (truncated or not an image): skipped" in caplog.text


def test_coco_images_missing_on_disk_leave_the_metric_and_are_counted(tmp_path, caplog, red_box_model):
    images = tmp_path / "images"
    red_set(tmp_path / "yolo")
    records, annotations = [], []
    for i in range(3):
        (images / f"{i}.png").parent.mkdir(exist_ok=True)
        (images / f"{i}.png").write_bytes((tmp_path / "yolo" / "images" / "val" / f"{i}.png").read_bytes())
        records.append({"id": 10 + i, "file_name": f"{i}.png", "width": 64, "height": 64})
        annotations.append({"id": i + 1, "image_id": 10 + i, "category_id": 1, "bbox": [8, 8 + i, 22 + i, 32 - i],
                            "area": 1.0, "iscrowd": 0})
    ann = tmp_path / "val.json"
    ann.write_text(json.dumps({"images": records, "annotations": annotations, "categories": [{"id": 1, "name": "a"}]}))
    (images / "2.png").unlink()
    val = CocoDetection(images, ann)
    val_loader = build_val_loader(OmegaConf.create({"imgsz": 64, "val_batch_size": 2, "workers": 0}), val)
    with caplog.at_level(logging.WARNING, logger="detector"):
        result = evaluate(red_box_model, val_loader, str(ann), [1], progress=False)
    assert result.metrics["AP"] == pytest.approx(1.0) and result.not_scored == 1  # before: 2.png's box was missed
    assert "1 image is not in the val set (missing on disk" in caplog.text


def test_a_val_set_without_boxes_says_ap_is_undefined(tmp_path, caplog, red_box_model):
    splits = splits_of(red_set(tmp_path / "set", labelled=False))
    with caplog.at_level(logging.WARNING, logger="detector"):
        result = evaluate(red_box_model, loader(splits, rect=False), splits.val_ann_file, [1], progress=False)
    assert result.undefined == NO_BOXES and math.isnan(result.metrics["AP"])  # before: AP -1
    assert "the val set has no labelled boxes: AP is undefined" in caplog.text
    assert "AP @[IoU=0.50:0.95 | area=all | maxDets=100]" in format_metrics_table(result.metrics)
    assert "-1.0000" not in format_metrics_table(result.metrics) and "undefined" in format_metrics_table(result.metrics)
    write_eval_outputs(tmp_path / "out", result, ["a"])
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())  # strict JSON: null, not NaN
    assert written["metrics"]["AP"] is None and written["undefined"] == NO_BOXES


def test_collate_drops_left_out_items_and_lists_them():
    good = (torch.zeros(3, 8, 8, dtype=torch.uint8),
            {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "image_id": 3, "orig_size": (8, 8)})
    batch = collate_detection([(None, {"image_id": 2, "left_out": "x.png: cannot be decoded"}), good])
    assert batch["images"].shape == (1, 3, 8, 8) and batch["image_ids"].tolist() == [3]
    assert batch["left_out"] == ["x.png: cannot be decoded"] and batch["letterbox"].shape == (1, 3)
    assert collate_detection([good])["left_out"] == []
