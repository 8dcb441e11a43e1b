"""Val diagnostics (detector/eval/diagnostics.py) on hand-built cases: the confusion matrix, P, R
and F1 against the confidence, the F1-optimal confidence, calibration (ECE), the edges (no
detections, no GT, an image without GT), and an eval that writes every file."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from detector.eval.consistency import matched_score_iou
from detector.eval.diagnostics import (best_same_class_iou, calibration, compute_diagnostics, confusion_matrix,
                                       detection_boxes, expected_calibration_error, f1_optimal, greedy_match,
                                       ground_truth_boxes, normalise, precision_recall_at, same_key_pairs,
                                       scores_and_best_ious, true_positives, write_diagnostics)
from detector.eval.evaluator import score_detections
from detector.eval.report import format_class_table, format_metrics_table

A, B = 1, 2  # category ids of the classes "a" and "b"


def coco(annotations, images=(1, 2)):
    """A COCO dict of 100 x 100 images; annotations as (image_id, category_id, [x, y, w, h])."""
    return {"images": [{"id": i, "width": 100, "height": 100, "file_name": f"{i}.png"} for i in images],
            "categories": [{"id": A, "name": "a"}, {"id": B, "name": "b"}],
            "annotations": [{"id": n + 1, "image_id": i, "category_id": c, "bbox": box, "area": box[2] * box[3],
                             "iscrowd": 0} for n, (i, c, box) in enumerate(annotations)]}


def det(image_id, category_id, box, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": box, "score": score}


def arrays(gt, detections):
    truth, cat_ids = ground_truth_boxes(gt)
    return truth, detection_boxes(detections, cat_ids)


# --- the confusion matrix: rows true (a, b, background), columns predicted ---

def test_confusion_matrix_of_known_matches():
    gt = coco([(1, A, [0, 0, 10, 10]), (1, B, [20, 0, 10, 10]), (2, A, [0, 0, 10, 10])])
    detections = [det(1, A, [0, 0, 10, 10], 0.9),  # true positive a
                  det(1, A, [20, 0, 10, 10], 0.8),  # b taken for a
                  det(1, B, [50, 50, 10, 10], 0.7),  # b on background
                  det(2, A, [0, 0, 10, 10], 0.2)]  # under conf 0.25: image 2's a is missed
    counts = confusion_matrix(*arrays(gt, detections), num_classes=2)
    assert counts.tolist() == [[1, 0, 1],   # a: found once, missed once (background column)
                               [1, 0, 0],   # b: predicted as a
                               [0, 1, 0]]   # background: a false b
    rows = normalise(counts, "true")
    assert rows[0].tolist() == [0.5, 0, 0.5] and rows[1].tolist() == [1, 0, 0] and rows[2].tolist() == [0, 1, 0]
    columns = normalise(counts, "predicted")
    assert columns[:, 0].tolist() == [0.5, 0.5, 0] and columns[:, 2].tolist() == [1, 0, 0]


def test_confusion_thresholds_are_strict_as_ultralytics():
    gt = coco([(1, A, [0, 0, 10, 10])])
    at_iou = [det(1, A, [0, 0, 4.5, 10], 0.9)]  # IoU 45 / 100 = 0.45 exactly: not above 0.45
    assert confusion_matrix(*arrays(gt, at_iou), 2).tolist() == [[0, 0, 1], [0, 0, 0], [1, 0, 0]]
    at_conf = [det(1, A, [0, 0, 10, 10], 0.25)]  # score 0.25 exactly: not above conf 0.25, left out
    assert confusion_matrix(*arrays(gt, at_conf), 2).tolist() == [[0, 0, 1], [0, 0, 0], [0, 0, 0]]
    assert confusion_matrix(*arrays(gt, at_iou), 2, iou=0.4)[0, 0] == 1  # configurable


def test_greedy_matching_is_the_sequential_greedy():
    # pairs (detection, GT, IoU); GTs 0 = X, 1 = Y
    det_index, gt_index, iou = np.array([2, 1, 1, 0]), np.array([0, 0, 1, 1]), np.array([0.99, 0.95, 0.9, 0.8])
    by_iou = set(zip(*greedy_match(det_index, gt_index, iou)))
    assert by_iou == {(2, 0), (1, 1)}  # keeping each detection's best GT, then each GT's best, would lose (1, Y)
    by_score = set(zip(*greedy_match(det_index, gt_index, iou, det_rank=np.array([0, 1, 2]))))
    assert by_score == {(0, 1), (1, 0)}  # detection 0 first takes Y, its only one; 1 takes X; 2 finds none


def test_pairs_and_best_iou_equal_the_loops():
    rng = np.random.default_rng(0)
    det_keys, gt_keys = rng.integers(0, 6, 50), rng.integers(0, 6, 20)
    pairs = set(zip(*same_key_pairs(det_keys, gt_keys)))
    assert pairs == {(d, g) for d in range(50) for g in range(20) if det_keys[d] == gt_keys[g]}
    gt, detections = random_set(1)
    truth, dets = arrays(gt, detections)
    np.testing.assert_allclose(best_same_class_iou(truth, dets, 3), matched_score_iou(gt, detections)[1], atol=1e-12)
    detections += [det(0, 99, [0, 0, 50, 50], 0.5), det(1000, 1, [0, 0, 50, 50], 0.4)]  # unknown class, image
    for ours, loop in zip(scores_and_best_ious(gt, detections), matched_score_iou(gt, detections)):
        np.testing.assert_allclose(ours, loop, atol=1e-12)


def random_set(seed, images=12, classes=3):
    rng = np.random.default_rng(seed)
    gt = {"images": [{"id": i, "width": 400, "height": 300} for i in range(images)],
          "categories": [{"id": c + 1, "name": f"c{c}"} for c in range(classes)], "annotations": []}
    detections = []
    for i in range(images):
        for _ in range(int(rng.integers(0, 6))):
            w, h = rng.uniform(10, 120, 2)
            x, y, c = rng.uniform(0, 250), rng.uniform(0, 150), int(rng.integers(1, classes + 1))
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i, "category_id": c,
                                      "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            for _ in range(int(rng.integers(0, 4))):  # duplicates, some displaced
                detections.append(det(i, c, [x + rng.normal(0, 8), y + rng.normal(0, 8), w * rng.uniform(0.7, 1.3), h],
                                      float(rng.random())))
        for _ in range(int(rng.integers(0, 3))):
            detections.append(det(i, int(rng.integers(1, classes + 1)), [*rng.uniform(0, 250, 2),
                                  *rng.uniform(10, 80, 2)], float(rng.random())))
    return gt, detections


def test_matching_at_iou_half_is_cocoevals():
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, detections = random_set(2)
    truth, dets = arrays(gt, detections)
    tp = true_positives(truth, dets, 3)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dict(gt, info={}, licenses=[])
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(detections), "bbox")
        evaluator.evaluate()
    matched = {int(i) - 1 for e in evaluator.evalImgs if e is not None and e["aRng"] == [0, 1e10]
               for i, m in zip(e["dtIds"], e["dtMatches"][0]) if m > 0}  # result ids are 1 + the index
    assert 10 < len(matched) < len(detections) and set(np.flatnonzero(tp).tolist()) == matched


# --- P, R, F1 against the confidence ---

def ranked_set():
    """Class a, 3 GTs in image 1: 0.9 finds g1, 0.8 duplicates g1, 0.6 finds g2, 0.3 is on nothing; g3 missed."""
    gt = coco([(1, A, [0, 0, 10, 10]), (1, A, [20, 0, 10, 10]), (1, A, [40, 0, 10, 10])])
    detections = [det(1, A, [1, 0, 10, 10], 0.8), det(1, A, [0, 0, 10, 10], 0.9),  # the duplicate first in the list
                  det(1, A, [20, 0, 10, 10], 0.6), det(1, A, [70, 70, 10, 10], 0.3)]
    return gt, detections


def test_precision_and_recall_at_a_threshold_by_hand():
    gt, detections = ranked_set()
    truth, dets = arrays(gt, detections)
    tp = true_positives(truth, dets, 2)
    assert tp.tolist() == [False, True, True, False]  # in score order: the 0.9 takes g1, the 0.8 is a duplicate
    num_gt = [3, 0]
    for conf, (p, r) in {0.0: (2 / 4, 2 / 3), 0.5: (2 / 3, 2 / 3), 0.7: (1 / 2, 1 / 3), 0.85: (1, 1 / 3),
                         0.6: (1 / 2, 1 / 3),  # score > 0.6: the 0.6 itself is not kept
                         0.95: (0, 0)}.items():  # nothing kept: precision counts as 0
        precision, recall = precision_recall_at(dets.scores, dets.labels, tp, num_gt, conf)
        assert (precision[0], recall[0]) == pytest.approx((p, r)), conf
        assert (precision[1], recall[1]) == (0, 0)  # class b: no detection, no GT


def test_f1_optimal_confidence_is_the_middle_of_the_best_range():
    gt, detections = ranked_set()
    diagnostics = compute_diagnostics(gt, detections)
    # F1: {0.9} 1/2, {0.9, 0.8} 2/5, {.., 0.6} 2/3, all 4/7; the best 2/3 keeps score > t for 0.3 <= t < 0.6
    assert 0.3 <= diagnostics.conf < 0.6 and diagnostics.conf == pytest.approx(0.45, abs=2e-3)
    everything, a, b = diagnostics.table
    assert a["class"] == "a" and (a["P"], a["R"], a["F1"]) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    assert a["conf"] == pytest.approx(diagnostics.conf) and a["instances"] == 3 and a["images"] == 1
    assert (everything["P"], everything["R"]) == pytest.approx((2 / 3, 2 / 3))  # the mean over classes with GT: a
    assert b["instances"] == 0 and math.isnan(b["AP50"]) and math.isnan(b["conf"])
    assert math.isnan(f1_optimal(np.zeros(5), np.linspace(0, 1, 5))[1])  # F1 0 throughout: no best threshold
    assert f1_optimal(np.array([0.1, 0.5, 0.5, 0.5, 0.2]), np.arange(5.0)) == (2, 2.0)


def test_table_uses_one_confidence_for_every_class_and_cocos_ap():
    gt = coco([(1, A, [0, 0, 10, 10]), (1, B, [30, 30, 20, 20]), (2, B, [0, 0, 30, 30])])
    detections = [det(1, A, [0, 0, 10, 10], 0.9), det(1, B, [30, 30, 20, 20], 0.5), det(2, B, [60, 60, 9, 9], 0.7)]
    diagnostics = compute_diagnostics(gt, detections)
    precision, recall = precision_recall_at(*[np.array(v) for v in ([0.9, 0.5, 0.7], [0, 1, 1],
                                                                     [True, True, False])], [1, 2], diagnostics.conf)
    for row, p, r in zip(diagnostics.table[1:], precision, recall):
        assert (row["P"], row["R"]) == pytest.approx((p, r))
    result = score_detections(gt, detections)
    assert diagnostics.table[0]["AP50"] == pytest.approx(result.metrics["AP50"])
    assert diagnostics.table[0]["AP"] == pytest.approx(result.metrics["AP"])
    assert [row["AP"] for row in diagnostics.table[1:]] == pytest.approx(list(result.per_class.values()))
    assert diagnostics.table[2]["images"] == 2 and diagnostics.table[0]["images"] == 2


# --- calibration ---

def test_ece_by_hand():
    assert expected_calibration_error([0.8] * 5, [0.6] * 5) == pytest.approx(0.2)  # one bin, off by 0.2
    c = calibration([0.8] * 5, [0.6] * 5)
    assert c.count[8] == 5 and c.count.sum() == 5 and math.isnan(c.mean_score[0])
    # bins [0.1, 0.2): two exact; [0.9, 1.0]: one 0.6 too confident, the score 1.0 included -> 2/4 * 0.4
    assert expected_calibration_error([0.15, 0.15, 0.95, 1.0], [0.15, 0.15, 0.35, 0.8]) == pytest.approx(0.2)
    assert expected_calibration_error([], []) == 0.0


def test_ece_is_a_metric_of_every_eval():
    gt = coco([(1, A, [0, 0, 10, 10])])
    result = score_detections(gt, [det(1, A, [0, 0, 6, 10], 0.8)])  # IoU 60 / 100
    assert result.metrics["ECE"] == pytest.approx(0.2)
    assert "ECE" in format_metrics_table(result.metrics) and result.gt is gt


# --- edges ---

def test_no_detections():
    gt = coco([(1, A, [0, 0, 10, 10]), (2, B, [0, 0, 10, 10])])
    diagnostics = compute_diagnostics(gt, [])
    assert diagnostics.confusion.tolist() == [[0, 0, 1], [0, 0, 1], [0, 0, 0]]  # every GT missed
    assert math.isnan(diagnostics.conf) and diagnostics.calibration.ece == 0.0
    assert diagnostics.table[0]["P"] == 0 and diagnostics.table[0]["R"] == 0 and diagnostics.table[0]["AP50"] == 0
    assert "F1-optimal confidence - (" in format_class_table(diagnostics).splitlines()[0]


def test_no_ground_truth():
    gt = coco([])
    diagnostics = compute_diagnostics(gt, [det(1, A, [0, 0, 10, 10], 0.9), det(2, B, [0, 0, 10, 10], 0.1)])
    assert diagnostics.confusion.tolist() == [[0, 0, 0], [0, 0, 0], [1, 0, 0]]  # the 0.1 is under conf
    everything = diagnostics.table[0]
    assert everything["instances"] == 0 and math.isnan(everything["P"]) and math.isnan(everything["AP"])
    assert diagnostics.calibration.ece == pytest.approx(0.5)  # mean score, every IoU 0
    json.dumps(diagnostics.to_json(), allow_nan=False)  # strict JSON: null where undefined


def test_an_image_without_ground_truth_and_one_not_scored():
    gt = coco([(1, A, [0, 0, 10, 10])], images=(1, 2))
    detections = [det(1, A, [0, 0, 10, 10], 0.9), det(2, A, [0, 0, 10, 10], 0.8),  # image 2 has no GT
                  det(3, A, [0, 0, 10, 10], 0.95)]  # image 3 is not in the json (not scored): dropped
    diagnostics = compute_diagnostics(gt, detections)
    assert diagnostics.confusion.tolist() == [[1, 0, 0], [0, 0, 0], [1, 0, 0]]
    assert diagnostics.table[1]["P"] == pytest.approx(1.0)  # F1 best above 0.8: only image 1's
    assert 0.8 <= diagnostics.conf < 0.9
    assert diagnostics.calibration.count.sum() == 2


# --- the files ---

def test_write_diagnostics_writes_the_files(tmp_path):
    gt, detections = random_set(3)
    diagnostics = write_diagnostics(tmp_path, detections, gt)
    for name in ("confusion_matrix", "confusion_matrix_normalized", "P_curve", "R_curve", "F1_curve", "PR_curve",
                 "reliability"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000 and name in diagnostics.figures
    written = json.loads((tmp_path / "diagnostics.json").read_text())
    assert written["confusion_matrix"]["labels"] == ["c0", "c1", "c2", "background"]
    assert np.array(written["confusion_matrix"]["counts"]).sum() >= len(gt["annotations"])
    rows = list(csv.DictReader((tmp_path / "per_class.csv").open()))
    assert [r["class"] for r in rows] == ["all", "c0", "c1", "c2"] and set(rows[0]) >= {"P", "R", "AP50", "AP", "conf"}


def red_set(root, count=4):
    for i in range(count):
        pixels = np.zeros((64, 64, 3), np.uint8)
        pixels[8:40, 8:30 + i] = (255, 0, 0)
        (root / "images" / "val").mkdir(parents=True, exist_ok=True)
        (root / "labels" / "val").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / "images" / "val" / f"{i}.png")
        (root / "labels" / "val" / f"{i}.txt").write_text(f"0 {(38 + i) / 128} {48 / 128} {(22 + i) / 64} {32 / 64}\n")
    return root


class FusableRedBoxes(torch.nn.Module):
    """The red-box detector as evaluate_from_config takes a model: a class count and for_inference()."""
    num_classes = 1

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def for_inference(self, device=None):
        return self

    def predict(self, images, **kwargs):
        return self.inner.predict(images, **kwargs)


def eval_cfg(root, **extra):
    data = {"_target_": "detector.data.yolo_splits", "root": str(root), "train_split": "val", "val_split": "val",
            "names": ["a"], "cache_dir": str(root / "cache")}
    return OmegaConf.create({"data": data, "imgsz": 64, "batch_size": 2, "workers": 0, "device": "cpu",
                             "conf": 0.001, "iou": 0.7, "max_det": 300, "backend": "faster", "rect": False, **extra})


def test_evaluate_from_config_writes_the_diagnostics(tmp_path, red_box_model, capsys, monkeypatch):
    from detector.engine.evaluation import evaluate_from_config

    monkeypatch.setenv("DETECTOR_CACHE", str(tmp_path / "user_cache"))
    root = red_set(tmp_path / "set")
    out = tmp_path / "eval"
    result = evaluate_from_config(eval_cfg(root, val_batches=1), FusableRedBoxes(red_box_model), {}, out,
                                  data_given=True)
    printed = capsys.readouterr().out
    assert result.metrics["AP"] == pytest.approx(1.0) and result.metrics["ECE"] == pytest.approx(0.0, abs=1e-3)
    assert "ECE" in printed and "F1-optimal confidence" in printed and "instances" in printed
    for name in ("confusion_matrix.png", "confusion_matrix_normalized.png", "P_curve.png", "R_curve.png",
                 "F1_curve.png", "PR_curve.png", "reliability.png", "diagnostics.json", "per_class.csv"):
        assert (out / name).stat().st_size > 100, name
    assert sorted(p.name for p in out.glob("val_batch*.jpg")) == ["val_batch0.jpg"]
    assert Image.open(out / "val_batch0.jpg").size == (2 * 640 + 8, 640 + 22)  # 2 x 2 tiles of 320, GT | predictions
    assert json.loads((out / "metrics.json").read_text())["metrics"]["ECE"] == pytest.approx(0.0, abs=1e-3)
    assert json.loads((out / "diagnostics.json").read_text())["confusion_matrix"]["counts"] == [[4, 0], [0, 0]]

    off = tmp_path / "off"
    evaluate_from_config(eval_cfg(root, diagnostics=False), FusableRedBoxes(red_box_model), {}, off, data_given=True)
    assert (off / "metrics.json").is_file() and not (off / "diagnostics.json").exists()
    assert not list(off.glob("*_curve.png")) and "AP@[.5:.95]" in capsys.readouterr().out


def test_ece_reaches_the_ablation_table(tmp_path):
    from detector.ablation import load_runs, markdown_table, summarise

    for name, final in (("0", {"AP": 0.4, "ECE": 0.12}), ("1", {"AP": 0.3})):  # run 1 from before ECE
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(f"- loss_cls={'qfl' if name == '0' else 'bce'}\n")
        (tmp_path / name / "summary.json").write_text(json.dumps({"final": final, "train_seconds": 60}))
    lines = markdown_table(summarise(load_runs(tmp_path))).splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head[:5] == ["arm", "runs", "AP", "AP 95% CI", "ECE"]
    assert [c.strip() for c in lines[2].strip("|").split("|")][4] == "0.120"
    assert [c.strip() for c in lines[3].strip("|").split("|")][4] == "-"
