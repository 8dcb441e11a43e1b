"""YOLO11 in training's settings: the attention block (C2PSA, PSABlock, Attention) under bfloat16
autocast and channels-last; every loss_cls x loss_box x assigner x dfl combination training a
YOLO11 model; and a two-process gloo (DDP) run of yolo11n. ONNX export of yolo11n and its parity
are in test_yolo11.py."""
import copy
import itertools
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from detector.engine import build
from detector.models import HeadOutput
from detector.models.yolo11 import C2PSA

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"


def options(group):
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.fixture(scope="module")
def psa():
    """C2PSA at yolo11n's width (256 channels: 128 for the PSA block, two heads of 64), BN statistics
    from random batches so that the eval outputs are not near zero."""
    torch.manual_seed(0)
    block = C2PSA(256, n=1)
    for module in block.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    with torch.no_grad():
        block.train()(torch.randn(8, 256, 10, 10))
    return block.eval()


def relative_error(got, expected):
    return ((got.float() - expected).norm() / expected.norm()).item()


# ----------------------------------------------------------------------------------- AMP
def test_attention_under_bfloat16_autocast_is_finite_and_close_to_float32(psa):
    x = torch.randn(2, 256, 10, 10)
    with torch.no_grad():
        expected = psa(x)
    leaf = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = psa(leaf)
    assert out.dtype == torch.bfloat16  # the convs and the attention's matmuls ran in bfloat16
    out.float().square().mean().backward()
    assert torch.isfinite(out).all() and torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0
    grads = [p.grad for p in psa.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # bfloat16 keeps 8 bits of mantissa (relative step 2 ** -8): a few roundings deep, within ~2 %
    assert relative_error(out, expected) < 0.03
    psa.zero_grad(set_to_none=True)


def test_yolo11n_trains_a_step_under_bfloat16_autocast():
    torch.manual_seed(0)
    cfg = compose_train(["model=yolo11n"])
    model, criterion = build.build_model(cfg, 3).train(), build.build_criterion(cfg, 3)
    images, boxes, labels, mask = tiny_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(images)
        losses = criterion(outputs, labels, boxes, mask)
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_box"] > 0
    losses["loss"].backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


# ----------------------------------------------------------------------------------- channels-last
def test_attention_channels_last_equals_contiguous(psa):
    """The attention's views of [B, C, H, W] into heads and positions hold for channels-last strides too:
    the same output and, in training mode, the same gradients."""
    x = torch.randn(2, 256, 10, 10)
    with torch.no_grad():
        expected = psa(x)
        got = psa.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    assert (got - expected).abs().max() < 1e-5 and expected.abs().max() > 0.1
    grads = []
    for layout in (torch.contiguous_format, torch.channels_last):
        block = copy.deepcopy(psa).train().to(memory_format=layout)
        block(x.to(memory_format=layout)).square().mean().backward()
        grads.append({n: p.grad for n, p in block.named_parameters()})
    for name, grad in grads[0].items():
        assert torch.allclose(grads[1][name], grad, rtol=1e-4, atol=1e-6), name
    psa.to(memory_format=torch.contiguous_format)


def test_yolo11n_channels_last_training_step_equals_contiguous():
    """As the trainer runs it (model and batch channels-last): the same losses and gradients. In float64:
    in float32 the two layouts' kernels round differently, and on an untrained net that flips near-ties
    in the assignment (a different target, not a layout error)."""
    images, boxes, labels, mask = tiny_batch()
    cfg = compose_train(["model=yolo11n"])
    criterion = build.build_criterion(cfg, 3)
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(0)
        model = build.build_model(cfg, 3).train().to(dtype=torch.float64, memory_format=layout)
        losses = criterion(model(images.double().to(memory_format=layout)), labels, boxes.double(), mask)
        losses["loss"].backward()
        results.append((losses, {n: p.grad for n, p in model.named_parameters()}))
    (losses_a, grads_a), (losses_b, grads_b) = results
    for key in losses_a:
        assert losses_b[key].item() == pytest.approx(losses_a[key].item(), rel=1e-9, abs=1e-12)
    assert grads_a["backbone.stage4.3.m.0.attn.qkv.conv.weight"].abs().sum() > 0
    # some BN biases have a gradient of zero in exact arithmetic (a BN downstream removes any per-channel
    # shift): rounding noise in both runs, hence the floor relative to the largest gradient
    scale = max(grad.norm() for grad in grads_a.values())
    for name, grad in grads_a.items():
        assert (grads_b[name] - grad).norm() <= 1e-8 * (grad.norm() + scale), name


# ----------------------------------------------------------------------------------- every option
def compose_train(overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def tiny_batch():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 64, 64)
    boxes = torch.tensor([[[4.0, 6.0, 40.0, 30.0], [20.0, 20.0, 60.0, 62.0]], [[10.0, 10.0, 30.0, 50.0], [0, 0, 0, 0]]])
    return images, boxes, torch.tensor([[0, 2], [1, 0]]), torch.tensor([[True, True], [True, False]])


@pytest.fixture(scope="module")
def option_nodes():
    """{group: {option: its composed node}} for loss_cls, loss_box and assigner: each file composed once
    (a combination is then the base config with the three nodes set, as Hydra's merge would give)."""
    nodes = {}
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        for group in ("loss_cls", "loss_box", "assigner"):
            nodes[group] = {option: compose(config_name="train", overrides=["model=yolo11n", f"{group}={option}"])[group]
                            for option in options(group)}
    return nodes


@pytest.mark.parametrize("dfl", options("dfl"))
def test_every_loss_box_and_assigner_combination_trains_yolo11(dfl, option_nodes):
    """loss_cls x loss_box x assigner (4 x 4 x 3) on one yolo11n forward per dfl option: finite losses
    and gradients for each; then an optimiser step through the whole net."""
    images, boxes, labels, mask = tiny_batch()
    base = compose_train(["model=yolo11n", f"dfl={dfl}"])
    model = build.build_model(base, 3).train()
    outputs = model(images)
    assert model.arch == "yolo11" and outputs.box_dist.shape[-1] == (16 if dfl == "on" else 1)
    combinations = list(itertools.product(*(option_nodes[g] for g in ("loss_cls", "loss_box", "assigner"))))
    assert len(combinations) == 48
    for combination in combinations:
        cfg = base.copy()
        for group, option in zip(("loss_cls", "loss_box", "assigner"), combination):
            cfg[group] = option_nodes[group][option]
        leaf = HeadOutput(outputs.cls_logits.detach().requires_grad_(), outputs.box_dist.detach().requires_grad_(),
                          outputs.anchor_points, outputs.strides)
        losses = build.build_criterion(cfg, 3)(leaf, labels, boxes, mask)
        assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_box"] > 0, combination
        assert (losses["loss_dfl"] > 0) == (dfl == "on"), combination
        losses["loss"].backward()
        assert torch.isfinite(leaf.cls_logits.grad).all() and leaf.box_dist.grad.abs().sum() > 0, combination
    optimizer = build.build_optimizer(base, model, 3, base.optim.weight_decay)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    build.build_criterion(base, 3)(outputs, labels, boxes, mask)["loss"].backward()
    optimizer.step()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert not torch.equal(before["backbone.stage4.3.m.0.attn.qkv.conv.weight"],
                           model.get_parameter("backbone.stage4.3.m.0.attn.qkv.conv.weight"))


# DDP of yolo11n (the attention block under gloo): tests/test_train_cli.py::test_two_process_gloo_run
