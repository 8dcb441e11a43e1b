"""All assigners: one call signature, the AssignResult shapes/dtypes and the background convention."""
from __future__ import annotations

import pytest
import torch

from detector.assigners import ATSSAssigner, AssignResult, SimOTAAssigner, TaskAlignedAssigner

ASSIGNERS = [TaskAlignedAssigner, ATSSAssigner, SimOTAAssigner]


@pytest.mark.parametrize("cls", ASSIGNERS)
@pytest.mark.parametrize("num_gt", [0, 5])
def test_result_fields(make_batch, cls, num_gt):
    batch, num_classes = 3, 4
    inputs = make_batch(batch, num_gt, num_classes, [(8, 8), (4, 4), (2, 2)], [8, 16, 32], 64, seed=11)
    result = cls(num_classes=num_classes)(**inputs)
    num_anchors = inputs["anchor_points"].shape[0]
    assert isinstance(result, AssignResult)
    assert result.labels.shape == (batch, num_anchors) and result.labels.dtype == torch.long
    assert result.bboxes.shape == (batch, num_anchors, 4) and result.bboxes.dtype == torch.float32
    assert result.scores.shape == (batch, num_anchors, num_classes) and result.scores.dtype == torch.float32
    assert result.fg_mask.shape == (batch, num_anchors) and result.fg_mask.dtype == torch.bool
    assert result.gt_index.shape == (batch, num_anchors) and result.gt_index.dtype == torch.long

    bg = ~result.fg_mask
    assert (result.labels[bg] == num_classes).all()
    assert result.bboxes[bg].abs().sum() == 0 and result.scores[bg].abs().sum() == 0
    assert (result.gt_index[bg] == 0).all()
    fg = result.fg_mask
    if num_gt:
        assert fg.any()
        image = torch.arange(batch)[:, None].expand(-1, num_anchors)[fg]
        gt = result.gt_index[fg]
        assert inputs["gt_mask"][image, gt].all()  # only real GTs are assigned
        assert torch.equal(result.labels[fg], inputs["gt_labels"][image, gt])
        assert torch.equal(result.bboxes[fg], inputs["gt_bboxes"][image, gt])
        # the soft target sits on the assigned class only, within [0, 1]
        off_class = result.scores[fg].scatter(1, result.labels[fg][:, None], 0.0)
        assert off_class.abs().sum() == 0
        assert (result.scores[fg].max(-1).values <= 1 + 1e-6).all() and (result.scores >= 0).all()
    else:
        assert not fg.any()


@pytest.mark.parametrize("cls", ASSIGNERS)
def test_no_grad_and_deterministic(make_batch, cls):
    inputs = make_batch(2, 4, 3, [(8, 8)], [8], 64, seed=12)
    inputs["pred_scores"].requires_grad_(True)
    first = cls(num_classes=3)(**inputs)
    second = cls(num_classes=3)(**inputs)
    assert not first.scores.requires_grad
    for a, b in zip(first, second):
        assert torch.equal(a, b)
