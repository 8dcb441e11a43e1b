"""Tests of detector.losses.functional: hand values, identities with BCE/CE, minimisers, extreme
logits, empty inputs, weights and reductions, autocast."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from detector.boxes import IOU_KINDS, aligned_iou
from detector.losses.functional import (
    distribution_focal_loss,
    focal_loss,
    iou_loss,
    quality_focal_loss,
    varifocal_loss,
)

LN3 = math.log(3.0)  # sigmoid(ln 3) = 0.75
CLS_LOSSES = (focal_loss, quality_focal_loss, varifocal_loss)


def soft_targets(shape, generator):
    """Mostly zeros with a few soft positives, as the assigners produce."""
    t = torch.rand(shape, generator=generator)
    return torch.where(t > 0.8, t, torch.zeros(()))


# --- focal loss ----------------------------------------------------------------------------------

def test_focal_loss_hand_values():
    logits = torch.tensor([0.0, 0.0, LN3, LN3])
    targets = torch.tensor([1.0, 0.0, 1.0, 0.0])
    expected = torch.tensor([
        0.25 * 0.5**2 * math.log(2),          # p = 0.5, t = 1
        0.75 * 0.5**2 * math.log(2),          # p = 0.5, t = 0
        0.25 * 0.25**2 * math.log(4 / 3),     # p = 0.75, t = 1
        0.75 * 0.75**2 * math.log(4),         # p = 0.75, t = 0
    ])
    torch.testing.assert_close(focal_loss(logits, targets), expected)
    # Soft target 0.5 at p = 0.75: p_t = 0.5, alpha_t = 0.5, BCE = (ln(4/3) + ln 4) / 2.
    soft = focal_loss(torch.tensor([LN3]), torch.tensor([0.5]))
    assert soft.item() == pytest.approx(0.5 * 0.5**2 * (math.log(4 / 3) + math.log(4)) / 2, rel=1e-6)


@pytest.mark.parametrize("alpha", [None, -1.0])
def test_focal_loss_gamma0_no_alpha_is_bce_with_gradients(alpha):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(6, 5, generator=g) * 4).requires_grad_(True)
    targets = soft_targets((6, 5), g)
    ref_logits = logits.detach().clone().requires_grad_(True)
    ours = focal_loss(logits, targets, alpha=alpha, gamma=0.0)
    ref = F.binary_cross_entropy_with_logits(ref_logits, targets, reduction="none")
    torch.testing.assert_close(ours, ref)
    ours.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad)


def test_focal_loss_gradient_matches_float64_autograd_of_the_formula():
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(40, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    targets = soft_targets((40,), g).double()
    p = torch.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = 0.25 * targets + 0.75 * (1 - targets)
    naive = -alpha_t * (1 - p_t) ** 2 * (targets * torch.log(p) + (1 - targets) * torch.log(1 - p))
    (grad_ref,) = torch.autograd.grad(naive.sum(), logits)
    x = logits.detach().float().requires_grad_(True)
    focal_loss(x, targets.float()).sum().backward()
    torch.testing.assert_close(x.grad.double(), grad_ref, atol=1e-6, rtol=1e-4)


# --- quality focal loss --------------------------------------------------------------------------

def test_quality_focal_loss_hand_value():
    out = quality_focal_loss(torch.tensor([LN3, 0.0]), torch.tensor([0.5, 0.0]))
    bce = (math.log(4 / 3) + math.log(4)) / 2  # BCE(0.75, 0.5)
    expected = torch.tensor([0.25**2 * bce, 0.5**2 * math.log(2)])
    torch.testing.assert_close(out, expected)


def test_quality_focal_loss_beta0_is_bce():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 7, generator=g) * 4
    targets = soft_targets((4, 7), g)
    torch.testing.assert_close(
        quality_focal_loss(logits, targets, beta=0.0),
        F.binary_cross_entropy_with_logits(logits, targets, reduction="none"),
    )


@pytest.mark.parametrize("y", [0.0, 0.3, 0.77, 1.0])
def test_quality_focal_loss_is_minimised_at_sigmoid_equal_target(y):
    logits = torch.linspace(-8, 8, 4001)
    loss = quality_focal_loss(logits, torch.full_like(logits, y))
    best = torch.sigmoid(logits[loss.argmin()]).item()
    assert best == pytest.approx(y, abs=2e-3)


# --- varifocal loss ------------------------------------------------------------------------------

def _varifocal_hand_gradient(logits, q, alpha=0.75, gamma=2.0, detach_weight=False):
    """dVFL/dx written out: positives q (p - q); negatives alpha p^g (p + g (1 - p) softplus(x))."""
    p = torch.sigmoid(logits)
    negative = alpha * p**gamma * p  # the BCE(p, 0) gradient p, scaled by the weight
    if not detach_weight:
        # d(alpha p^g)/dx = alpha g p^g (1 - p), times BCE(p, 0) = softplus(x)
        negative = negative + alpha * gamma * p**gamma * (1 - p) * F.softplus(logits)
    return torch.where(q > 0, q * (p - q), negative)


@pytest.mark.parametrize("detach_weight", [False, True])
def test_varifocal_loss_branches_and_hand_value(detach_weight):
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(50, generator=g) * 4).requires_grad_(True)
    q = soft_targets((50,), g)
    p = torch.sigmoid(logits.detach())
    bce = F.binary_cross_entropy_with_logits(logits.detach(), q, reduction="none")
    expected = torch.where(q > 0, q * bce, 0.75 * p**2 * bce)
    out = varifocal_loss(logits, q, detach_weight=detach_weight)
    torch.testing.assert_close(out, expected)  # same values either way
    out.sum().backward()
    torch.testing.assert_close(logits.grad, _varifocal_hand_gradient(logits.detach(), q, detach_weight=detach_weight))

    hand = varifocal_loss(torch.tensor([LN3, LN3]), torch.tensor([0.5, 0.0]), detach_weight=detach_weight)
    expected = torch.tensor([0.5 * (math.log(4 / 3) + math.log(4)) / 2, 0.75 * 0.75**2 * math.log(4)])
    torch.testing.assert_close(hand, expected)


def test_varifocal_loss_reference_gradient_hand_value():
    # A negative at p = 0.75 (x = ln 3): weight 0.75 * 0.75^2, BCE = ln 4.
    x = torch.tensor([LN3], requires_grad=True)
    varifocal_loss(x, torch.zeros(1)).sum().backward()
    reference = 0.75 * 0.75**2 * (0.75 + 2 * 0.25 * math.log(4))
    assert x.grad.item() == pytest.approx(reference, rel=1e-6)
    x = torch.tensor([LN3], requires_grad=True)
    varifocal_loss(x, torch.zeros(1), detach_weight=True).sum().backward()
    assert x.grad.item() == pytest.approx(0.75 * 0.75**2 * 0.75, rel=1e-6)


def test_varifocal_loss_gradient_is_finite_for_gamma_below_one():
    # p^gamma's derivative gamma p^(gamma-1) is infinite where p underflows; ours stays finite.
    x = torch.tensor([-200.0, -20.0, 0.0, 30.0], requires_grad=True)
    varifocal_loss(x, torch.zeros(4), gamma=0.5).sum().backward()
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(x.grad, _varifocal_hand_gradient(x.detach(), torch.zeros(4), gamma=0.5))


def test_varifocal_loss_gradient_matches_ultralytics():
    try:
        from ultralytics.utils.loss import VarifocalLoss as UltralyticsVFL
    except ImportError:
        pytest.skip("ultralytics is not importable (pip install -e '.[compat]' to run this test)")
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(2, 30, 5, generator=g) * 3
    q = soft_targets((2, 30, 5), g)
    ours_x, theirs_x = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    ours = varifocal_loss(ours_x, q).mean(1).sum()  # ultralytics reduces by .mean(1).sum()
    theirs = UltralyticsVFL()(theirs_x, q, (q > 0).float())
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(ours_x.grad, theirs_x.grad)


# --- distribution focal loss ---------------------------------------------------------------------

def test_distribution_focal_loss_hand_values_integer_and_last_bin():
    logits = torch.log(torch.tensor([1.0, 2.0, 3.0, 4.0])).expand(5, 4)  # probabilities 0.1..0.4
    target = torch.tensor([1.3, 2.0, 3.0, 0.0, 2.5])
    expected = torch.tensor([
        -(0.7 * math.log(0.2) + 0.3 * math.log(0.3)),
        -math.log(0.3),  # integer target: that bin alone
        -math.log(0.4),  # the last bin
        -math.log(0.1),
        -(0.5 * math.log(0.3) + 0.5 * math.log(0.4)),
    ])
    out = distribution_focal_loss(logits, target)
    assert out.shape == target.shape
    torch.testing.assert_close(out, expected)


def test_distribution_focal_loss_equals_two_bin_cross_entropy_mix():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 4, 16, generator=g) * 3  # [N, 4 sides, bins]
    target = torch.rand(3, 4, generator=g) * 14.99
    left = target.floor().long()
    flat = logits.reshape(-1, 16)
    ce_left = F.cross_entropy(flat, left.reshape(-1), reduction="none").reshape(3, 4)
    ce_right = F.cross_entropy(flat, (left + 1).reshape(-1), reduction="none").reshape(3, 4)
    expected = (left + 1 - target) * ce_left + (target - left) * ce_right
    torch.testing.assert_close(distribution_focal_loss(logits, target), expected)


def test_distribution_focal_loss_minimiser_has_the_target_expectation():
    target = torch.tensor([5.3, 0.0, 15.0, 9.75])
    logits = torch.zeros(4, 16, requires_grad=True)
    optimiser = torch.optim.SGD([logits], lr=3.0)
    for _ in range(300):
        optimiser.zero_grad()
        distribution_focal_loss(logits, target, reduction="sum").backward()
        optimiser.step()
    prob = logits.detach().softmax(-1)
    expectation = prob @ torch.arange(16.0)
    torch.testing.assert_close(expectation, target, atol=0.05, rtol=0)
    # The mass sits on the two bins around 5.3 in the ratio 0.7 : 0.3.
    assert prob[0, 5] / (prob[0, 5] + prob[0, 6]) == pytest.approx(0.7, abs=1e-3)
    assert prob[0, 5] + prob[0, 6] > 0.95


def test_distribution_focal_loss_bad_shapes():
    with pytest.raises(ValueError, match="distribution_focal_loss"):
        distribution_focal_loss(torch.zeros(3, 16), torch.zeros(4))
    with pytest.raises(ValueError, match="bins"):
        distribution_focal_loss(torch.zeros(3, 1), torch.zeros(3))


# --- IoU loss ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", IOU_KINDS)
def test_iou_loss_is_one_minus_aligned_iou(kind):
    g = torch.Generator().manual_seed(5)
    xy = torch.rand(2, 10, 2, generator=g) * 50
    boxes = torch.cat((xy, xy + 1 + torch.rand(2, 10, 2, generator=g) * 30), dim=-1)  # [2, N, 4]
    pred, target = boxes[0], boxes[1]
    torch.testing.assert_close(iou_loss(pred, target, kind=kind), 1 - aligned_iou(pred, target, kind=kind))
    assert iou_loss(target, target, kind=kind).abs().max() < 1e-6


def test_iou_loss_hand_value_and_degenerate_gradients():
    loss = iou_loss(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([[2.0, 0.0, 3.0, 1.0]]), kind="giou")
    torch.testing.assert_close(loss, torch.tensor([4 / 3]))
    pred = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 6.0]], requires_grad=True)
    target = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 4.0, 4.0]])
    iou_loss(pred, target, reduction="sum").backward()
    assert torch.isfinite(pred.grad).all()


def test_iou_loss_rejects_non_boxes():
    with pytest.raises(ValueError, match="iou_loss"):
        iou_loss(torch.zeros(3, 5), torch.zeros(3, 5))


# --- shared behaviour: extreme logits, empty input, weights, reductions, autocast -----------------

@pytest.mark.parametrize("loss_fn", CLS_LOSSES)
def test_extreme_logits_are_finite(loss_fn):
    logits = torch.tensor([100.0, -100.0, 100.0, -100.0, 100.0, -100.0], requires_grad=True)
    targets = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.5, 0.5])
    out = loss_fn(logits, targets)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(logits.grad).all()
    assert out[0].item() == pytest.approx(0.0, abs=1e-6)  # confident and right
    assert out[3].item() == pytest.approx(0.0, abs=1e-6)


def test_extreme_logits_hand_values():
    # BCE(-100 logit, 1) = 100; focal factor 1, alpha 0.25.
    assert focal_loss(torch.tensor([-100.0]), torch.tensor([1.0])).item() == pytest.approx(25.0, rel=1e-6)
    assert quality_focal_loss(torch.tensor([-100.0]), torch.tensor([1.0])).item() == pytest.approx(100.0, rel=1e-6)
    assert varifocal_loss(torch.tensor([100.0]), torch.tensor([0.0])).item() == pytest.approx(75.0, rel=1e-6)


def test_distribution_focal_loss_extreme_logits_are_finite():
    logits = torch.full((2, 16), -100.0)
    logits[:, 0] = 100.0
    logits.requires_grad_(True)
    out = distribution_focal_loss(logits, torch.tensor([7.5, 0.0]))
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(logits.grad).all()
    assert out[0].item() == pytest.approx(200.0, rel=1e-5)
    assert out[1].item() == pytest.approx(0.0, abs=1e-6)


def _empty_cases():
    return [
        (focal_loss, (0, 80), (0, 80)),
        (quality_focal_loss, (0, 80), (0, 80)),
        (varifocal_loss, (2, 0, 80), (2, 0, 80)),
        (distribution_focal_loss, (0, 4, 16), (0, 4)),
        (iou_loss, (0, 4), (0, 4)),
    ]


@pytest.mark.parametrize("loss_fn, pred_shape, target_shape", _empty_cases())
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_empty_input_reduces_to_zero_with_a_grad_path(loss_fn, pred_shape, target_shape, reduction):
    pred = torch.zeros(pred_shape, requires_grad=True)
    out = loss_fn(pred, torch.zeros(target_shape), reduction=reduction)
    assert out.shape == () and out.item() == 0.0
    out.backward()
    assert pred.grad.shape == pred_shape


@pytest.mark.parametrize("loss_fn", CLS_LOSSES)
def test_weight_and_reductions(loss_fn):
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(5, 3, generator=g) * 2
    targets = soft_targets((5, 3), g)
    weight = torch.rand(5, 1, generator=g)  # per-anchor weight broadcast over classes
    elementwise = loss_fn(logits, targets)
    weighted = loss_fn(logits, targets, weight=weight)
    torch.testing.assert_close(weighted, elementwise * weight)
    torch.testing.assert_close(loss_fn(logits, targets, weight=weight, reduction="sum"), weighted.sum())
    torch.testing.assert_close(loss_fn(logits, targets, weight=weight, reduction="mean"), weighted.mean())
    with pytest.raises(ValueError, match="reduction"):
        loss_fn(logits, targets, reduction="avg")
    with pytest.raises(ValueError, match="same shape"):
        loss_fn(logits, targets[:, :2])


def test_box_losses_weight_and_reductions():
    target = torch.tensor([4.2, 0.5, 15.0])
    logits = torch.randn(3, 16, generator=torch.Generator().manual_seed(7))
    weight = torch.tensor([1.0, 0.0, 0.5])
    dfl = distribution_focal_loss(logits, target)
    torch.testing.assert_close(distribution_focal_loss(logits, target, weight=weight, reduction="sum"), (dfl * weight).sum())
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 4.0, 1.0]])
    iou = iou_loss(boxes, boxes.flip(0))
    torch.testing.assert_close(iou_loss(boxes, boxes.flip(0), weight=weight, reduction="mean"), (iou * weight).mean())
    with pytest.raises(ValueError, match="reduction"):
        iou_loss(boxes, boxes, reduction="max")


@pytest.mark.parametrize("loss_fn", CLS_LOSSES)
def test_autocast_bfloat16_inputs_give_float32(loss_fn):
    g = torch.Generator().manual_seed(8)
    logits = (torch.randn(4, 6, generator=g) * 5).bfloat16()
    targets = soft_targets((4, 6), g).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss_fn(logits, targets, reduction="none")
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out, loss_fn(logits.float(), targets.float()))


def test_autocast_bfloat16_box_losses_give_float32():
    logits = torch.randn(3, 4, 16).bfloat16()
    target = torch.tensor([[0.5, 3.0, 15.0, 7.25]] * 3).bfloat16()
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [2.0, 2.0, 2.0, 2.0]]).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dfl = distribution_focal_loss(logits, target)
        iou = iou_loss(boxes, boxes.flip(0), kind="ciou")
    assert dfl.dtype == torch.float32 and iou.dtype == torch.float32
    assert torch.isfinite(dfl).all() and torch.isfinite(iou).all()
    torch.testing.assert_close(dfl, distribution_focal_loss(logits.float(), target.float()))


def test_losses_compile_without_graph_breaks():
    # aot_eager traces forward and backward like inductor would, without its C++ compile time.
    g = torch.Generator().manual_seed(9)
    logits, targets = torch.randn(4, 8, generator=g), soft_targets((4, 8), g)
    cases = [(fn, logits, targets) for fn in CLS_LOSSES] + [
        (distribution_focal_loss, torch.randn(5, 16, generator=g), torch.rand(5, generator=g) * 15),
        (iou_loss, torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 4.0]]), torch.tensor([[1.0, 1.0, 3.0, 4.0]] * 2)),
    ]
    for fn, pred, target in cases:
        compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
        pred = pred.clone().requires_grad_(True)
        out = compiled(pred, target, reduction="mean")
        out.backward()
        torch.testing.assert_close(out, fn(pred.detach(), target, reduction="mean"))
        assert torch.isfinite(pred.grad).all()
