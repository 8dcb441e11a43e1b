"""Every option of every config group composes, instantiates and trains a step on a tiny batch."""
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from detector.engine import build

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def options(group):
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def compose_train(overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def tiny_batch(num_classes=3):
    torch.manual_seed(0)
    images = torch.rand(2, 3, 64, 64)
    boxes = torch.tensor([[[4.0, 6.0, 40.0, 30.0], [20.0, 20.0, 60.0, 62.0]], [[10.0, 10.0, 30.0, 50.0], [0, 0, 0, 0]]])
    labels = torch.tensor([[0, 2], [1, 0]])
    mask = torch.tensor([[True, True], [True, False]])
    return images, boxes, labels, mask


def one_step(cfg, num_classes=3):
    model = build.build_model(cfg, num_classes)
    criterion = build.build_criterion(cfg, num_classes)
    optimizer = build.build_optimizer(cfg, model, num_classes, cfg.optim.weight_decay)
    images, boxes, labels, mask = tiny_batch(num_classes)
    model.train()
    losses = criterion(model(images), labels, boxes, mask)
    assert set(losses) == {"loss_cls", "loss_box", "loss_dfl", "loss"}
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    optimizer.step()
    return model, criterion, losses


@pytest.mark.parametrize("group", ["loss_cls", "loss_box", "assigner", "optim", "sched"])
def test_every_option_of_group_trains_a_step(group):
    for option in options(group):
        cfg = compose_train([f"{group}={option}"])
        one_step(cfg)
        instantiate(cfg.sched)(0.5)


@pytest.mark.parametrize("scale", ["n", "s"])
def test_model_options_build(scale):
    cfg = compose_train([f"model={scale}"])
    one_step(cfg)


def test_model_configs_all_instantiate():
    for scale in options("model"):
        cfg = compose_train([f"model={scale}"])
        model = build.build_model(cfg, num_classes=80)
        assert model.name == (scale if scale.startswith("yolo") else f"yolov8{scale}")


def test_dfl_off_changes_head_and_criterion_together():
    cfg = compose_train(["dfl=off"])
    model, criterion, losses = one_step(cfg)
    assert cfg.model.reg_max == 1 and criterion.dfl_loss is None and model.reg_max == 1
    assert float(losses["loss_dfl"]) == 0.0
    on = compose_train(["dfl=on", "model=s"])
    assert on.model.reg_max == 16 and on.model.scale == "s"


def test_ablation_combination_from_the_readme():
    cfg = compose_train(["loss_cls=vfl", "loss_box=giou", "dfl=off", "assigner=atss"])
    one_step(cfg)


def test_data_options_compose():
    for option in options("data"):
        cfg = compose_train([f"data={option}"])
        assert "_target_" in cfg.data


def test_experiment_recipe_composes():
    cfg = compose_train(["experiment=yolov8_coco", "data.root=/nonexistent"])
    assert cfg.imgsz == 640 and cfg.epochs == 500 and cfg.loss_cls._target_.endswith("BCELoss")
    assert cfg.optim.lr == 0.01 and cfg.close_mosaic == 10


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(Exception, match="qfl"):
        compose_train(["loss_cls=qfll"])


def test_default_recipe_is_yolov8s_auto_recipe():
    """optimizer=auto on a short run: AdamW at 0.002 x 5 / (4 + classes), bias warmup from 0, 3 warmup
    epochs capped at epochs - 1, mosaic closed for the last 10 epochs (ultralytics 8.4)."""
    from detector.engine.optim import auto_warmup_bias_lr, warmup_iterations

    cfg = compose_train([])
    model = build.build_model(cfg, 6)
    optimizer = build.build_optimizer(cfg, model, 6, 5e-4)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.param_groups[0]["lr"] == 0.001
    assert build.build_optimizer(cfg, model, 80, 5e-4).param_groups[0]["lr"] == 0.000119
    assert cfg.warmup.bias_lr == "auto" and auto_warmup_bias_lr(optimizer) == 0.0
    sgd = build.build_optimizer(compose_train(["optim=sgd"]), model, 6, 5e-4)
    assert sgd.param_groups[0]["lr"] == 0.01 and auto_warmup_bias_lr(sgd) == 0.1
    assert cfg.close_mosaic == 10 and cfg.warmup.epochs == "auto" and cfg.warmup.min_iters == 0
    assert warmup_iterations(3.0, 0, epochs=30, batches=32) == 96
    assert warmup_iterations(3.0, 0, epochs=2, batches=32) == 32  # at most epochs - 1
    assert warmup_iterations(3.0, 0, epochs=1, batches=32) == 0
    assert warmup_iterations(0.5, 30, epochs=4, batches=20) == 30  # the floor
