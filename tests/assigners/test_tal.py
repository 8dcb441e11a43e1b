"""TaskAlignedAssigner: hand-built grids, edge cases, and agreement with the dense reference."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from detector.assigners import TaskAlignedAssigner
from detector.assigners.base import AssignResult
from detector.boxes import aligned_iou, make_anchors
from tests.reference.assigner import dense_task_aligned_assign, make_inputs

# A 3x3 grid of stride 8: points (4|12|20, 4|12|20), index = 3 * row + col.
POINTS, STRIDES = make_anchors([(3, 3)], [8])
FAR = torch.tensor([100.0, 100.0, 101.0, 101.0])  # a predicted box that overlaps nothing
TIE_BREAKS = TaskAlignedAssigner.TIE_BREAKS


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


@pytest.mark.parametrize("tie_break", TIE_BREAKS)
def test_anchor_claimed_by_two_gts_goes_to_the_higher_ciou(tie_break):
    # No third GT holds point 4: both rules agree.
    box_a, box_b = [0.0, 0.0, 16.0, 16.0], [8.0, 8.0, 24.0, 24.0]  # both contain point 4 (12, 12)
    for pred_at_4, winner in ((box_b, 1), (box_a, 0)):
        preds = FAR.repeat(9, 1)
        preds[4] = torch.tensor(pred_at_4)
        scores = torch.full((9, 3), 0.5)
        result = call(TaskAlignedAssigner(num_classes=3, tie_break=tie_break), preds, scores, [box_a, box_b], [0, 2])
        assert result.fg_mask[0].nonzero().flatten().tolist() == [0, 1, 3, 4, 5, 7, 8]
        assert result.gt_index[0, 4].item() == winner
        assert result.labels[0, 4].item() == [0, 2][winner]
        assert result.bboxes[0, 4].tolist() == [box_a, box_b][winner]
        # the loser keeps its other candidates
        assert result.gt_index[0, [0, 1, 3]].tolist() == [0, 0, 0]
        assert result.gt_index[0, [5, 7, 8]].tolist() == [1, 1, 1]


def test_tie_break_rules_disagree_on_a_holder_that_did_not_pick_the_anchor():
    # topk=1. GTs A and B both pick point 4 (12, 12); GT C holds every point and its predicted box
    # at point 4 fits it exactly (CIoU 1), but C picks point 0 (same perfect box, higher score).
    box_a, box_b, box_c = [0.0, 0.0, 16.0, 16.0], [8.0, 8.0, 26.0, 26.0], [3.0, 3.0, 21.0, 21.0]
    preds = FAR.repeat(9, 1)
    preds[0] = preds[4] = torch.tensor(box_c)
    scores = torch.zeros(9, 2)
    scores[4] = torch.tensor([0.5, 0.1])  # A, B (class 0) prefer point 4; C (class 1) point 0
    scores[0] = torch.tensor([0.1, 0.9])
    ciou_a, ciou_b = (aligned_iou(torch.tensor(box), torch.tensor(box_c), kind="ciou").item()
                      for box in (box_a, box_b))
    assert ciou_a > ciou_b > 0  # A beats B among the claimants
    results = {rule: call(TaskAlignedAssigner(num_classes=2, topk=1, tie_break=rule), preds, scores,
                          [box_a, box_b, box_c], [0, 0, 1]) for rule in TIE_BREAKS}

    yolov8 = results["highest_iou_any"]  # C holds point 4 with CIoU 1: C gets it
    assert yolov8.fg_mask[0].nonzero().flatten().tolist() == [0, 4]
    assert yolov8.gt_index[0].tolist() == [2, 0, 0, 0, 2, 0, 0, 0, 0]
    assert yolov8.labels[0, [0, 4]].tolist() == [1, 1]
    assert yolov8.bboxes[0, 4].tolist() == box_c
    # C's positives 0 and 4: metric sqrt(0.9) and sqrt(0.1), best CIoU 1
    assert yolov8.scores[0, 0].tolist() == pytest.approx([0.0, 1.0], abs=1e-6)
    assert yolov8.scores[0, 4].tolist() == pytest.approx([0.0, 1 / 3], abs=1e-6)

    claimants = results["highest_iou_claimants"]  # A and B compete: A
    assert claimants.fg_mask[0].nonzero().flatten().tolist() == [0, 4]
    assert claimants.gt_index[0].tolist() == [2, 0, 0, 0, 0, 0, 0, 0, 0]
    assert claimants.labels[0, [0, 4]].tolist() == [1, 0]
    assert claimants.bboxes[0, 4].tolist() == box_a
    assert claimants.scores[0, 0].tolist() == pytest.approx([0.0, 1.0], abs=1e-6)
    assert claimants.scores[0, 4].tolist() == pytest.approx([ciou_a, 0.0], abs=1e-6)  # A's only positive


def test_tie_break_winner_without_other_positives_and_lowest_index_on_equal_ciou():
    # Two claimants A, B of point 4 and two more holders C, D (same box, so equal CIoU) that pick
    # nothing (their class scores are 0, so their metric is 0 everywhere and topk=1 picks a point
    # outside them): the lower index, C, gets point 4 and it is C's only positive.
    box_a, box_b, box_cd = [0.0, 0.0, 16.0, 16.0], [8.0, 8.0, 26.0, 26.0], [6.0, 6.0, 18.0, 18.0]
    preds = FAR.repeat(9, 1)
    preds[4] = torch.tensor([6.0, 6.0, 18.0, 18.0])
    scores = torch.zeros(9, 2)
    scores[4, 0] = 0.5
    result = call(TaskAlignedAssigner(num_classes=2, topk=1), preds, scores,
                  [box_a, box_b, box_cd, box_cd], [0, 0, 1, 1])
    assert result.fg_mask[0].nonzero().flatten().tolist() == [4]
    assert result.gt_index[0, 4].item() == 2
    assert result.labels[0, 4].item() == 1
    # C's metric at point 4 is 0 (score 0): a positive with target score 0, as in YOLOv8
    assert result.scores[0].abs().sum().item() == 0


def test_bad_tie_break_is_named():
    with pytest.raises(ValueError, match="tie_break must be one of highest_iou_any, highest_iou_claimants"):
        TaskAlignedAssigner(num_classes=2, tie_break="claimants")


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
    for name in ("fg_mask", "gt_index", "labels", "bboxes"):
        assert torch.equal(getattr(ours, name), getattr(reference, name)), name
    torch.testing.assert_close(ours.scores, reference.scores, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("seed,batch,num_gt,sizes,chunk", [
    (0, 2, 6, [(8, 8), (4, 4), (2, 2)], 1 << 22),
    (1, 3, 20, [(8, 8), (4, 4), (2, 2)], 200),  # several chunks of 2 rows
    (2, 1, 9, [(2, 2)], 1 << 22),  # A=4 < topk
    (3, 4, 1, [(6, 6), (3, 3)], 1),  # one row per chunk
    (4, 2, 0, [(8, 8)], 1 << 22),  # empty batch
])
@pytest.mark.parametrize("tie_break", TIE_BREAKS)
def test_agrees_with_dense_reference(make_batch, seed, batch, num_gt, sizes, chunk, tie_break):
    strides = [8, 16, 32][: len(sizes)]
    inputs = make_batch(batch, num_gt, 7, sizes, strides, 64, seed=seed)
    ours = TaskAlignedAssigner(num_classes=7, max_chunk_elements=chunk, tie_break=tie_break)(**inputs)
    del inputs["strides"]
    assert_same(ours, DENSE[tie_break](**inputs, num_classes=7))


@pytest.mark.parametrize("tie_break", TIE_BREAKS)
def test_agrees_with_dense_reference_at_full_resolution(tie_break):
    inputs = make_inputs(batch=2, num_gt=40, num_classes=80, seed=5)
    ours = TaskAlignedAssigner(num_classes=80, max_chunk_elements=8400 * 7, tie_break=tie_break)(**inputs)
    del inputs["strides"]
    reference = DENSE[tie_break](**inputs, num_classes=80)
    assert_same(ours, reference)
    assert int(reference.fg_mask.sum()) > 100


def test_rules_differ_on_crowded_random_inputs():
    # The case of the issue: crowded images move a fraction of a percent of the positives.
    inputs = make_inputs(batch=2, num_gt=120, num_classes=80, seed=7)
    results = [TaskAlignedAssigner(num_classes=80, tie_break=rule)(**inputs) for rule in TIE_BREAKS]
    assert torch.equal(results[0].fg_mask, results[1].fg_mask)  # only the owner changes
    moved = int((results[0].gt_index != results[1].gt_index)[results[0].fg_mask].sum())
    assert 0 < moved < 0.05 * int(results[0].fg_mask.sum())


@pytest.mark.parametrize("min_side", [16.0, 0.0])
def test_matches_ultralytics_task_aligned_assigner(make_batch, min_side):
    try:
        from ultralytics.utils.tal import TaskAlignedAssigner as UltralyticsTAL
    except ImportError:
        pytest.skip("ultralytics is not importable (pip install -e '.[compat]' to run this test)")
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    config = OmegaConf.load(Path(__file__).parents[2] / "configs" / "assigner" / "tal.yaml")
    # assigner=tal as the CLI builds it: GT sides under 16 px lengthened for candidates, as ultralytics 8.4
    # does with its middle stride (stride=[8, 16, 32]); 0 / stride=[0]: the boxes as they are
    ours_assigner = instantiate(config, num_classes=6, min_candidate_side=min_side)
    assert config.min_candidate_side == 16
    theirs_assigner = UltralyticsTAL(topk=10, num_classes=6, alpha=0.5, beta=6.0,
                                     stride=[8, 16, 32] if min_side else [0])
    checked = 0
    for seed in range(4):
        inputs = make_batch(3, 25, 6, [(16, 16), (8, 8), (4, 4)], [8, 16, 32], 128, seed=seed)
        ours = ours_assigner(**inputs)
        labels, boxes, scores, fg_mask, gt_index = theirs_assigner(
            inputs["pred_scores"], inputs["pred_bboxes"], inputs["anchor_points"],
            inputs["gt_labels"][..., None], inputs["gt_bboxes"], inputs["gt_mask"][..., None].float())
        assert torch.equal(ours.fg_mask, fg_mask)
        torch.testing.assert_close(ours.scores, scores.float(), rtol=1e-5, atol=1e-6)
        # labels, boxes and owner agree on every positive with a target score; the rest (score 0)
        # are the "every holder has CIoU 0" corner of the module docstring.
        scored = fg_mask & (scores.sum(-1) > 0)
        assert torch.equal(ours.gt_index[scored], gt_index[scored])
        assert torch.equal(ours.labels[scored], labels[scored])
        assert torch.equal(ours.bboxes[scored], boxes[scored])
        checked += int(scored.sum())
    assert checked > 200


def dense_yolov8_rule(
    pred_scores, pred_bboxes, anchor_points, gt_labels, gt_bboxes, gt_mask, num_classes, topk=10,
    alpha=0.5, beta=6.0, eps=1e-9,
):
    """YOLOv8's select_highest_overlaps on dense [B, M, A] tensors, ties and zero rows going to
    the lowest-index GT that holds the anchor (the module docstring's corner)."""
    batch, num_anchors, _ = pred_scores.shape
    num_gt = gt_bboxes.shape[1]
    if num_gt == 0:
        return dense_task_aligned_assign(pred_scores, pred_bboxes, anchor_points, gt_labels, gt_bboxes,
                                         gt_mask, num_classes)
    lt, rb = gt_bboxes[:, :, None, :2], gt_bboxes[:, :, None, 2:]  # [B, M, 1, 2]
    candidate = (torch.cat((anchor_points - lt, rb - anchor_points), -1).amin(-1) > eps) & gt_mask[:, :, None]
    b, m, a = candidate.nonzero(as_tuple=True)
    overlaps = torch.zeros(candidate.shape)  # [B, M, A]
    overlaps[b, m, a] = aligned_iou(gt_bboxes[b, m].float(), pred_bboxes[b, a].float(), kind="ciou").clamp(min=0)
    metric = torch.zeros(candidate.shape)
    metric[b, m, a] = pred_scores[b, a, gt_labels[b, m]].float().pow(alpha) * overlaps[b, m, a].pow(beta)
    top = metric.topk(min(topk, num_anchors), dim=-1).indices  # [B, M, k]
    positive = torch.zeros_like(candidate).scatter_(-1, top, True) & candidate
    holder = torch.where(candidate, overlaps, -1.0).argmax(dim=1)  # [B, A], lowest index on ties
    is_holder = torch.arange(num_gt)[None, :, None] == holder[:, None, :]  # [B, M, A]
    positive = torch.where(positive.sum(1, keepdim=True) > 1, is_holder, positive)
    fg_mask = positive.any(dim=1)
    gt_index = torch.where(fg_mask, positive.int().argmax(dim=1), 0)  # [B, A]
    metric, overlaps = metric * positive, overlaps * positive
    quality = (metric * overlaps.amax(-1, keepdim=True) / (metric.amax(-1, keepdim=True) + eps)).amax(1)
    image = torch.arange(batch)[:, None]
    assigned = torch.where(fg_mask, gt_labels[image, gt_index], 0)
    labels = torch.where(fg_mask, assigned, num_classes)
    bboxes = torch.where(fg_mask[..., None], gt_bboxes[image, gt_index], 0.0)
    scores = torch.nn.functional.one_hot(assigned, num_classes).float() * (quality * fg_mask)[..., None]
    return AssignResult(labels, bboxes, scores, fg_mask, gt_index)


DENSE = {"highest_iou_any": dense_yolov8_rule, "highest_iou_claimants": dense_task_aligned_assign}


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


def test_short_sides_are_lengthened_for_candidates_only():
    from detector.assigners.tal import lengthen_short_sides

    boxes = torch.tensor([[10.0, 20.0, 14.0, 60.0], [0.0, 0.0, 40.0, 40.0]])  # the first 4 px wide
    torch.testing.assert_close(lengthen_short_sides(boxes, 16.0), torch.tensor([[4.0, 20.0, 20.0, 60.0],
                                                                                [0.0, 0.0, 40.0, 40.0]]))
    assert lengthen_short_sides(boxes, 0.0) is boxes
    # a 4 x 4 GT between anchor centres (stride 8 grid at 4, 12, ...) holds none: no positive without the rule
    points = torch.tensor([[x, y] for y in (4.0, 12.0, 20.0) for x in (4.0, 12.0, 20.0)])
    scores = torch.full((1, 9, 2), 0.5)
    preds = torch.tensor([[5.0, 5.0, 11.0, 11.0]]).repeat(1, 9, 1)
    args = dict(pred_scores=scores, pred_bboxes=preds, anchor_points=points, gt_labels=torch.tensor([[1]]),
                gt_bboxes=torch.tensor([[[6.0, 6.0, 10.0, 10.0]]]), gt_mask=torch.tensor([[True]]))
    assert not TaskAlignedAssigner(num_classes=2, topk=4)(**args).fg_mask.any()
    result = TaskAlignedAssigner(num_classes=2, topk=4, min_candidate_side=16.0)(**args)
    assert result.fg_mask[0].nonzero().flatten().tolist() == [0, 1, 3, 4]  # centres 4 and 12 inside [0, 16]
    torch.testing.assert_close(result.bboxes[0, 0], torch.tensor([6.0, 6.0, 10.0, 10.0]))  # the real box as target
