"""Trainer fault handling: non-finite losses are skipped, several in a row stop the run."""
import pytest
import torch
from omegaconf import OmegaConf

from detector.engine.trainer import NonFiniteLossError, TrainState, amp_dtype, handle_nonfinite


def test_nonfinite_losses_are_counted_and_stop_the_run_with_advice(caplog):
    cfg = OmegaConf.create({"max_nonfinite_steps": 3})
    state = TrainState()
    losses = {"loss_cls": torch.tensor(float("nan")), "loss": torch.tensor(float("nan"))}
    handle_nonfinite(cfg, state, losses, iteration=5)
    handle_nonfinite(cfg, state, losses, iteration=6)
    assert state.nonfinite_in_row == 2 and "non-finite loss at iteration 6" in caplog.text
    with pytest.raises(NonFiniteLossError, match="3 non-finite losses in a row.*optim.lr.*amp=false.*labels"):
        handle_nonfinite(cfg, state, losses, iteration=7)


def test_amp_is_off_on_cpu_and_when_disabled():
    assert amp_dtype(torch.device("cpu"), True) is None
    assert amp_dtype(torch.device("cuda"), False) is None


def _epoch_batches(cfg, train_set, epoch: int) -> list[dict]:
    """What the trainer's loader yields in ``epoch`` (mosaic closed for the last epoch, as close_mosaic=1 does)."""
    from detector.engine import build

    train_set.set_mosaic(1.0 if epoch < 2 else 0.0)
    train_set.set_epoch(epoch)
    return list(build.build_train_loader(cfg, train_set, epoch=epoch, rank=0, world_size=1))


@pytest.mark.parametrize("cache", ["off", "ram", "disk", "auto"])
def test_resume_sees_the_batches_of_an_uninterrupted_run_in_every_cache_mode(tmp_path, monkeypatch, cache):
    """A run resumed at epoch 1 (a new process: new data set, new cache, 2 workers) gets exactly the
    batches that an uninterrupted run got in epochs 1 and 2 (with the default mosaic_partners=auto,
    the cache decides the partners: both runs use the same mode)."""
    from pathlib import Path

    import cv2
    import numpy as np

    from detector.data import YoloDetection
    from detector.engine import build

    monkeypatch.setenv("DETECTOR_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "set"
    (root / "labels" / "t").mkdir(parents=True)
    (root / "images" / "t").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(7):
        w, h = int(rng.integers(48, 160)), int(rng.integers(48, 160))
        cv2.imwrite(str(root / "images" / "t" / f"{i}.jpg"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        (root / "labels" / "t" / f"{i}.txt").write_text(f"{i % 2} 0.5 0.5 0.4 0.3\n0 0.3 0.3 0.2 0.2\n")
    train_yaml = OmegaConf.load(Path(__file__).resolve().parents[2] / "configs" / "train.yaml")
    cfg = OmegaConf.create({"seed": 5, "imgsz": 64, "batch_size": 3, "workers": 2, "cache": cache,
                            "augment": train_yaml.augment})
    uninterrupted = build.build_train_set(cfg, YoloDetection(root, "t", names=["a", "b"]))
    expected = [_epoch_batches(cfg, uninterrupted, epoch) for epoch in range(3)]
    resumed_cfg = cfg
    resumed = build.build_train_set(resumed_cfg, YoloDetection(root, "t", names=["a", "b"]))
    assert (resumed.cache is None) == (cache == "off")  # auto: a set this small is kept in RAM
    for epoch in (1, 2):
        got = _epoch_batches(resumed_cfg, resumed, epoch)
        assert len(got) == len(expected[epoch]) == 3
        for a, b in zip(got, expected[epoch]):
            for key in ("images", "boxes", "labels", "gt_mask", "image_ids"):
                assert torch.equal(a[key], b[key]), (epoch, key)
