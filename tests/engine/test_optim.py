import math

import pytest
import torch
from torch import nn

from detector.engine.optim import CosineSchedule, LinearSchedule, apply_schedule, build_optimizer, param_groups


def tiny_model():
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


def test_param_groups_split_weights_norm_and_bias():
    model = tiny_model()
    groups = param_groups(model, weight_decay=5e-4)
    assert [g["name"] for g in groups] == ["weights", "norm", "bias"]
    assert [len(g["params"]) for g in groups] == [2, 1, 2]  # 2 conv weights; BN weight; BN bias + conv bias
    assert groups[0]["weight_decay"] == 5e-4 and groups[1]["weight_decay"] == 0 and groups[2]["weight_decay"] == 0
    total = sum(p.numel() for g in groups for p in g["params"])
    assert total == sum(p.numel() for p in model.parameters())


def test_schedules_endpoints_and_shape():
    linear, cosine = LinearSchedule(lrf=0.01), CosineSchedule(lrf=0.01)
    assert linear(0.0) == pytest.approx(1.0) and linear(1.0) == pytest.approx(0.01)
    assert linear(0.5) == pytest.approx(0.505)
    assert cosine(0.0) == pytest.approx(1.0) and cosine(1.0) == pytest.approx(0.01)
    assert cosine(0.5) == pytest.approx(0.505)
    assert cosine(0.25) == pytest.approx(1 - (1 - math.cos(math.pi / 4)) / 2 * 0.99)


def sgd(model):
    factory = lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.937, nesterov=True)  # noqa: E731
    return build_optimizer(factory, model, weight_decay=5e-4)


def test_warmup_bias_lr_falls_and_others_rise():
    optimizer = sgd(tiny_model())
    kwargs = dict(schedule=LinearSchedule(lrf=0.01), epochs=10, warmup_iters=100, warmup_bias_lr=0.1, warmup_momentum=0.8)
    apply_schedule(optimizer, epoch=0, iteration=0, **kwargs)
    lrs = [g["lr"] for g in optimizer.param_groups]
    assert lrs == pytest.approx([0.0, 0.0, 0.1])
    assert optimizer.param_groups[0]["momentum"] == pytest.approx(0.8)
    apply_schedule(optimizer, epoch=0, iteration=50, **kwargs)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.005)
    assert optimizer.param_groups[2]["lr"] == pytest.approx(0.055)
    assert optimizer.param_groups[0]["momentum"] == pytest.approx(0.8685)
    apply_schedule(optimizer, epoch=5, iteration=500, **kwargs)  # after warmup: lr * schedule(5/10)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01 * 0.505] * 3)
    assert optimizer.param_groups[1]["momentum"] == pytest.approx(0.937)


def test_adamw_warmup_moves_beta1():
    model = tiny_model()
    optimizer = build_optimizer(lambda p: torch.optim.AdamW(p, lr=0.002, betas=(0.9, 0.999)), model, 5e-4)
    apply_schedule(optimizer, LinearSchedule(lrf=0.01), epoch=0, iteration=0, epochs=3, warmup_iters=10,
                   warmup_bias_lr=0.1, warmup_momentum=0.8)
    assert optimizer.param_groups[0]["betas"] == pytest.approx((0.8, 0.999))
