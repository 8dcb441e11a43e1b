import contextlib
import copy
import io

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.eval import coco_metrics, score_iou_consistency
from detector.eval.coco import METRIC_NAMES
from detector.eval.evaluator import evaluate, to_coco_detections


def random_set(seed=0, images=30, classes=7):
    rng = np.random.default_rng(seed)
    gt = {"images": [], "annotations": [], "categories": [{"id": c * 3 + 1, "name": f"c{c}"} for c in range(classes)]}
    dets = []
    for image_id in range(1, images + 1):
        gt["images"].append({"id": image_id, "width": 640, "height": 480})
        for _ in range(int(rng.integers(0, 8))):  # some images have no GT
            w, h = rng.uniform(4, 200, 2)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            cat = int(rng.integers(0, classes)) * 3 + 1
            crowd = int(rng.random() < 0.1)
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image_id, "category_id": cat,
                                      "bbox": [x, y, w, h], "area": w * h, "iscrowd": crowd})
            if rng.random() < 0.8:
                dets.append({"image_id": image_id, "category_id": cat if rng.random() < 0.9 else 1,
                             "bbox": [x + rng.normal(0, 5), y + rng.normal(0, 5), w * rng.uniform(0.8, 1.2), h],
                             "score": float(rng.random())})
        for _ in range(int(rng.integers(0, 4))):  # false positives, also on images without GT
            dets.append({"image_id": image_id, "category_id": int(rng.integers(0, classes)) * 3 + 1,
                         "bbox": [*rng.uniform(0, 400, 2), *rng.uniform(5, 100, 2)], "score": float(rng.random())})
    return gt, dets


def reference(gt, dets):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        e = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return dict(zip(METRIC_NAMES, e.stats))


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
@pytest.mark.parametrize("seed", [0, 1])
def test_identical_to_pycocotools(backend, seed):
    gt, dets = random_set(seed)
    ours, ref = coco_metrics(gt, dets, backend=backend), reference(gt, dets)
    assert set(ours) == set(METRIC_NAMES)
    for name in METRIC_NAMES:
        assert ours[name] == pytest.approx(ref[name], abs=1e-6), name


def tiny_gt():
    return {"images": [{"id": 1, "width": 100, "height": 100}],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "area": 2500, "iscrowd": 0}]}


def test_perfect_and_wrong_class_detections():
    perfect = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9}]
    assert coco_metrics(tiny_gt(), perfect)["AP"] == pytest.approx(1.0)
    wrong = [{"image_id": 1, "category_id": 2, "bbox": [10, 10, 50, 50], "score": 0.9}]
    assert coco_metrics(tiny_gt(), wrong)["AP"] == 0.0
    assert all(v == 0.0 for v in coco_metrics(tiny_gt(), []).values())


def test_consistency_on_constructed_cases():
    gt = tiny_gt()
    shifts = [0, 5, 10, 20, 30]
    dets = [{"image_id": 1, "category_id": 1, "bbox": [10 + s, 10, 50, 50], "score": 0.0} for s in shifts]
    ious = [(50 - s) * 50 / (2 * 2500 - (50 - s) * 50) for s in shifts]
    for det, iou in zip(dets, ious):
        det["score"] = iou
    c = score_iou_consistency(gt, dets)
    assert c["spearman"] == pytest.approx(1.0) and c["pearson"] == pytest.approx(1.0) and c["num_pairs"] == 5
    for det, iou in zip(dets, ious):
        det["score"] = 1 - iou
    assert score_iou_consistency(gt, dets)["spearman"] == pytest.approx(-1.0)
    assert score_iou_consistency(gt, dets[:1]) == {"spearman": 0.0, "pearson": 0.0, "num_pairs": 1}


def test_mapping_back_through_letterbox_is_exact():
    original = torch.tensor([[12.5, 30.0, 80.0, 99.0]])
    scale, pad_x, pad_y = 0.64, 0.0, 16.0
    letterboxed = original * scale + torch.tensor([pad_x, pad_y, pad_x, pad_y])
    pred = [{"boxes": letterboxed, "scores": torch.tensor([0.5]), "labels": torch.tensor([1])}]
    dets = to_coco_detections(pred, torch.tensor([3]), torch.tensor([[scale, pad_x, pad_y]]),
                              torch.tensor([[100, 100]]), [5, 9])
    assert dets == [{"image_id": 3, "category_id": 9, "bbox": [12.5, 30.0, 67.5, 69.0], "score": 0.5}]


class PerfectModel:
    """Predicts the GT boxes of each batch (in letterboxed pixels)."""

    def predict(self, images, conf, iou, max_det):
        return [{"boxes": b[m], "scores": torch.full((int(m.sum()),), 0.9), "labels": l[m]}
                for b, l, m in zip(self.batch["boxes"], self.batch["labels"], self.batch["gt_mask"])]


def test_evaluate_end_to_end_with_a_perfect_model(tmp_path):
    import json

    gt = tiny_gt()
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    scale, pad = 0.64, 18.0
    batch = {"images": torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "image_ids": torch.tensor([1]),
             "orig_sizes": torch.tensor([[100, 100]]), "letterbox": torch.tensor([[scale, pad, pad]]),
             "boxes": torch.tensor([[[10.0, 10.0, 60.0, 60.0]]]) * scale + pad, "labels": torch.tensor([[0]]),
             "gt_mask": torch.tensor([[True]])}
    model = PerfectModel()
    model.batch = batch
    result = evaluate(model, [batch], str(path), [1, 2], progress=False)
    assert result.metrics["AP"] == pytest.approx(1.0) and result.per_class["a"] == pytest.approx(1.0)
    from detector.eval.report import format_metrics_table, write_eval_outputs

    assert "AP @[IoU=0.50:0.95" in format_metrics_table(result.metrics)
    write_eval_outputs(tmp_path / "out", result, ["a", "b"])
    for name in ("detections.json", "metrics.json", "pr_curves.png", "score_vs_iou.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
