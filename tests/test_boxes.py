"""Tests of detector.boxes: formats, aligned IoU family (vs torchvision.ops and hand values),
anchors, distance <-> box transforms and the box-branch decoding."""
from __future__ import annotations

import math

import pytest
import torch
from torchvision import ops

from detector.boxes import (
    IOU_KINDS,
    aligned_iou,
    bbox2dist,
    cxcywh_to_xyxy,
    decode_boxes,
    dist2bbox,
    distribution_to_distance,
    make_anchors,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)


def random_boxes(n: int, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """n valid xyxy boxes (positive width and height) in a 0..100 px frame."""
    xy = torch.rand(n, 2, generator=generator, dtype=dtype) * 80
    wh = torch.rand(n, 2, generator=generator, dtype=dtype) * 40 + 0.5
    return torch.cat((xy, xy + wh), dim=-1)


# --- formats -------------------------------------------------------------------------------------

def test_format_conversions_values_and_round_trips():
    box = torch.tensor([[10.0, 20.0, 40.0, 80.0]])
    torch.testing.assert_close(xyxy_to_xywh(box), torch.tensor([[10.0, 20.0, 30.0, 60.0]]))
    torch.testing.assert_close(xyxy_to_cxcywh(box), torch.tensor([[25.0, 50.0, 30.0, 60.0]]))
    boxes = random_boxes(16, torch.Generator().manual_seed(0))
    torch.testing.assert_close(xywh_to_xyxy(xyxy_to_xywh(boxes)), boxes)
    torch.testing.assert_close(cxcywh_to_xyxy(xyxy_to_cxcywh(boxes)), boxes)


# --- aligned IoU family --------------------------------------------------------------------------

@pytest.mark.parametrize(
    "kind, reference",
    [
        ("iou", ops.box_iou),
        ("giou", ops.generalized_box_iou),
        ("diou", ops.distance_box_iou),
        ("ciou", ops.complete_box_iou),
    ],
)
def test_aligned_iou_matches_torchvision_diagonal(kind, reference):
    g = torch.Generator().manual_seed(1)
    pred, target = random_boxes(64, g), random_boxes(64, g)
    # Half of the pairs overlap: jitter copies of the targets.
    pred[:32] = target[:32] + torch.randn(32, 4, generator=g, dtype=torch.float64) * 3
    pred[:32, 2:] = torch.maximum(pred[:32, 2:], pred[:32, :2] + 0.5)
    expected = reference(pred, target).diagonal()
    # torchvision puts eps in different denominators (none in the IoU union): agree to ~1e-5.
    torch.testing.assert_close(aligned_iou(pred, target, kind=kind), expected, atol=1e-5, rtol=1e-5)


def test_aligned_iou_broadcasts_over_leading_dims():
    g = torch.Generator().manual_seed(2)
    pred, target = random_boxes(24, g).reshape(2, 3, 4, 4), random_boxes(24, g).reshape(2, 3, 4, 4)
    out = aligned_iou(pred, target, kind="ciou")
    assert out.shape == (2, 3, 4)
    torch.testing.assert_close(out.reshape(-1), aligned_iou(pred.reshape(-1, 4), target.reshape(-1, 4)))


@pytest.mark.parametrize("kind", IOU_KINDS)
def test_identical_boxes_give_one(kind):
    boxes = torch.tensor([[0.0, 0.0, 10.0, 20.0], [5.0, 5.0, 6.0, 9.0]])
    torch.testing.assert_close(aligned_iou(boxes, boxes, kind=kind), torch.ones(2), atol=1e-6, rtol=0)


def test_hand_values():
    a = torch.tensor([0.0, 0.0, 1.0, 1.0])
    b = torch.tensor([2.0, 0.0, 3.0, 1.0])
    # Disjoint: IoU 0; union 2, enclosing box [0,0,3,1] of area 3 -> GIoU = -(3 - 2) / 3.
    assert aligned_iou(a, b, "iou").item() == pytest.approx(0.0, abs=1e-7)
    assert aligned_iou(a, b, "giou").item() == pytest.approx(-1 / 3, abs=1e-6)

    a = torch.tensor([0.0, 0.0, 2.0, 2.0])
    b = torch.tensor([1.0, 1.0, 3.0, 3.0])
    # inter 1, union 7; centres (1,1) and (2,2): rho^2 = 2; enclosing [0,0,3,3]: c^2 = 18.
    assert aligned_iou(a, b, "iou").item() == pytest.approx(1 / 7, abs=1e-6)
    assert aligned_iou(a, b, "giou").item() == pytest.approx(1 / 7 - 2 / 9, abs=1e-6)
    assert aligned_iou(a, b, "diou").item() == pytest.approx(1 / 7 - 2 / 18, abs=1e-6)

    pred = torch.tensor([0.0, 0.0, 2.0, 2.0])
    target = torch.tensor([0.0, 0.0, 4.0, 2.0])
    # inter 4, union 8 -> IoU 1/2; centres (1,1), (2,1): rho^2 = 1; enclosing [0,0,4,2]: c^2 = 20;
    # v = 4/pi^2 (atan(4/2) - atan(2/2))^2, alpha = v / (1 - IoU + v).
    v = 4 / math.pi**2 * (math.atan(2.0) - math.atan(1.0)) ** 2
    expected = 0.5 - 1 / 20 - v / (0.5 + v) * v
    assert aligned_iou(pred, target, "ciou").item() == pytest.approx(expected, abs=1e-6)


def test_ciou_alpha_is_constant_in_the_gradient():
    pred = torch.tensor([0.0, 0.0, 2.0, 2.0], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0.0, 0.0, 4.0, 2.0], dtype=torch.float64)
    aligned_iou(pred, target, "ciou").backward()
    # Reference: the same formula with alpha frozen at its value.
    ref_pred = pred.detach().clone().requires_grad_(True)
    iou = aligned_iou(ref_pred, target, "iou")
    diou = aligned_iou(ref_pred, target, "diou")
    w, h = ref_pred[2] - ref_pred[0], ref_pred[3] - ref_pred[1]
    v = 4 / math.pi**2 * (math.atan(2.0) - torch.atan(w / h)) ** 2
    alpha = (v / (1 - iou + v)).detach()
    (diou - alpha * v).backward()
    torch.testing.assert_close(pred.grad, ref_pred.grad, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kind", IOU_KINDS)
def test_degenerate_boxes_are_finite_with_finite_gradients(kind):
    pairs = [
        ([1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]),  # identical points
        ([1.0, 1.0, 1.0, 5.0], [0.0, 0.0, 2.0, 3.0]),  # zero-width prediction
        ([0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 4.0, 1.0]),  # zero-height target
        ([3.0, 3.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0]),  # point outside the box
    ]
    pred = torch.tensor([p for p, _ in pairs], requires_grad=True)
    target = torch.tensor([t for _, t in pairs], requires_grad=True)
    out = aligned_iou(pred, target, kind=kind)
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert torch.isfinite(pred.grad).all() and torch.isfinite(target.grad).all()
    assert (out <= 1).all() and (out >= -1.5).all()


def test_aligned_iou_rejects_unknown_kind_and_handles_empty():
    with pytest.raises(ValueError, match="kind"):
        aligned_iou(torch.zeros(1, 4), torch.zeros(1, 4), kind="eiou")
    assert aligned_iou(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0,)


# --- anchors and transforms ----------------------------------------------------------------------

def test_make_anchors_positions_order_and_strides():
    points, strides = make_anchors([(2, 3), (1, 2)], [8, 16])
    expected = torch.tensor(
        [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12],  # level 0, row-major, (x, y)
         [8, 8], [24, 8]],                                        # level 1
        dtype=torch.float32,
    )
    torch.testing.assert_close(points, expected)
    torch.testing.assert_close(strides, torch.tensor([8.0] * 6 + [16.0] * 2))
    points0, _ = make_anchors([(1, 1)], [32], offset=0.0)
    torch.testing.assert_close(points0, torch.zeros(1, 2))


def test_make_anchors_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="make_anchors"):
        make_anchors([(2, 2), (1, 1)], [8])


def test_dist2bbox_bbox2dist_round_trip_and_clamping():
    anchors = torch.tensor([[10.0, 10.0], [5.0, 7.0]])
    dist = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 14.5, 0.25, 7.0]])
    boxes = dist2bbox(dist, anchors)
    torch.testing.assert_close(boxes, torch.tensor([[9.0, 8.0, 13.0, 14.0], [5.0, -7.5, 5.25, 14.0]]))
    torch.testing.assert_close(bbox2dist(anchors, boxes, reg_max=16), dist)

    # Too far -> reg_max - 1.01 (strictly below the last bin); anchor outside the box -> 0.
    far = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    torch.testing.assert_close(bbox2dist(torch.tensor([[50.0, 50.0]]), far, 16), torch.full((1, 4), 14.99))
    outside = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    torch.testing.assert_close(bbox2dist(torch.tensor([[6.0, 2.0]]), outside, 16), torch.tensor([[6.0, 2.0, 0.0, 2.0]]))


def test_distribution_to_distance():
    reg_max = 8
    one_hot = torch.full((3, 4, reg_max), -100.0)
    bins = torch.tensor([[0, 3, 7, 5], [1, 1, 2, 6], [4, 0, 0, 7]])
    one_hot.scatter_(-1, bins[..., None], 100.0)
    torch.testing.assert_close(distribution_to_distance(one_hot), bins.float())
    # Uniform logits -> the mean bin.
    torch.testing.assert_close(distribution_to_distance(torch.zeros(2, 4, reg_max)), torch.full((2, 4), 3.5))
    # reg_max == 1: softplus of the single logit.
    x = torch.tensor([[-2.0, 0.0, 1.0, 30.0]])
    torch.testing.assert_close(distribution_to_distance(x[..., None]), torch.nn.functional.softplus(x))


def test_distribution_to_distance_along_another_dim_equals_the_last():
    logits = torch.randn(2, 7, 4, 16)  # [B, A, 4, R]
    channel_first = logits.permute(0, 2, 3, 1)  # [B, 4, R, A], an ultralytics-layout export's order
    expected = distribution_to_distance(logits).transpose(1, 2)  # [B, 4, A]
    torch.testing.assert_close(distribution_to_distance(channel_first, dim=2), expected)
    single = torch.randn(2, 4, 1, 7)  # reg_max 1 (DFL off): softplus of the one bin
    torch.testing.assert_close(distribution_to_distance(single, dim=2), torch.nn.functional.softplus(single[:, :, 0]))


def test_distribution_to_distance_stays_float32_under_autocast():
    logits = torch.randn(2, 50, 4, 16, generator=torch.Generator().manual_seed(3)) * 3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = distribution_to_distance(logits)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, distribution_to_distance(logits))


def test_decode_boxes():
    points, strides = make_anchors([(1, 2), (1, 1)], [8, 16])  # A = 3
    reg_max = 4
    dist_bins = torch.tensor([[[1, 2, 3, 0], [0, 0, 1, 1], [2, 2, 2, 2]]])  # [B=1, A=3, 4]
    logits = torch.full((1, 3, 4, reg_max), -100.0).scatter_(-1, dist_bins[..., None], 100.0)
    boxes = decode_boxes(logits, points, strides)
    expected = torch.tensor(
        [[[4 - 8, 4 - 16, 4 + 24, 4 + 0],     # anchor (4, 4), stride 8
          [12 - 0, 4 - 0, 12 + 8, 4 + 8],     # anchor (12, 4), stride 8
          [8 - 32, 8 - 32, 8 + 32, 8 + 32]]],  # anchor (8, 8), stride 16
        dtype=torch.float32,
    )
    torch.testing.assert_close(boxes, expected)
