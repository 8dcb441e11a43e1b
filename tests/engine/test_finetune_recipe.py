"""The recipe's ``auto`` values resolve one way from scratch and another from weights (``pretrained=``).

Hand-checked: YOLOv8's AdamW fit is 0.002 x 5 / (4 + classes) (0.002 at 1 class, 0.000119 at 80); at
batch 16 a nominal batch of 64 is 4 micro-batches per optimiser step and the weight decay stays
0.0005 x 16 x 4 / 64 = 0.0005. The from-scratch values are the measured recipe and must not move.
"""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from detector.engine import build
import torch

from detector.engine.optim import (LinearSchedule, apply_schedule, build_optimizer, resolve_lr, resolve_nbs,
                                   resolve_warmup_epochs, resolve_warmup_momentum)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def resolved(overrides, num_classes=1):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    values = build.resolve_recipe(cfg, num_classes)
    accumulate = build.accumulation_steps(cfg.nbs, cfg.batch_size, 1)
    weight_decay = cfg.optim.weight_decay * cfg.batch_size * accumulate / cfg.nbs
    return cfg, values, accumulate, weight_decay


def test_from_scratch_keeps_a_step_per_batch_at_the_auto_lr():
    cfg, values, accumulate, weight_decay = resolved([])
    assert values == {"nbs": 16, "warmup.epochs": 3.0, "optim.lr": 0.002, "warmup.momentum": 0.8}
    assert cfg.nbs == 16 and cfg.optim.lr == 0.002 and accumulate == 1 and weight_decay == pytest.approx(0.0005)
    assert resolved(["batch_size=8"])[1]["nbs"] == 8
    assert resolved([], num_classes=80)[1]["optim.lr"] == 0.000119
    assert resolved(["epochs=100"])[1]["warmup.epochs"] == 3.0  # from scratch: YOLOv8's, at any budget
    assert cfg.warmup.epochs == 3.0 and cfg.warmup.momentum == 0.8 and cfg.ema.tau == 2000  # written back


def test_from_weights_steps_every_batch_at_the_lr_share_of_64():
    cfg, values, accumulate, weight_decay = resolved(["pretrained=start.pt"])
    assert cfg.finetune.nbs == "auto" and cfg.finetune.lr_scale == "auto"
    # batch 16 of YOLOv8's 64: a step per batch at a quarter of the lr (0.002 x 16 / 64), no beta1 warmup
    assert values == {"nbs": 16, "warmup.epochs": 3.0, "optim.lr": 0.0005, "warmup.momentum": None}
    assert accumulate == 1 and weight_decay == pytest.approx(0.0005)  # 0.0005 x 16 x 1 / 16; AdamW scales it by lr
    assert resolved(["pretrained=start.pt", "batch_size=8"])[1]["optim.lr"] == 0.00025
    assert resolved(["pretrained=start.pt", "batch_size=128"])[1] == \
        {"nbs": 128, "warmup.epochs": 3.0, "optim.lr": 0.002, "warmup.momentum": None}  # >= YOLOv8's 64: the full lr
    assert resolved(["pretrained=start.pt"], num_classes=80)[1]["optim.lr"] == 0.00003  # 0.000119 / 4, 6 decimals


def test_a_long_run_from_weights_warms_up_longer_at_the_same_rate():
    """From weights the warm-up is a fifth of the run (at least 3 epochs) and the lr scale grows with it, so
    the lr climbs at a 3-epoch warm-up's rate (a quarter of the lr per 3 epochs at batch 16) for longer:
    up to 15 epochs the recipe is unchanged; 30 epochs warm up for 6 to half the lr; 60 for 12, to half the lr
    too (twice nbs / 64 at most: the full lr at a step per batch broke a 60-epoch run)."""
    def run(epochs, *extra):
        values = resolved(["pretrained=start.pt", f"epochs={epochs}", *extra])[1]
        return values["warmup.epochs"], values["optim.lr"]
    assert run(3) == (3.0, 0.0005) and run(10) == (3.0, 0.0005) and run(15) == (3.0, 0.0005)
    assert run(30) == (6.0, 0.001)
    assert run(60) == (12.0, 0.001) and run(300) == (60.0, 0.001)  # at most twice 16 / 64
    assert run(60, "batch_size=32") == (12.0, 0.002) and run(60, "batch_size=64") == (12.0, 0.002)  # never above the lr
    assert run(20) == (4.0, 0.000667)  # 0.002 x 16 / 64 x 4 / 3, 6 decimals
    assert run(30, "batch_size=8") == (6.0, 0.0005)  # 8 / 64 x 6 / 3
    assert run(30, "finetune.lr_scale=0.25") == (6.0, 0.0005)  # a scale given: kept
    assert run(30, "finetune.warmup_epochs=3") == (3.0, 0.0005)  # the recipe before, for a 30-epoch run
    assert resolve_warmup_epochs("auto", 30, pretrained=False) == 3.0
    assert resolve_warmup_epochs("auto", 40, pretrained=True) == 8.0
    assert resolve_warmup_epochs("auto", 40, pretrained=True, finetune_warmup_epochs=4) == 4.0
    assert resolve_warmup_epochs(1.5, 40, pretrained=True) == 1.5
    assert resolve_lr("auto", 6, pretrained=True, nbs=16, warmup_epochs=6.0) == 0.0005  # 0.001 x 16 / 64 x 2
    assert resolve_lr("auto", 6, pretrained=True, nbs=16, warmup_epochs=1.0) == 0.00025  # never below nbs / 64

def test_finetune_keys_and_explicit_values_win():
    assert resolved(["pretrained=start.pt", "finetune.nbs=32", "finetune.lr_scale=0.5", "finetune.warmup_epochs=2",
                     "finetune.warmup_momentum=0.85"])[1] == \
        {"nbs": 32, "warmup.epochs": 2.0, "optim.lr": 0.001, "warmup.momentum": 0.85}
    assert resolved(["pretrained=start.pt", "finetune.nbs=32"])[1]["optim.lr"] == 0.001  # lr_scale auto: 32 / 64
    # YOLOv8's nominal batch given: the full lr, a step every 4 batches (the recipe before this rule)
    assert resolved(["pretrained=start.pt", "nbs=64"])[1] == \
        {"nbs": 64, "warmup.epochs": 3.0, "optim.lr": 0.002, "warmup.momentum": None}
    assert resolved(["pretrained=start.pt", "nbs=16", "optim.lr=0.0005", "warmup.momentum=0.8", "epochs=30",
                     "warmup.epochs=3"])[1] == {"nbs": 16, "warmup.epochs": 3.0, "optim.lr": 0.0005, "warmup.momentum": 0.8}
    assert resolved(["pretrained=start.pt", "optim=sgd"])[1] == \
        {"nbs": 16, "warmup.epochs": 3.0, "optim.lr": 0.01, "warmup.momentum": None}  # a number: kept
    # warmup.epochs given: the lr scale follows it (6 epochs: half the lr), the warm-up is the one given
    assert resolved(["pretrained=start.pt", "warmup.epochs=6"])[1]["optim.lr"] == 0.001
    assert resolved(["warmup.momentum=null"])[1]["warmup.momentum"] is None
    assert resolved(["experiment=yolov8_coco", "data.root=/nonexistent"], num_classes=80)[1] == \
        {"nbs": 64, "warmup.epochs": 3.0, "optim.lr": 0.01, "warmup.momentum": 0.8}  # the COCO recipe sets its own nbs from scratch


def test_a_resume_keeps_the_scratch_resolution_of_auto():
    # a resumed run's config is its checkpoint's, already resolved; were an auto left, it is not a fresh start
    assert resolved(["pretrained=start.pt", "resume=last.pt", "epochs=30"])[1] == \
        {"nbs": 16, "warmup.epochs": 3.0, "optim.lr": 0.002, "warmup.momentum": 0.8}


def test_resolvers_by_hand():
    assert resolve_nbs("auto", 16, pretrained=False, finetune_nbs=64) == 16
    assert resolve_nbs("auto", 16, pretrained=True, finetune_nbs=64) == 64
    assert resolve_nbs("auto", 16, pretrained=True, finetune_nbs="auto") == 16
    assert resolve_nbs(24, 16, pretrained=True, finetune_nbs=64) == 24
    assert resolve_lr("auto", 6, pretrained=False, finetune_lr_scale=0.25) == 0.001
    assert resolve_lr("auto", 6, pretrained=True, finetune_lr_scale=0.25) == 0.00025
    assert resolve_lr("auto", 6, pretrained=True, finetune_lr_scale="auto", nbs=16) == 0.00025  # x 16 / 64
    assert resolve_lr("auto", 6, pretrained=True, finetune_lr_scale="auto", nbs=256) == 0.001  # at most x 1
    assert resolve_lr("auto", 6, pretrained=False, finetune_lr_scale="auto", nbs=16) == 0.001  # scratch: never scaled
    assert resolve_lr(0.01, 6, pretrained=True, finetune_lr_scale=0.25) == 0.01
    assert resolve_warmup_momentum("auto", pretrained=False, finetune_momentum=None) == 0.8
    assert resolve_warmup_momentum("auto", pretrained=True, finetune_momentum=None) is None
    assert resolve_warmup_momentum(0.85, pretrained=True, finetune_momentum=None) == 0.85


def test_adamw_beta1_warms_up_from_scratch_and_stays_from_weights():
    """From scratch beta1 rises 0.8 -> 0.9 over the warmup (0.85 halfway); from weights it is 0.9 at every
    iteration, as under ultralytics' AdamW; the lr ramp is the same in both."""
    def betas(warmup_momentum):
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
        optimizer = build_optimizer(lambda groups: torch.optim.AdamW(groups, lr=0.002, betas=(0.9, 0.999)), model, 5e-4)
        out = []
        for iteration in (0, 10, 20):
            apply_schedule(optimizer, LinearSchedule(lrf=0.01), epoch=0, iteration=iteration, epochs=3, warmup_iters=20,
                           warmup_bias_lr=0.0, warmup_momentum=warmup_momentum)
            out += [optimizer.param_groups[0]["betas"][0], optimizer.param_groups[0]["lr"]]
        return out
    assert betas(0.8) == pytest.approx([0.8, 0.0, 0.85, 0.001, 0.9, 0.002])  # (beta1, lr) per iteration
    assert betas(None) == pytest.approx([0.9, 0.0, 0.9, 0.001, 0.9, 0.002])
