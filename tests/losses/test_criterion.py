import pytest
import torch

from detector.assigners import ATSSAssigner, SimOTAAssigner, TaskAlignedAssigner
from detector.boxes import bbox2dist, make_anchors
from detector.losses.criterion import DetectionCriterion
from detector.losses.modules import (BCELoss, DistributionFocalLoss, FocalLoss, IoULoss, QualityFocalLoss,
                                     VarifocalLoss)
from detector.models.head import HeadOutput

C, R = 3, 16


def head_output(batch=2, reg_max=R, seed=0, requires_grad=True):
    torch.manual_seed(seed)
    points, strides = make_anchors([(8, 8), (4, 4), (2, 2)], [8, 16, 32])  # a 64 x 64 image
    a = points.shape[0]
    cls = (torch.randn(batch, a, C) - 3).requires_grad_(requires_grad)
    dist = torch.randn(batch, a, 4, reg_max).requires_grad_(requires_grad)
    return HeadOutput(cls, dist, points, strides)


def targets():
    boxes = torch.tensor([[[4.0, 6.0, 40.0, 30.0], [20.0, 20.0, 60.0, 62.0]], [[10.0, 10.0, 30.0, 50.0], [0, 0, 0, 0]]])
    labels = torch.tensor([[0, 2], [1, 0]])
    mask = torch.tensor([[True, True], [True, False]])
    return labels, boxes, mask


def criterion(assigner=None, cls_loss=None, box_kind="ciou", dfl=True):
    return DetectionCriterion(
        assigner=assigner or TaskAlignedAssigner(num_classes=C),
        cls_loss=cls_loss or QualityFocalLoss(loss_weight=1.5),
        box_loss=IoULoss(kind=box_kind, loss_weight=7.5),
        dfl_loss=DistributionFocalLoss(loss_weight=1.5) if dfl else None,
    )


@pytest.mark.parametrize("assigner", [TaskAlignedAssigner(num_classes=C), ATSSAssigner(num_classes=C),
                                      SimOTAAssigner(num_classes=C)])
@pytest.mark.parametrize("cls_loss", [QualityFocalLoss(), VarifocalLoss(), FocalLoss(), BCELoss()])
@pytest.mark.parametrize("box_kind", ["ciou", "giou", "diou", "iou"])
def test_every_combination_gives_finite_losses_and_gradients(assigner, cls_loss, box_kind):
    out = head_output()
    losses = criterion(assigner, cls_loss, box_kind)(out, *targets())
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert torch.isfinite(out.cls_logits.grad).all() and torch.isfinite(out.box_dist.grad).all()
    assert out.box_dist.grad.abs().sum() > 0


def test_total_is_the_weighted_sum():
    crit = criterion()
    losses = crit(head_output(), *targets())
    expected = 1.5 * losses["loss_cls"] + 7.5 * losses["loss_box"] + 1.5 * losses["loss_dfl"]
    assert torch.allclose(losses["loss"], expected)
    assert crit.weights == {"loss_cls": 1.5, "loss_box": 7.5, "loss_dfl": 1.5}


def test_image_without_gt_gives_zero_box_and_dfl_and_positive_cls():
    out = head_output(batch=1)
    labels = torch.zeros(1, 0, dtype=torch.long)
    losses = criterion()(out, labels, torch.zeros(1, 0, 4), torch.zeros(1, 0, dtype=torch.bool))
    assert float(losses["loss_box"].detach()) == 0 and float(losses["loss_dfl"].detach()) == 0
    assert float(losses["loss_cls"].detach()) > 0
    losses["loss"].backward()
    assert torch.isfinite(out.cls_logits.grad).all()


def test_dfl_off_needs_a_plain_head_and_vice_versa():
    out = head_output(reg_max=1)
    losses = criterion(dfl=False)(out, *targets())
    assert float(losses["loss_dfl"]) == 0 and torch.isfinite(losses["loss"])
    with pytest.raises(ValueError, match="dfl=off"):
        criterion(dfl=True)(out, *targets())


def test_perfect_prediction_has_near_zero_box_and_minimal_dfl():
    """Build a box branch that predicts the GT exactly for the anchors inside it."""
    labels, boxes, mask = targets()
    out = head_output(requires_grad=False)
    points, strides = out.anchor_points, out.strides
    dist = torch.full_like(out.box_dist, -20.0)
    for b in range(2):
        for m in range(2):
            if not mask[b, m]:
                continue
            d = bbox2dist(points / strides[:, None], boxes[b, m] / strides[:, None], R)  # [A, 4] bins
            left = d.floor().long()
            w_right = d - left
            # logits that give exactly the two-bin mixture
            probs = torch.zeros(points.shape[0], 4, R)
            probs.scatter_(-1, left[..., None], (1 - w_right)[..., None])
            probs.scatter_add_(-1, (left + 1).clamp(max=R - 1)[..., None], w_right[..., None])
            dist[b] = probs.clamp(min=1e-12).log()
    out = HeadOutput(out.cls_logits, dist, points, strides)
    crit = criterion()
    losses = crit(out, labels, boxes, mask)
    assert float(losses["loss_box"]) < 0.05  # boxes clamped at reg_max-1 can differ slightly


def test_overfitting_one_batch_drives_the_loss_down():
    torch.manual_seed(0)
    out = head_output()
    cls = out.cls_logits.detach().clone().requires_grad_(True)
    dist = out.box_dist.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([cls, dist], lr=0.05)
    crit = criterion()
    first = None
    for _ in range(40):
        losses = crit(HeadOutput(cls, dist, out.anchor_points, out.strides), *targets())
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        first = first if first is not None else float(losses["loss"].detach())
    assert float(losses["loss"].detach()) < 0.5 * first
