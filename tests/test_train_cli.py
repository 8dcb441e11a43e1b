"""End-to-end runs of tools/train.py on a tiny shapes set (a handful of steps each)."""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.cli_runner import run_cli

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e


def tiny_args(tmp_path, run_dir, *extra):
    return [
        f"hydra.run.dir={run_dir}", f"data.root={tmp_path / 'shapes'}", "data.num_train=8", "data.num_val=4",
        "data.min_size=96", "data.max_size=128", "imgsz=64", "batch_size=4", "workers=0", "progress=false",
        "close_mosaic=1", "warmup.min_iters=2", "eval.diagnostics=false", *extra,
    ]


def run_tool(tool, args, launcher=None, timeout=300):
    """tools/<tool> in this process (tests/cli_runner.py), or in a subprocess (one thread, as CI's 2 cores
    want) under ``launcher`` (``[sys.executable]`` for the plain interpreter)."""
    if launcher is None:
        return run_cli(tool, *args)
    return subprocess.run([*launcher, str(ROOT / "tools" / tool), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def run_train(args, launcher=None, timeout=300):
    return run_tool("train.py", args, launcher=launcher, timeout=timeout)


def read_rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("train")
    run_dir = tmp_path / "run"
    # a real interpreter running tools/train.py: the one run of this file that is the whole process
    result = run_train(tiny_args(tmp_path, run_dir, "epochs=2", "save_period=1", "eval.diagnostics=true"),
                       launcher=[sys.executable])
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path, run_dir, result


def test_cli_run_writes_every_file(finished_run):
    _, run_dir, result = finished_run
    for name in ("checkpoints/last.pt", "checkpoints/best.pt", "checkpoints/epoch1.pt", "results.csv",
                 "summary.json", ".hydra/config.yaml", "train.log", "results.png", "confusion_matrix.png",
                 "confusion_matrix_normalized.png", "PR_curve.png", "F1_curve.png", "reliability.png", "per_class.csv",
                 "diagnostics.json", "val_batch0.jpg"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "tensorboard").iterdir())
    rows = read_rows(run_dir / "results.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(float(r["loss"]) > 0 for r in rows) and "AP" in rows[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {"AP", "AP50", "spearman"} <= set(summary["final"])
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["model_args"]["scale"] == "n" and len(state["names"]) > 0
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert "train_state" not in best


def test_load_checkpoint_gives_a_working_detector(finished_run):
    import detector

    _, run_dir, _ = finished_run
    model, config = detector.load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert config["imgsz"] == 64 and not model.training
    out = model.predict(torch.rand(1, 3, 64, 64))
    assert set(out[0]) == {"boxes", "scores", "labels"}


def test_resume_matches_uninterrupted_run(finished_run):
    tmp_path, run_dir, _ = finished_run
    resumed_dir = tmp_path / "resumed"
    (resumed_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(run_dir / "checkpoints" / "epoch1.pt", resumed_dir / "checkpoints" / "last.pt")
    result = run_train([f"resume={resumed_dir / 'checkpoints' / 'last.pt'}", f"hydra.run.dir={tmp_path / 'x'}"])
    assert result.returncode == 0, result.stderr[-3000:]
    full, resumed = read_rows(run_dir / "results.csv")[1], read_rows(resumed_dir / "results.csv")[0]
    assert resumed["epoch"] == "2"
    for key in ("loss_cls", "loss_box", "loss_dfl", "loss"):
        assert float(resumed[key]) == pytest.approx(float(full[key]), rel=1e-4, abs=1e-6), key
    a = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(resumed_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < 1e-4


def test_corrupted_last_pt_is_reported_on_resume(tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"PK\x03\x04 not really a checkpoint")
    result = run_train([f"resume={bad}", f"hydra.run.dir={tmp_path / 'run'}"])
    assert result.returncode != 0
    assert "corrupted or truncated" in result.stderr + result.stdout


def test_misspelt_option_fails_with_the_valid_choices(tmp_path):
    result = run_train(["loss_cls=qfll", f"hydra.run.dir={tmp_path / 'run'}"])
    assert result.returncode != 0 and "qfl" in result.stderr and "vfl" in result.stderr


def test_two_process_gloo_run(tmp_path):
    """torchrun, 2 CPU processes on gloo, one epoch of yolo11n (its attention block is the part of either
    family DDP has not seen elsewhere): DDP finds a gradient for every parameter (it raises otherwise) and
    rank 0 writes a checkpoint that records the architecture."""
    run_dir = tmp_path / "ddp"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517"]
    result = run_train(tiny_args(tmp_path, run_dir, "model=yolo11n", "epochs=1", "device=cpu", "sync_bn=true"),
                       launcher=launcher)
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model_args"]["arch"] == "yolo11"
    rows = read_rows(run_dir / "results.csv")
    assert len(rows) == 1 and all(float(rows[0][k]) == float(rows[0][k]) for k in rows[0] if k.startswith("loss"))
    assert "sync_bn=true ignored" in result.stdout + result.stderr  # SyncBatchNorm is CUDA-only


def test_eval_cli_reproduces_the_validation_metrics_and_writes_its_files(finished_run, tmp_path):
    _, run_dir, _ = finished_run
    best = run_dir / "checkpoints" / "best.pt"
    result = run_tool("eval.py", [f"ckpt={best}", f"hydra.run.dir={tmp_path / 'eval'}", "workers=0", "device=cpu"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "AP @[IoU=0.50:0.95 | area=all | maxDets=100]" in result.stdout and "class" in result.stdout
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
            "spearman", "pearson"} <= set(metrics["metrics"])
    # the same EMA weights, data and imgsz as the last validation: the same AP (fused conv, so to rounding)
    saved = torch.load(best, weights_only=True)["metrics"]
    assert metrics["metrics"]["AP"] == pytest.approx(saved["AP"], abs=5e-3)
    detections = json.loads((tmp_path / "eval" / "detections.json").read_text())
    assert detections and set(detections[0]) == {"image_id", "category_id", "bbox", "score"}
    for name in ("pr_curves.png", "score_vs_iou.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 1000


def test_eval_refuses_a_data_set_with_another_class_count(finished_run, tmp_path):
    import cv2
    import numpy as np

    _, run_dir, _ = finished_run
    (tmp_path / "imgs").mkdir()
    cv2.imwrite(str(tmp_path / "imgs" / "a.jpg"), np.zeros((64, 64, 3), np.uint8))
    ann = {"images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 64}],
           "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20], "area": 400, "iscrowd": 0}]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    data = [f"data.root={tmp_path}", "data.train_images=imgs", "data.val_images=imgs", "data.train_ann=ann.json",
            "data.val_ann=ann.json"]
    result = run_tool("eval.py", [f"ckpt={run_dir / 'checkpoints' / 'best.pt'}", "data=coco", *data,
                                  f"hydra.run.dir={tmp_path / 'eval'}", "workers=0"])
    assert result.returncode != 0
    assert "predicts 6 classes but the data set has 2" in result.stderr
    assert "Traceback" not in result.stderr


def test_eval_with_a_missing_checkpoint_is_one_clear_line(tmp_path):
    result = run_tool("eval.py", [f"ckpt={tmp_path / 'nope.pt'}", f"hydra.run.dir={tmp_path / 'eval'}"])
    assert result.returncode != 0 and "checkpoint not found" in result.stderr and "Traceback" not in result.stderr


def test_ctrl_c_writes_last_pt_before_exiting(tmp_path):
    import signal
    import time

    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "tools" / "train.py"), *tiny_args(tmp_path, run_dir, "epochs=5000")]
    # A child inherits an ignored SIGINT (a background job of a non-interactive shell has one) and Python then
    # installs no KeyboardInterrupt: spawned while this process catches SIGINT, the child starts with the default.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        for line in proc.stdout:  # wait until the loop is about to start
            if "run folder:" in line:
                break
        time.sleep(3)
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=120)[0]
    finally:
        proc.kill()
    assert proc.returncode == 130, output[-3000:]
    assert "interrupted: writing" in output and "continue with: detector train resume=" in output
    assert "Traceback" not in output
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["train_state"]["interrupted"] is True


def test_a_sweep_then_ablate_gives_one_row_per_arm(tmp_path):
    """detector train -m (Hydra's multirun through the command) and detector ablate on its folder."""
    sweep = tmp_path / "sweep"
    args = [a for a in tiny_args(tmp_path, tmp_path / "unused", "epochs=1") if not a.startswith("hydra.run.dir")]
    result = run_train(["-m", "loss_cls=bce,qfl", f"hydra.sweep.dir={sweep}", *args])
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(str(p.parent.relative_to(sweep)) for p in sweep.rglob("summary.json"))  # data.root's / nest
    assert len(runs) == 2 and runs[0].startswith("0_") and "loss_cls=qfl" in runs[1]
    result = run_tool("ablate.py", [str(sweep)])
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| loss_cls=")]
    assert len(rows) == 2 and (sweep / "ablation.md").is_file()


def test_a_key_nothing_reads_is_refused_before_anything_runs(tmp_path):
    for args, message in ((["epoch=1"], "epoch=1: no key epoch in train's config; did you mean epochs?"),
                          (["+data.data_yaml=my.yaml"], "data.data_yaml needs data=yolo")):
        result = run_train([*args, f"hydra.run.dir={tmp_path / 'run'}"])
        assert result.returncode == 2 and result.stderr.strip().startswith("error:"), result.stderr
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
