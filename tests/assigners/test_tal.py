"""TaskAlignedAssigner: hand-built grids, edge cases, and agreement with the dense reference."""
from __future__ import annotations

import math

import pytest
import torch

from detector.assigners import TaskAlignedAssigner
from detector.benchmarks.assigner import dense_task_aligned_assign, make_inputs
from detector.boxes import aligned_iou, make_anchors

# A 3x3 grid of stride 8: points (4|12|20, 4|12|20), index = 3 * row + col.
POINTS, STRIDES = make_anchors([(3, 3)], [8])
FAR = torch.tensor([100.0, 100.0, 101.0, 101.0])  # a predicted box that overlaps nothing


def call(assigner, preds, scores, gt_boxes, gt_labels, gt_mask=None):
    """One image: preds [A, 4], scores [A, C], gt_boxes [M, 4], gt_labels [M]."""
    gt_boxes = torch.tensor(gt_boxes, dtype=torch.float32).reshape(1, -1, 4)
    gt_labels = torch.tensor(gt_labels, dtype=torch.long).reshape(1, -1)
    gt_mask = torch.ones_like(gt_labels, dtype=torch.bool) if gt_mask is None else torch.tensor([gt_mask])
    return assigner(scores[None], preds[None], POINTS, gt_labels, gt_boxes, gt_mask, strides=STRIDES)


def ciou_16x16_vs_16x8() -> float:
    """CIoU of GT (0,0,16,16) and prediction (0,0,16,8), by the paper's formula."""
    iou = 128 / 256
    rho2_over_c2 = 16 / (16**2 + 16**2)  # centres (8,8) and (8,4); enclosing box 16 x 16
    v = 4 / math.pi**2 * (math.atan(1) - math.atan(2)) ** 2
    return iou - rho2_over_c2 - v * v / (1 - iou + v)


def one_gt_preds():
    preds = FAR.repeat(9, 1)
    preds[0] = preds[4] = torch.tensor([0.0, 0.0, 16.0, 16.0])  # CIoU 1
    preds[1] = preds[3] = torch.tensor([0.0, 0.0, 16.0, 8.0])
    preds[2] = torch.tensor([0.0, 0.0, 16.0, 16.0])  # perfect, but its point (20, 4) lies outside
    scores = torch.zeros(9, 2)
    scores[:, 1] = torch.tensor([0.9, 1.0, 1.0, 1.0, 0.4, 0.0, 0.0, 0.0, 0.0])
    return preds, scores


def test_one_gt_topk2_takes_the_two_best_candidates():
    preds, scores = one_gt_preds()
    result = call(TaskAlignedAssigner(num_classes=2, topk=2), preds, scores, [[0, 0, 16, 16]], [1])
    assert result.fg_mask[0].nonzero().flatten().tolist() == [0, 4]
    assert result.labels[0].tolist() == [1, 2, 2, 2, 1, 2, 2, 2, 2]
    # metric = sqrt(score) * 1^6, normalised so the best (anchor 0) gets the best CIoU, 1.
    assert result.scores[0, 0].tolist() == pytest.approx([0.0, 1.0], abs=1e-6)
    assert result.scores[0, 4].tolist() == pytest.approx([0.0, math.sqrt(0.4 / 0.9)], abs=1e-6)
    assert result.scores[0, [1, 2, 3, 5, 6, 7, 8]].abs().sum() == 0
    assert torch.equal(result.bboxes[0, 0], torch.tensor([0.0, 0.0, 16.0, 16.0]))
    assert result.bboxes[0, 1].abs().sum() == 0
    assert result.gt_index[0].tolist() == [0] * 9


def test_one_gt_default_topk_takes_every_candidate():
    preds, scores = one_gt_preds()
    result = call(TaskAlignedAssigner(num_classes=2), preds, scores, [[0, 0, 16, 16]], [1])
    assert result.fg_mask[0].nonzero().flatten().tolist() == [0, 1, 3, 4]  # the points inside
    ciou = ciou_16x16_vs_16x8()
    expected_1 = 1.0 * ciou**6 / math.sqrt(0.9)  # metric / best metric * best CIoU (1)
    assert result.scores[0, 1, 1].item() == pytest.approx(expected_1, rel=1e-4)
    assert result.scores[0, 3, 1].item() == pytest.approx(expected_1, rel=1e-4)


def test_anchor_claimed_by_two_gts_goes_to_the_higher_ciou():
    box_a, box_b = [0.0, 0.0, 16.0, 16.0], [8.0, 8.0, 24.0, 24.0]  # both contain point 4 (12, 12)
    for pred_at_4, winner in ((box_b, 1), (box_a, 0)):
        preds = FAR.repeat(9, 1)
        preds[4] = torch.tensor(pred_at_4)
        scores = torch.full((9, 3), 0.5)
        result = call(TaskAlignedAssigner(num_classes=3), preds, scores, [box_a, box_b], [0, 2])
        assert result.fg_mask[0].nonzero().flatten().tolist() == [0, 1, 3, 4, 5, 7, 8]
        assert result.gt_index[0, 4].item() == winner
        assert result.labels[0, 4].item() == [0, 2][winner]
        assert result.bboxes[0, 4].tolist() == [box_a, box_b][winner]
        # the loser keeps its other candidates
        assert result.gt_index[0, [0, 1, 3]].tolist() == [0, 0, 0]
        assert result.gt_index[0, [5, 7, 8]].tolist() == [1, 1, 1]


def test_gt_smaller_than_a_stride():
    preds = FAR.repeat(9, 1)
    preds[0] = torch.tensor([2.0, 2.0, 6.0, 6.0])
    scores = torch.full((9, 1), 0.25)
    # (1,1,7,7) holds point 0; (13,13,15,15) holds none; (4,4,8,8) has point 0 on its edge.
    result = call(TaskAlignedAssigner(num_classes=1), preds, scores,
                  [[1, 1, 7, 7], [13, 13, 15, 15], [4, 4, 8, 8]], [0, 0, 0])
    assert result.fg_mask[0].nonzero().flatten().tolist() == [0]
    assert result.gt_index[0, 0].item() == 0
    assert result.scores[0, 0, 0].item() == pytest.approx(16 / 36, abs=1e-6)  # its only IoU


def test_padded_gts_are_ignored():
    preds, scores = one_gt_preds()
    assigner = TaskAlignedAssigner(num_classes=2)
    plain = call(assigner, preds, scores, [[0, 0, 16, 16]], [1])
    padded = call(assigner, preds, scores, [[0, 0, 24, 24], [0, 0, 16, 16], [0, 0, 24, 24]], [-1, 1, -1],
                  gt_mask=[False, True, False])
    for name in ("labels", "bboxes", "scores", "fg_mask"):
        assert torch.equal(getattr(plain, name), getattr(padded, name)), name
    assert torch.equal(padded.gt_index, plain.gt_index + plain.fg_mask.long())  # GT 0 is now GT 1


@pytest.mark.parametrize("num_gt", [0, 3])
def test_no_gt_gives_all_background(num_gt):
    batch, num_classes = 2, 4
    scores = torch.rand(batch, 9, num_classes)
    preds = FAR.repeat(batch, 9, 1)
    gt_bboxes = torch.tensor([0.0, 0.0, 24.0, 24.0]).repeat(batch, num_gt, 1)
    gt_labels = torch.zeros(batch, num_gt, dtype=torch.long)
    gt_mask = torch.zeros(batch, num_gt, dtype=torch.bool)
    result = TaskAlignedAssigner(num_classes=num_classes)(scores, preds, POINTS, gt_labels, gt_bboxes, gt_mask)
    assert not result.fg_mask.any()
    assert (result.labels == num_classes).all()
    assert result.scores.abs().sum() == 0 and result.bboxes.abs().sum() == 0
    assert (result.gt_index == 0).all()
    assert result.scores.shape == (batch, 9, num_classes)


def test_normalisation_and_topk_bound_on_random_inputs(make_batch):
    topk = 3
    inputs = make_batch(3, 12, 5, [(8, 8), (4, 4)], [8, 16], 64, seed=3)
    result = TaskAlignedAssigner(num_classes=5, topk=topk)(**inputs)
    checked = 0
    for b, m in inputs["gt_mask"].nonzero().tolist():
        mine = result.fg_mask[b] & (result.gt_index[b] == m)
        assert int(mine.sum()) <= topk
        if not mine.any():
            continue
        box = inputs["gt_bboxes"][b, m]
        points = inputs["anchor_points"][mine]
        assert ((points > box[:2]) & (points < box[2:])).all()  # positives are inside the GT
        ciou = aligned_iou(box.expand(int(mine.sum()), 4), inputs["pred_bboxes"][b, mine], kind="ciou").clamp(min=0)
        label = int(inputs["gt_labels"][b, m])
        metric = inputs["pred_scores"][b, mine, label].sqrt() * ciou.pow(6)
        # The best anchor gets the best CIoU, up to the eps guard of the division.
        expected = ciou.max() * metric.max() / (metric.max() + 1e-9)
        assert result.scores[b, mine, label].max().item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
        assert (result.labels[b, mine] == label).all()
        checked += 1
    assert checked >= 5


def assert_same(ours, reference):
    for name in ("labels", "fg_mask", "gt_index", "bboxes"):
        assert torch.equal(getattr(ours, name), getattr(reference, name)), name
    torch.testing.assert_close(ours.scores, reference.scores, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("seed,batch,num_gt,sizes,chunk", [
    (0, 2, 6, [(8, 8), (4, 4), (2, 2)], 1 << 22),
    (1, 3, 20, [(8, 8), (4, 4), (2, 2)], 200),  # several chunks of 2 rows
    (2, 1, 9, [(2, 2)], 1 << 22),  # A=4 < topk
    (3, 4, 1, [(6, 6), (3, 3)], 1),  # one row per chunk
    (4, 2, 0, [(8, 8)], 1 << 22),  # empty batch
])
def test_agrees_with_dense_reference(make_batch, seed, batch, num_gt, sizes, chunk):
    strides = [8, 16, 32][: len(sizes)]
    inputs = make_batch(batch, num_gt, 7, sizes, strides, 64, seed=seed)
    ours = TaskAlignedAssigner(num_classes=7, max_chunk_elements=chunk)(**inputs)
    del inputs["strides"]
    assert_same(ours, dense_task_aligned_assign(**inputs, num_classes=7))


def test_agrees_with_dense_reference_at_full_resolution():
    inputs = make_inputs(batch=2, num_gt=40, num_classes=80, seed=5)
    ours = TaskAlignedAssigner(num_classes=80, max_chunk_elements=8400 * 7)(**inputs)
    del inputs["strides"]
    reference = dense_task_aligned_assign(**inputs, num_classes=80)
    assert_same(ours, reference)
    assert int(reference.fg_mask.sum()) > 100


def test_half_precision_scores_are_promoted(make_batch):
    inputs = make_batch(2, 6, 3, [(8, 8)], [8], 64, seed=9)
    inputs["pred_scores"] = inputs["pred_scores"].half()
    half = TaskAlignedAssigner(num_classes=3)(**inputs)
    inputs["pred_scores"] = inputs["pred_scores"].float()  # the same values, in float32
    full = TaskAlignedAssigner(num_classes=3)(**inputs)
    assert half.scores.dtype == torch.float16
    assert torch.equal(half.fg_mask, full.fg_mask) and torch.equal(half.gt_index, full.gt_index)
    assert int(full.fg_mask.sum()) > 0
    torch.testing.assert_close(half.scores, full.scores.half())


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="pred_bboxes"):
        TaskAlignedAssigner(num_classes=2)(torch.rand(1, 9, 2), torch.rand(1, 8, 4), POINTS,
                                           torch.zeros(1, 1, dtype=torch.long), torch.rand(1, 1, 4),
                                           torch.ones(1, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="num_classes=3"):
        TaskAlignedAssigner(num_classes=3)(torch.rand(1, 9, 2), torch.rand(1, 9, 4), POINTS,
                                           torch.zeros(1, 1, dtype=torch.long), torch.rand(1, 1, 4),
                                           torch.ones(1, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="gt_labels"):
        TaskAlignedAssigner(num_classes=2)(torch.rand(1, 9, 2), torch.rand(1, 9, 4), POINTS,
                                           torch.full((1, 1), 5), torch.rand(1, 1, 4),
                                           torch.ones(1, 1, dtype=torch.bool))
