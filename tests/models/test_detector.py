import math

import pytest
import torch

from detector import build_model
from detector.boxes import bbox2dist, decode_boxes, make_anchors
from detector.models.head import HeadOutput
from detector.models.layers import PointwiseConv2d
from detector.models.summary import model_summary

YOLOV8_PARAMS = {"n": 3_157_200, "s": 11_166_560, "m": 25_900_000, "l": 43_700_000, "x": 68_200_000}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("n", num_classes=5)


@pytest.mark.parametrize("scale", list(YOLOV8_PARAMS))
def test_parameter_counts_match_yolov8(scale):
    params = sum(p.numel() for p in build_model(scale, num_classes=80).parameters())
    assert abs(params - YOLOV8_PARAMS[scale]) / YOLOV8_PARAMS[scale] < 0.02


def test_flops_of_n_at_640():
    assert model_summary(build_model("n"), imgsz=640)["gflops"] == pytest.approx(8.7, abs=0.15)


@pytest.mark.parametrize("size,batch", [((64, 64), 1), ((96, 128), 2)])
def test_output_shapes(model, size, batch):
    h, w = size
    anchors = sum((h // s) * (w // s) for s in (8, 16, 32))
    model.train()
    out = model(torch.rand(batch, 3, h, w))
    assert isinstance(out, HeadOutput)
    assert out.cls_logits.shape == (batch, anchors, 5) and out.box_dist.shape == (batch, anchors, 4, 16)
    assert out.anchor_points.shape == (anchors, 2) and out.strides.shape == (anchors,)
    model.eval()
    assert model(torch.rand(batch, 3, h, w)).shape == (batch, anchors, 4 + 5)


def test_size_not_multiple_of_32_is_refused(model):
    with pytest.raises(ValueError, match="multiple of 32"):
        model(torch.rand(1, 3, 65, 64))


def test_decode_inverts_bbox2dist():
    points, strides = make_anchors([(4, 4), (2, 2), (1, 1)], [8, 16, 32])
    boxes = torch.tensor([10.0, 12.0, 40.0, 30.0]).expand(points.shape[0], 4)
    inside = (points[:, 0] > 10) & (points[:, 0] < 40) & (points[:, 1] > 12) & (points[:, 1] < 30)
    dist = bbox2dist(points / strides[:, None], boxes / strides[:, None], 16)  # [A, 4] bins
    left = dist.floor()
    frac = dist - left
    probs = torch.zeros(points.shape[0], 4, 16)
    probs.scatter_(-1, left.long()[..., None], (1 - frac)[..., None])
    probs.scatter_add_(-1, (left.long() + 1)[..., None], frac[..., None])
    decoded = decode_boxes(probs.clamp(min=1e-12).log()[None], points, strides)[0]
    assert torch.allclose(decoded[inside], boxes[inside], atol=1e-3)


def test_image_alone_equals_image_in_batch(model):
    model.eval()
    images = torch.rand(3, 3, 64, 96)
    with torch.no_grad():
        batched = model(images)
        alone = model(images[1:2])
    assert torch.allclose(batched[1:2], alone, atol=1e-4, rtol=1e-5)  # box coordinates are in pixels


def test_fused_equals_unfused():
    torch.manual_seed(1)
    model = build_model("n", num_classes=3)
    for m in model.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    model.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        after = model.fuse()(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert torch.allclose(before, after, atol=1e-4, rtol=1e-4)


def test_for_inference_is_fused_channels_last_and_gives_the_same_predictions():
    torch.manual_seed(2)
    model = build_model("yolo11n", num_classes=3).eval()
    x = torch.rand(2, 3, 64, 96)  # NCHW, as the loaders hand it over
    with torch.no_grad():
        before = model(x)
        prepared = model.for_inference("cpu")
        after = prepared(x)
    assert prepared is model and not model.training
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert after.shape == before.shape == (2, 8 * 12 + 4 * 6 + 2 * 3, 4 + 3)  # anchors at strides 8, 16, 32
    assert torch.allclose(before, after, atol=1e-4, rtol=1e-4)


def test_every_parameter_gets_a_gradient():
    model = build_model("n", num_classes=3).train()
    out = model(torch.rand(2, 3, 64, 64))
    (out.cls_logits.sum() + out.box_dist.sum()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_conv_trains_as_the_conv_it_replaces(bias):
    torch.manual_seed(3)
    pointwise = PointwiseConv2d(6, 5, bias=bias).train()
    conv = torch.nn.Conv2d(6, 5, 1, bias=bias)
    conv.load_state_dict(pointwise.state_dict())  # the same keys and shapes
    x = torch.randn(2, 6, 7, 9).to(memory_format=torch.channels_last)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = pointwise(a), conv(b)
    grad = torch.randn_like(yb)
    ya.backward(grad)
    yb.backward(grad)
    assert ya.shape == yb.shape == (2, 5, 7, 9) and ya.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(ya, yb, atol=1e-5)
    assert torch.allclose(a.grad, b.grad, atol=1e-5)
    assert torch.allclose(pointwise.weight.grad, conv.weight.grad, atol=1e-4)
    if bias:
        assert torch.allclose(pointwise.bias.grad, conv.bias.grad, atol=1e-4)
    with torch.no_grad():  # NCHW input and evaluation take the conv itself
        assert torch.allclose(pointwise(x.contiguous()), yb, atol=1e-5)
        assert torch.allclose(pointwise.eval()(x), yb, atol=1e-5)


@pytest.mark.parametrize("name", ["yolov8n", "yolo11n"])
def test_every_unit_kernel_conv_is_pointwise_and_trains_as_the_conv(name, monkeypatch):
    torch.manual_seed(4)
    model = build_model(name, num_classes=3).train().to(memory_format=torch.channels_last)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    unit = [m for m in convs if m.kernel_size == (1, 1) and m.stride == (1, 1) and m.groups == 1]
    assert unit and all(isinstance(m, PointwiseConv2d) for m in unit)
    assert not any(isinstance(m, PointwiseConv2d) for m in set(convs) - set(unit))
    x = torch.rand(2, 3, 64, 64).to(memory_format=torch.channels_last)
    as_gemm = model(x)
    monkeypatch.setattr(PointwiseConv2d, "forward", torch.nn.Conv2d.forward)
    as_conv = model(x)
    assert torch.allclose(as_gemm.cls_logits, as_conv.cls_logits, atol=1e-4)
    assert torch.allclose(as_gemm.box_dist, as_conv.box_dist, atol=1e-4)


def test_bias_init():
    model = build_model("n", num_classes=4)
    for branch, stride in zip(model.head.cls_branches, (8, 16, 32)):
        assert torch.allclose(branch[-1].bias, torch.full((4,), math.log(5 / 4 / (640 / stride) ** 2)))
    for branch in model.head.box_branches:
        assert torch.all(branch[-1].bias == 1.0)


def test_reg_max_one_regresses_distances_directly():
    model = build_model("n", num_classes=2, reg_max=1).train()
    out = model(torch.rand(1, 3, 64, 64))
    assert out.box_dist.shape[-1] == 1
    model.eval()
    pred = model(torch.rand(1, 3, 64, 64))
    assert (pred[..., 2] >= pred[..., 0]).all() and (pred[..., 3] >= pred[..., 1]).all()


def test_predict_structure_and_filters(model):
    model.train()
    with torch.no_grad():
        model.head.cls_branches[0][-1].bias.fill_(2.0)  # confident everywhere on stride 8
    out = model.predict(torch.rand(2, 3, 64, 64), conf=0.5, max_det=7)
    assert model.training  # mode restored
    assert len(out) == 2
    for det in out:
        assert set(det) == {"boxes", "scores", "labels"}
        assert det["boxes"].shape[1] == 4 and det["labels"].dtype == torch.long
        assert 0 < len(det["scores"]) <= 7 and (det["scores"] > 0.5).all()
        assert torch.all(det["scores"][:-1] >= det["scores"][1:])
    with torch.no_grad():
        model.head.init_biases()
    empty = model.predict(torch.rand(1, 3, 64, 64), conf=0.99)
    assert empty[0]["boxes"].shape == (0, 4)


def test_unknown_scale():
    with pytest.raises(ValueError, match="n, s, m, l, x"):
        build_model("q")
