"""SimOTAAssigner: hand-built dynamic-k cases, the centre prior, conflicts, and a loop reference."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from detector.assigners import SimOTAAssigner
from detector.boxes import make_anchors

# A 4x4 grid of stride 8: points (4|12|20|28, ...), index = 4 * row + col.
POINTS, STRIDES = make_anchors([(4, 4)], [8])
FAR = torch.tensor([100.0, 100.0, 101.0, 101.0])
GT = [0.0, 0.0, 16.0, 16.0]  # holds points 0 (4,4), 1 (12,4), 4 (4,12), 5 (12,12)


def run_one(assigner, preds, gt_boxes, gt_labels, scores=None, num_classes=2):
    scores = torch.full((16, num_classes), 0.5) if scores is None else scores
    gt_boxes = torch.tensor(gt_boxes, dtype=torch.float32)[None]
    gt_labels = torch.tensor(gt_labels)[None]
    return assigner(scores[None], preds[None], POINTS, gt_labels, gt_boxes,
                    torch.ones_like(gt_labels, dtype=torch.bool), strides=STRIDES)


def test_dynamic_k_takes_the_cheapest_candidates():
    preds = FAR.repeat(16, 1)
    preds[0] = torch.tensor(GT)  # IoU 1
    preds[5] = torch.tensor([0.0, 0.0, 16.0, 8.0])  # IoU 0.5
    preds[1] = preds[4] = torch.tensor([0.0, 0.0, 16.0, 6.4])  # IoU 0.4
    # IoUs sum to 2.3 -> k = 2; equal class scores, so the two best IoUs win.
    result = run_one(SimOTAAssigner(num_classes=2, center_radius=0.75), preds, [GT], [1])
    assert result.fg_mask[0].nonzero().flatten().tolist() == [0, 5]
    assert result.scores[0, 0].tolist() == pytest.approx([0.0, 1.0], abs=1e-6)
    assert result.scores[0, 5].tolist() == pytest.approx([0.0, 0.5], abs=1e-6)
    assert result.labels[0, [0, 5]].tolist() == [1, 1] and result.bboxes[0, 5].tolist() == GT


def test_anchor_outside_the_box_pays_the_prior_penalty():
    preds = FAR.repeat(16, 1)
    preds[0] = preds[2] = torch.tensor(GT)  # point 2 (20, 4) is in the centre region, not in the box
    preds[5] = torch.tensor([0.0, 0.0, 16.0, 8.0])
    # top IoUs 1 + 1 + 0.5 -> k = 2: point 2 has the better IoU than 5 but costs 1e5 more.
    result = run_one(SimOTAAssigner(num_classes=2), preds, [GT], [0])
    assert result.fg_mask[0].nonzero().flatten().tolist() == [0, 5]


def test_class_cost_prefers_the_confident_anchor():
    preds = FAR.repeat(16, 1)
    preds[1] = preds[4] = torch.tensor([0.0, 0.0, 16.0, 8.0])  # equal IoU 0.5 -> k = 1
    scores = torch.full((16, 2), 0.5)
    scores[4] = torch.tensor([0.1, 0.8])  # p(class 1) high, p(class 0) low
    result = run_one(SimOTAAssigner(num_classes=2, center_radius=0.75), preds, [GT], [1], scores=scores)
    assert result.fg_mask[0].nonzero().flatten().tolist() == [4]
    result = run_one(SimOTAAssigner(num_classes=2, center_radius=0.75), preds, [GT], [0], scores=scores)
    assert result.fg_mask[0].nonzero().flatten().tolist() == [1]


def test_conflict_keeps_the_lowest_cost_gt():
    other = [0.0, 0.0, 16.0, 12.0]  # holds points 0 and 1
    preds = FAR.repeat(16, 1)
    preds[0] = torch.tensor([0.0, 0.0, 16.0, 14.0])  # IoU 0.875 with GT, 192/224 with other: k = 1 each
    for boxes, winner in (([GT, other], 0), ([other, GT], 1)):
        result = run_one(SimOTAAssigner(num_classes=2, center_radius=0.75), preds, boxes, [0, 1])
        assert result.fg_mask[0].nonzero().flatten().tolist() == [0]  # the loser gets nothing
        assert result.gt_index[0, 0].item() == winner
        assert result.scores[0, 0].sum().item() == pytest.approx(0.875, abs=1e-6)


def test_no_gt_and_missing_strides():
    assigner = SimOTAAssigner(num_classes=3)
    for num_gt in (0, 2):
        result = assigner(torch.rand(2, 16, 3), FAR.repeat(2, 16, 1), POINTS, torch.zeros(2, num_gt, dtype=torch.long),
                          torch.rand(2, num_gt, 4), torch.zeros(2, num_gt, dtype=torch.bool), strides=STRIDES)
        assert not result.fg_mask.any() and (result.labels == 3).all() and result.scores.abs().sum() == 0
    with pytest.raises(ValueError, match="strides"):
        assigner(torch.rand(1, 16, 3), FAR.repeat(1, 16, 1), POINTS, torch.zeros(1, 1, dtype=torch.long),
                 torch.rand(1, 1, 4), torch.ones(1, 1, dtype=torch.bool))


def pairwise_iou(gt, pred):  # [G, 4] x [N, 4] -> [G, N]
    lt = torch.max(gt[:, None, :2], pred[None, :, :2])
    rb = torch.min(gt[:, None, 2:], pred[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(gt)[:, None] + area(pred)[None] - inter)


def simota_by_loops(inputs, num_classes, radius=2.5, candidate_topk=10):
    """YOLOX's matching written plainly: explicit [G, N, C] BCE, one GT at a time."""
    batch, num_anchors = inputs["pred_scores"].shape[:2]
    points, strides = inputs["anchor_points"], inputs["strides"]
    labels = torch.full((batch, num_anchors), num_classes)
    gt_index = torch.zeros(batch, num_anchors, dtype=torch.long)
    quality = torch.zeros(batch, num_anchors)
    for b in range(batch):
        ms = inputs["gt_mask"][b].nonzero().flatten().tolist()
        if not ms:
            continue
        gt = inputs["gt_bboxes"][b, ms]
        in_box = ((points[None] > gt[:, None, :2]) & (points[None] < gt[:, None, 2:])).all(-1)
        centre = (gt[:, :2] + gt[:, 2:]) / 2
        in_centre = ((points[None] - centre[:, None]).abs() < radius * strides[None, :, None]).all(-1)
        cand = (in_box | in_centre).any(0).nonzero().flatten()
        iou = pairwise_iou(gt, inputs["pred_bboxes"][b, cand])
        onehot = F.one_hot(inputs["gt_labels"][b, ms], num_classes).float()[:, None].expand(-1, len(cand), -1)
        probs = inputs["pred_scores"][b, cand][None].expand(len(ms), -1, -1)
        cls_cost = F.binary_cross_entropy(probs, onehot, reduction="none").sum(-1)
        cost = cls_cost + 3.0 * -torch.log(iou + 1e-8) + 1e5 * ~(in_box & in_centre)[:, cand]
        claims = {}
        for g, m in enumerate(ms):
            k = max(1, int(iou[g].sort(descending=True).values[:candidate_topk].sum()))
            for n in cost[g].argsort()[:k].tolist():
                claims.setdefault(int(cand[n]), []).append((cost[g, n].item(), m, iou[g, n].item()))
        for a, claimants in claims.items():
            _, m, q = min(claimants)
            labels[b, a], gt_index[b, a], quality[b, a] = inputs["gt_labels"][b, m], m, q
    return labels, gt_index, quality


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_a_loop_reference(make_batch, seed):
    inputs = make_batch(2, 8, 3, [(8, 8), (4, 4), (2, 2)], [8, 16, 32], 64, seed=seed)
    result = SimOTAAssigner(num_classes=3)(**inputs)
    labels, gt_index, quality = simota_by_loops(inputs, 3)
    assert torch.equal(result.labels, labels)
    assert torch.equal(result.gt_index, gt_index)
    assert int(result.fg_mask.sum()) > 5
    torch.testing.assert_close(result.scores.sum(-1), quality, rtol=1e-5, atol=1e-6)


def test_no_candidate_anywhere_gives_background():
    # A GT far outside every anchor's box and centre region.
    scores = torch.rand(1, 16, 2)
    result = SimOTAAssigner(num_classes=2, center_radius=0.5)(
        scores, FAR.repeat(1, 16, 1), POINTS, torch.zeros(1, 1, dtype=torch.long),
        torch.tensor([[[200.0, 200.0, 210.0, 210.0]]]), torch.ones(1, 1, dtype=torch.bool), strides=STRIDES)
    assert not result.fg_mask.any()
    assert math.isclose(result.scores.abs().sum().item(), 0.0)


def test_gt_chunks_do_not_change_the_result(make_batch, monkeypatch):
    inputs = make_batch(2, 9, 3, [(8, 8), (4, 4)], [8, 16], 64, seed=4)
    whole = SimOTAAssigner(num_classes=3)(**inputs)
    monkeypatch.setattr("detector.assigners.simota.default_chunk", lambda device: 2 * 80)  # 2 GT rows
    chunked = SimOTAAssigner(num_classes=3)(**inputs)
    for a, b in zip(whole, chunked):
        assert torch.equal(a, b)
