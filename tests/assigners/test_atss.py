"""ATSSAssigner: a hand-worked two-level case, conflicts, empty batches, and a loop reference."""
from __future__ import annotations

import statistics

import pytest
import torch

from detector.assigners import ATSSAssigner
from detector.boxes import make_anchors

FAR = torch.tensor([100.0, 100.0, 101.0, 101.0])


def run_one(assigner, points, strides, preds, gt_boxes, gt_labels, num_classes):
    scores = torch.full((1, points.shape[0], num_classes), 0.5)
    gt_boxes = torch.tensor(gt_boxes, dtype=torch.float32)[None]
    gt_labels = torch.tensor(gt_labels)[None]
    return assigner(scores, preds[None], points, gt_labels, gt_boxes, torch.ones_like(gt_labels, dtype=torch.bool),
                    strides=strides)


def test_two_levels_hand_worked():
    # Level 1: 4x4 points of stride 8 (ids 0-15); level 2: 2x2 of stride 16 (ids 16-19).
    points, strides = make_anchors([(4, 4), (2, 2)], [8, 16])
    gt = [1.5, 1.0, 17.5, 13.0]  # centre (9.5, 7), 16 x 12
    # topk=2 per level: level 1 -> (12,4) id 1 and (12,12) id 5; level 2 -> (8,8) id 16, (24,8) id 17.
    # Anchor boxes (2 strides wide) give IoUs 148.5/299.5, 121.5/326.5, 192/1024 and 114/1102.
    ious = [148.5 / 299.5, 121.5 / 326.5, 192 / 1024, 114 / 1102]
    threshold = statistics.mean(ious) + statistics.stdev(ious)  # 0.4671
    assert ious[0] >= threshold > ious[1]
    preds = FAR.repeat(20, 1)
    preds[1] = torch.tensor([1.5, 1.0, 17.5, 7.0])  # half of the GT
    result = run_one(ATSSAssigner(num_classes=3, topk=2, anchor_scale=2.0), points, strides, preds, [gt], [2], 3)
    assert result.fg_mask[0].nonzero().flatten().tolist() == [1]
    assert result.labels[0, 1].item() == 2 and result.gt_index[0, 1].item() == 0
    assert result.scores[0, 1].tolist() == pytest.approx([0.0, 0.0, 0.5], abs=1e-6)  # IoU(pred, GT)
    assert result.bboxes[0, 1].tolist() == gt
    assert (result.labels[0, result.labels[0] != 2] == 3).all()


def test_conflict_goes_to_the_highest_anchor_iou():
    points, strides = make_anchors([(4, 4)], [8])
    big, small = [4.0, 4.0, 20.0, 20.0], [6.0, 6.0, 18.0, 18.0]  # both centred on point 5 (12, 12)
    preds = FAR.repeat(16, 1)
    preds[5] = torch.tensor(small)
    assigner = ATSSAssigner(num_classes=2, topk=1, anchor_scale=2.0)  # anchor box of point 5 == big
    for boxes, labels, winner in (([big, small], [0, 1], 0), ([small, big], [1, 0], 1)):
        result = run_one(assigner, points, strides, preds, boxes, labels, 2)
        assert result.fg_mask[0].nonzero().flatten().tolist() == [5]
        assert result.gt_index[0, 5].item() == winner
        assert result.labels[0, 5].item() == 0
        expected_quality = 144 / 256  # the prediction (small) against big
        assert result.scores[0, 5, 0].item() == pytest.approx(expected_quality, abs=1e-6)
    result = run_one(assigner, points, strides, preds, [big, big], [1, 0], 2)  # a tie: the lower index
    assert result.gt_index[0, 5].item() == 0 and result.labels[0, 5].item() == 1


def test_no_gt_and_missing_strides():
    points, strides = make_anchors([(4, 4)], [8])
    assigner = ATSSAssigner(num_classes=2)
    for num_gt in (0, 2):
        result = assigner(torch.rand(2, 16, 2), FAR.repeat(2, 16, 1), points, torch.zeros(2, num_gt, dtype=torch.long),
                          torch.rand(2, num_gt, 4), torch.zeros(2, num_gt, dtype=torch.bool), strides=strides)
        assert not result.fg_mask.any() and (result.labels == 2).all() and result.scores.abs().sum() == 0
    with pytest.raises(ValueError, match="strides"):
        assigner(torch.rand(1, 16, 2), FAR.repeat(1, 16, 1), points, torch.zeros(1, 1, dtype=torch.long),
                 torch.rand(1, 1, 4), torch.ones(1, 1, dtype=torch.bool))


def box_iou(a, b) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def atss_by_loops(inputs, num_classes, topk, anchor_scale):
    """The rules of the module docstring, one GT and one anchor at a time, in float64."""
    points, strides = inputs["anchor_points"].tolist(), inputs["strides"].tolist()
    batch, num_anchors = inputs["pred_scores"].shape[:2]
    labels = torch.full((batch, num_anchors), num_classes)
    quality = torch.zeros(batch, num_anchors)
    gt_index = torch.zeros(batch, num_anchors, dtype=torch.long)
    anchor_boxes = [[x - anchor_scale * s / 2, y - anchor_scale * s / 2, x + anchor_scale * s / 2,
                     y + anchor_scale * s / 2] for (x, y), s in zip(points, strides)]
    for b in range(batch):
        claims = {}
        for m in inputs["gt_mask"][b].nonzero().flatten().tolist():
            box = inputs["gt_bboxes"][b, m].tolist()
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            candidates = []
            for level in sorted(set(strides)):
                ids = [a for a in range(num_anchors) if strides[a] == level]
                ids.sort(key=lambda a: (points[a][0] - cx) ** 2 + (points[a][1] - cy) ** 2)
                candidates += ids[:topk]
            ious = [box_iou(anchor_boxes[a], box) for a in candidates]
            threshold = statistics.mean(ious) + (statistics.stdev(ious) if len(ious) > 1 else 0.0)
            for a, iou in zip(candidates, ious):
                x, y = points[a]
                if iou >= threshold and min(x - box[0], y - box[1], box[2] - x, box[3] - y) > 1e-9:
                    claims.setdefault(a, []).append((iou, -m))
        for a, claimants in claims.items():
            m = -max(claimants)[1]
            labels[b, a] = inputs["gt_labels"][b, m]
            gt_index[b, a] = m
            quality[b, a] = box_iou(inputs["pred_bboxes"][b, a].tolist(), inputs["gt_bboxes"][b, m].tolist())
    return labels, gt_index, quality


@pytest.mark.parametrize("seed,topk", [(0, 9), (1, 3), (2, 5)])
def test_agrees_with_a_loop_reference(make_batch, seed, topk):
    inputs = make_batch(2, 7, 4, [(8, 8), (4, 4), (2, 2)], [8, 16, 32], 64, seed=seed)
    result = ATSSAssigner(num_classes=4, topk=topk)(**inputs)
    labels, gt_index, quality = atss_by_loops(inputs, 4, topk, 8.0)
    assert torch.equal(result.labels, labels)
    assert torch.equal(result.gt_index, gt_index)
    assert int(result.fg_mask.sum()) > 5
    fg_scores = result.scores.gather(2, result.labels.clamp(max=3)[..., None])[..., 0] * result.fg_mask
    torch.testing.assert_close(fg_scores, quality, rtol=1e-5, atol=1e-6)


def test_gt_chunks_do_not_change_the_result(make_batch):
    inputs = make_batch(3, 10, 4, [(8, 8), (4, 4), (2, 2)], [8, 16, 32], 64, seed=7)
    whole = ATSSAssigner(num_classes=4)(**inputs)
    chunked = ATSSAssigner(num_classes=4, max_chunk_elements=84 * 3)(**inputs)  # 3 GT rows a chunk
    assert int(whole.fg_mask.sum()) > 5
    for a, b in zip(whole, chunked):
        assert torch.equal(a, b)
