"""End-to-end: tools/convert.py, then export/predict/train on an ultralytics file or its conversion."""
import json

import cv2
import numpy as np
import pytest
import torch

from detector.data.synthetic import make_image
from tests.cli_runner import run_cli

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def converted(tmp_path_factory, ul_checkpoint):
    out = tmp_path_factory.mktemp("convert") / "yolov8n_ours.pt"
    result = run_cli("convert.py", ul_checkpoint, out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "YOLOv8n, 80 classes, 354 of 355 tensors mapped" in result.stdout
    return out


def test_converted_file_is_plain_tensors_and_equals_the_import(converted, ul_checkpoint):
    from detector.interop import load_ultralytics

    state = torch.load(converted, map_location="cpu", weights_only=True)
    assert state["model_args"] == {"arch": "yolov8", "scale": "n", "num_classes": 80, "reg_max": 16, "cls_width": None}
    assert state["names"][0] == "person" and state["config"]["imgsz"] == 160
    assert state["config"]["source"]["format"] == "ultralytics"
    imported = load_ultralytics(ul_checkpoint)[0].state_dict()
    assert state["model"].keys() == imported.keys()
    assert all(torch.equal(state["model"][k], v) for k, v in imported.items())


def test_convert_refuses_bad_input_and_overwriting(tmp_path, converted):
    bad = tmp_path / "notes.pt"
    bad.write_text("not a checkpoint")
    result = run_cli("convert.py", bad, tmp_path / "out.pt")
    assert result.returncode != 0 and f"error: {bad} is not a torch checkpoint" in result.stderr
    assert not (tmp_path / "out.pt").exists()
    result = run_cli("convert.py", bad, converted)
    assert result.returncode != 0 and "exists; pass --force" in result.stderr


@pytest.mark.parametrize("which", ["converted", "ultralytics"])
def test_export_of_an_imported_model_passes_the_parity_check(tmp_path, which, converted, ul_checkpoint):
    ckpt = converted if which == "converted" else ul_checkpoint
    result = run_cli("export.py", f"ckpt={ckpt}", f"hydra.run.dir={tmp_path}", "latency_runs=0",
                     f"output={tmp_path / 'model.onnx'}")
    assert result.returncode == 0, result.stderr[-2000:]
    log = (tmp_path / "export.log").read_text() if (tmp_path / "export.log").exists() else result.stderr
    assert "max abs diff onnxruntime vs pytorch (predictions, 1x160x160)" in log + result.stdout + result.stderr
    assert (tmp_path / "model.onnx").is_file()


def test_predict_takes_the_ultralytics_file(tmp_path, ul_checkpoint):
    image, _ = make_image(np.random.default_rng(3), 100, 140)
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    run_dir = tmp_path / "run"
    result = run_cli("predict.py", f"ckpt={ul_checkpoint}", f"source={tmp_path / 'a.png'}", f"hydra.run.dir={run_dir}",
                     "conf=0.01", "save_images=false")
    assert result.returncode == 0, result.stderr[-2000:]
    records = json.loads((run_dir / "detections.json").read_text())
    assert records[0]["width"] == image.shape[1] and records[0]["detections"]
    assert all(d["name"] in ("person", "car", "bicycle") or d["name"] for d in records[0]["detections"])


def tiny_train_args(tmp_path, run_dir, *extra):
    return [f"hydra.run.dir={run_dir}", f"data.root={tmp_path / 'shapes'}", "data.num_train=8", "data.num_val=4",
            "data.min_size=96", "data.max_size=128", "imgsz=64", "batch_size=4", "workers=0", "progress=false",
            "close_mosaic=1", "warmup.min_iters=2", "epochs=1", *extra]


def test_train_from_ultralytics_weights_with_freeze(tmp_path, ul_checkpoint):
    run_dir = tmp_path / "run"
    # nbs=4: a step per batch, so that the second of the two steps has a learning rate (the first is at lr 0)
    result = run_cli("train.py", *tiny_train_args(tmp_path, run_dir, f"pretrained={ul_checkpoint}", "freeze=10", "nbs=4"))
    assert result.returncode == 0, result.stderr[-3000:]
    log = (run_dir / "train.log").read_text()
    # the class branch keeps the checkpoint's width (80, not n's 64 at 6 classes): only its last conv is new
    assert "loaded 348, re-initialised 6, skipped 0 tensors (checkpoint has 80 classes, the model 6" in log
    assert "freeze=10: 81 parameter tensors frozen" in log
    # 6 classes: 0.002 x 5 / 10 = 0.001, x 4 / 64 for the nominal batch of 4 (finetune.lr_scale auto)
    assert "starting from weights: nbs 4, warmup.epochs 3, optim.lr 6.3e-05, warmup.momentum none (finetune.*" in log
    checkpoint = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["config"]["nbs"] == 4 and checkpoint["config"]["optim"]["lr"] == 6.3e-05  # what ran, for resume
    assert checkpoint["model_args"]["cls_width"] == 80 and checkpoint["config"]["model"]["cls_width"] == 80
    from detector.engine.checkpoint import load_checkpoint

    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")[0].head.cls_width == 80
    state = checkpoint["train_state"]["model"]
    from detector.interop import load_ultralytics

    source = load_ultralytics(ul_checkpoint)[0].state_dict()
    for name in ("backbone.stem.conv.weight", "backbone.stage4.2.cv2.conv.weight"):  # frozen: unchanged
        assert torch.equal(state[name], source[name]), name
    assert not torch.equal(state["neck.top_down3.cv1.conv.weight"], source["neck.top_down3.cv1.conv.weight"])


def test_train_from_weights_runs_the_finetune_recipe(tmp_path, ul_checkpoint):
    """pretrained= with nbs and optim.lr left at auto: a step per batch (nbs 4 at batch 4) at the auto lr x
    4 / 64, written into the run's config so that a resume rebuilds the same optimiser."""
    run_dir = tmp_path / "run"
    result = run_cli("train.py", *tiny_train_args(tmp_path, run_dir, f"pretrained={ul_checkpoint}"))
    assert result.returncode == 0, result.stderr[-3000:]
    log = (run_dir / "train.log").read_text()
    # 6 classes: 0.002 x 5 / 10 = 0.001, x 4 / 64
    assert "starting from weights: nbs 4, warmup.epochs 3, optim.lr 6.3e-05, warmup.momentum none (finetune.*" in log
    assert "accumulate 1" in log and "(accumulate 1, nbs 4, lr 6.3e-05): few, from weights" in log
    assert "too few to learn from" not in log
    config = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["config"]
    assert config["nbs"] == 4 and config["optim"]["lr"] == 6.3e-05 and config["warmup"]["momentum"] is None


def test_train_with_the_wrong_scale_fails_at_start(tmp_path, ul_checkpoint):
    result = run_cli("train.py", *tiny_train_args(tmp_path, tmp_path / "run", f"pretrained={ul_checkpoint}",
                                                   "model=s"))
    assert result.returncode != 0
    assert "checkpoint is scale n, the model is scale s; use model=n" in result.stderr
