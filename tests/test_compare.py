"""tools/compare.py and detector.compare: the data.yaml check, the commands, divergence, the table, the
orchestration (with a fake runner), and one tiny end-to-end run when ultralytics is importable."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from detector.compare import (Budget, DataYamlError, PreflightError, Result, check_data_yaml, format_table, ours_outcome,
                              ours_train_command, parse_key_values, run_compare, ultralytics_available,
                              ultralytics_outcome, ultralytics_train_args, write_resolved_yaml)
from tests.reference.yolov8 import ultralytics_batch
from tests.cli_runner import run_cli

ROOT = Path(__file__).resolve().parents[1]
BUDGET = Budget(epochs=2, imgsz=64, batch=2, workers=0, seed=3, device="cpu")


def make_yolo_set(root: Path, n_train=3, n_val=2, size=64):
    """A tiny YOLO-layout set: images/{train,val}/*.jpg and labels/{train,val}/*.txt, one box each."""
    import cv2

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            image[16:48, 12:40] = (40, 200, 230)
            cv2.imwrite(str(root / "images" / split / f"{split}{i}.jpg"), image)
            (root / "labels" / split / f"{split}{i}.txt").write_text("0 0.40625 0.5 0.4375 0.5\n")
    return root


def write_yaml(path: Path, content) -> Path:
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


# --- the data.yaml check ------------------------------------------------------------------------

def test_check_data_yaml_reads_paths_names_and_counts(tmp_path):
    make_yolo_set(tmp_path / "set")
    (tmp_path / "set" / "val.txt").write_text("images/val/val0.jpg\nimages/val/val1.jpg\n\n")
    data = write_yaml(tmp_path / "set" / "data.yaml", {"path": str(tmp_path / "set"), "train": "images/train",
                                                        "val": "val.txt", "names": {1: "b", 0: "a"}})
    info = check_data_yaml(data)
    assert info["names"] == ["a", "b"] and info["train_images"] == 3 and info["val_images"] == 2
    assert info["train"] == [tmp_path / "set" / "images" / "train"] and info["root"] == tmp_path / "set"
    # no 'path': the yaml's folder; a relative one that is not under the working directory: from the yaml's folder
    write_yaml(data, {"train": ["images/train", "images/val"], "val": "images/val", "names": ["a"]})
    assert check_data_yaml(data)["train_images"] == 5
    write_yaml(data, {"path": "../set", "train": "images/train", "val": "images/val", "names": ["a"]})
    assert check_data_yaml(data)["root"] == tmp_path / "set"


@pytest.mark.parametrize("content, message", [
    ("names: [a\n", "not valid YAML"),
    ("- a\n- b\n", "expected a mapping"),
    ({"train": "images/train", "val": "images/val"}, "key 'names'"),
    ({"train": "images/train", "val": "images/val", "names": []}, "key 'names'"),
    ({"train": "images/train", "val": "images/val", "names": {"x": "a"}}, "key 'names' must map integers"),
    ({"train": "images/train", "val": "images/val", "names": ["a"], "nc": 2}, "key 'nc' is 2 but 'names' has 1"),
    ({"train": "images/train", "names": ["a"]}, "key 'val' is missing"),
    ({"train": "images/nope", "val": "images/val", "names": ["a"]}, "key 'train': "),
    ({"train": "images/train", "val": "empty", "names": ["a"]}, "key 'val': no images"),
    ({"path": 3, "train": "images/train", "val": "images/val", "names": ["a"]}, "key 'path' must be a string"),
])
def test_bad_data_yaml_names_file_and_key(tmp_path, content, message):
    make_yolo_set(tmp_path)
    (tmp_path / "empty").mkdir()
    path = write_yaml(tmp_path / "data.yaml", content)
    with pytest.raises(DataYamlError, match=message) as error:
        check_data_yaml(path)
    assert str(path) in str(error.value)
    with pytest.raises(DataYamlError, match="no such file"):
        check_data_yaml(tmp_path / "missing.yaml")


def test_resolved_copy_reads_back_the_same_from_anywhere(tmp_path, monkeypatch):
    make_yolo_set(tmp_path / "set")
    data = write_yaml(tmp_path / "set" / "data.yaml", {"path": ".", "train": "images/train", "val": "images/val",
                                                        "names": ["a", "b"]})
    monkeypatch.chdir(tmp_path)  # ultralytics would take "." as this folder; we take the yaml's
    info = check_data_yaml(data)
    copy = write_resolved_yaml(info, tmp_path / "elsewhere.yaml")
    content = yaml.safe_load(copy.read_text())
    assert content["path"] == str(tmp_path / "set") and content["val"] == [str(tmp_path / "set" / "images" / "val")]
    again = check_data_yaml(copy)
    assert {k: again[k] for k in ("root", "names", "train", "val", "train_images", "val_images")} == \
        {k: info[k] for k in ("root", "names", "train", "val", "train_images", "val_images")}


# --- arguments and commands ---------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [({"imgsz": 100}, "multiple of 32"), ({"epochs": 0}, "epochs"),
                                             ({"scale": "q"}, "model scale"), ({"workers": -1}, "workers")])
def test_budget_refuses_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Budget(**{"epochs": 1, "imgsz": 64, "batch": 2, "workers": 0, **kwargs})


def test_both_commands_carry_the_same_budget(tmp_path):
    command = ours_train_command(tmp_path / "d.yaml", BUDGET, tmp_path / "ours", ["loss_cls=bce"])
    assert command[1:4] == ["-m", "detector", "train"] and f"data.data_yaml={tmp_path / 'd.yaml'}" in command
    for item in ("epochs=2", "imgsz=64", "batch_size=2", "workers=0", "seed=3", "device=cpu", "model=yolov8n", "loss_cls=bce"):
        assert item in command
    args = ultralytics_train_args(tmp_path / "d.yaml", BUDGET, tmp_path / "u", {"lr0": 0.02})
    assert {k: args[k] for k in ("epochs", "imgsz", "batch", "workers", "seed", "device", "pretrained", "lr0")} == \
        {"epochs": 2, "imgsz": 64, "batch": 2, "workers": 0, "seed": 3, "device": "cpu", "pretrained": False, "lr0": 0.02}
    assert args["project"] == str(tmp_path / "u") and args["name"] == "train"
    assert ultralytics_train_args(tmp_path, Budget(1, 64, 2, 0, device="auto"), tmp_path)["device"] is None
    assert ultralytics_train_args(tmp_path, Budget(1, 64, 2, 0, device="cuda:1"), tmp_path)["device"] == "1"
    assert parse_key_values(["lr0=0.01", "mosaic=0", "optimizer=SGD"]) == {"lr0": 0.01, "mosaic": 0, "optimizer": "SGD"}
    with pytest.raises(ValueError, match="expected key=value"):
        parse_key_values(["lr0"])


# --- outcomes -------------------------------------------------------------------------------------

def test_ultralytics_outcome_reads_time_and_flags_nan_losses(tmp_path):
    (tmp_path / "results.csv").write_text("epoch,time,train/box_loss,train/cls_loss,metrics/mAP50-95(B)\n"
                                          "1,20.0,1.5,2.0,0.01\n2,50.0,1.2,1.8,0.02\n")
    result = ultralytics_outcome(tmp_path, 0, "", train_images=100, epochs=2)
    assert result.status == "ok" and result.train_s == 50.0 and result.images_per_s == pytest.approx(4.0)
    (tmp_path / "results.csv").write_text("epoch,time,train/box_loss,train/cls_loss\n1,20.0,nan,2.0\n")
    assert ultralytics_outcome(tmp_path, 0, "", 100, 2).status == "diverged"
    crashed = ultralytics_outcome(tmp_path / "none", 1, "RuntimeError: Training failed: NaN persisted for 4 epochs", 100, 2)
    assert crashed.status == "diverged" and "NaN persisted" in crashed.note
    failed = ultralytics_outcome(tmp_path / "none", 1, "Traceback\nKeyError: 'x'\n", 100, 2)
    assert failed.status == "failed" and failed.note == "KeyError: 'x'" and math.isnan(failed.train_s)


def test_ours_outcome_tells_divergence_from_failure(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"train_seconds": 25.0}))
    (tmp_path / "results.csv").write_text("epoch,loss_cls,loss_box,loss,images_per_s\n1,1.0,2.0,3.0,9.0\n")
    ok = ours_outcome(tmp_path, 0, "WARNING non-finite loss at iteration 3: step skipped", train_images=50, epochs=2)
    assert ok.status == "ok" and ok.images_per_s == pytest.approx(4.0)  # one skipped step is not divergence
    stopped = ours_outcome(tmp_path, 1, "error: 10 non-finite losses in a row (last: ...)", 50, 2)
    assert stopped.status == "diverged"
    (tmp_path / "results.csv").write_text("epoch,loss_cls,loss_box,loss\n1,inf,2.0,inf\n")
    assert ours_outcome(tmp_path, 0, "", 50, 2).status == "diverged"
    assert ours_outcome(tmp_path / "none", 1, "error: data.yaml: key 'val' ...", 50, 2).status == "failed"


def test_table_values_ratios_and_diverged_cells():
    ours = Result("ours (n)", metrics={"AP": 0.3, "AP50": 0.6, "AP75": 0.25, "spearman": 0.5}, wall_s=100.0,
                  images_per_s=12.0)
    theirs = Result("YOLOv8n", metrics={"AP": 0.25, "AP50": 0.5, "AP75": 0.2, "spearman": 0.4}, wall_s=80.0,
                    images_per_s=10.0)
    lines = format_table([ours, theirs]).splitlines()
    assert lines[0] == "| model | AP | AP50 | AP75 | score-IoU Spearman | wall time (s) | train images/s |"
    assert lines[2] == "| ours (n) | 0.300 | 0.600 | 0.250 | 0.500 | 100 | 12.00 |"
    assert lines[4] == "| ours (n) / YOLOv8n | 1.20x | 1.20x | 1.25x | 1.25x | 1.25x | 1.20x |"
    theirs.status, theirs.note, theirs.metrics = "diverged", "NaN persisted", {"AP": 0.0}
    table = format_table([ours, theirs])
    assert "| YOLOv8n | diverged | diverged | diverged | diverged | 80 | 10.00 |" in table
    assert "0.000" not in table and "/ YOLOv8n" not in table and "YOLOv8n diverged: NaN persisted" in table


# --- orchestration with a fake runner -----------------------------------------------------------------

class FakeRunner:
    """Stands in for subprocess.run: records the commands and writes what each tool would."""

    def __init__(self, ultralytics_nan=False, preflight_error=None):
        self.commands, self.ultralytics_nan, self.preflight_error = [], ultralytics_nan, preflight_error

    def __call__(self, command, **kwargs):
        self.commands.append(command)
        text = " ".join(command)
        if "preflight" in text and self.preflight_error:
            return subprocess.CompletedProcess(command, 1, "", f"Traceback ...\n{self.preflight_error}\n")
        if "-m detector train" in text:
            run = Path(command[-1].split("=", 1)[1])
            (run / "checkpoints").mkdir(parents=True)
            (run / "checkpoints" / "best.pt").write_bytes(b"x")
            (run / "summary.json").write_text(json.dumps({"train_seconds": 30.0}))
        elif "from ultralytics import YOLO" in text:
            save = Path(json.loads(command[-1])["project"]) / "train"
            (save / "weights").mkdir(parents=True)
            (save / "weights" / "best.pt").write_bytes(b"y")
            loss = "nan" if self.ultralytics_nan else "1.0"
            (save / "results.csv").write_text(f"epoch,time,train/box_loss\n1,10,1.0\n2,20.0,{loss}\n")
        elif "-m detector convert" in text:
            Path(command[5]).write_bytes(b"z")
        elif "-m detector eval" in text:
            run = Path(command[-1].split("=", 1)[1])
            run.mkdir(parents=True)
            ap = 0.4 if "eval_ours" in text else 0.2
            (run / "metrics.json").write_text(json.dumps({"metrics": {"AP": ap, "AP50": 0.5, "AP75": 0.3, "spearman": 0.1}}))
        return subprocess.CompletedProcess(command, 0, "", "")


def test_run_compare_trains_both_then_converts_and_evaluates_both(tmp_path):
    make_yolo_set(tmp_path / "set", n_train=6)
    data = write_yaml(tmp_path / "data.yaml", {"path": str(tmp_path / "set"), "train": "images/train",
                                               "val": "images/val", "names": ["a"]})
    runner = FakeRunner()
    ours, theirs = run_compare(data, BUDGET, tmp_path / "out", runner=runner, log=lambda *_: None)
    kinds = [next(k for k in ("detector train", "YOLO", "detector convert", "detector eval") if k in " ".join(c))
             for c in runner.commands]
    assert kinds == ["YOLO", "detector train", "YOLO", "detector eval", "detector convert", "detector eval"]
    trial = json.loads(runner.commands[0][-1])  # the preflight: 1 epoch, 64 px, on 4 train / 2 val images
    assert (trial["epochs"], trial["imgsz"], trial["batch"], trial["workers"]) == (1, 64, 2, 0)
    preflight = yaml.safe_load(Path(trial["data"]).read_text())
    assert len(Path(preflight["train"]).read_text().split()) == 4 and len(Path(preflight["val"]).read_text().split()) == 2
    assert all(Path(line).is_file() for line in Path(preflight["train"]).read_text().split())
    assert f"ckpt={tmp_path / 'out' / 'yolov8n_converted.pt'}" in runner.commands[-1]
    assert all("imgsz=64" in c for c in runner.commands if "eval.py" in " ".join(c))
    assert ours.metrics["AP"] == 0.4 and theirs.metrics["AP"] == 0.2
    assert ours.images_per_s == pytest.approx(6 * 2 / 30.0) and theirs.images_per_s == pytest.approx(6 * 2 / 20.0)
    assert json.loads((tmp_path / "out" / "compare.json").read_text())["results"][1]["name"] == "YOLOv8n"


def test_preflight_lists_linked_images_by_their_own_path(tmp_path):
    """`detector export-yolo` links its images from the shapes cache; ultralytics finds each label from the
    image's path (images/ -> labels/), so the trial's list keeps the link, never its target."""
    from detector.compare import write_preflight_yaml

    source = make_yolo_set(tmp_path / "source")
    linked = tmp_path / "linked"
    for split in ("train", "val"):
        (linked / "images" / split).mkdir(parents=True)
        (linked / "labels" / split).mkdir(parents=True)
        for image in (source / "images" / split).iterdir():
            (linked / "images" / split / image.name).symlink_to(image)
            (linked / "labels" / split / f"{image.stem}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    info = check_data_yaml(write_yaml(linked / "data.yaml", {"path": str(linked), "train": "images/train",
                                                             "val": "images/val", "names": ["a"]}))
    trial = yaml.safe_load(write_preflight_yaml(info, tmp_path / "preflight").read_text())
    listed = Path(trial["train"]).read_text().split()
    assert listed and all(line.startswith(str(linked / "images" / "train")) for line in listed)


def test_run_compare_reports_divergence_and_skips_its_evaluation(tmp_path):
    make_yolo_set(tmp_path / "set")
    data = write_yaml(tmp_path / "data.yaml", {"path": str(tmp_path / "set"), "train": "images/train",
                                               "val": "images/val", "names": ["a"]})
    runner = FakeRunner(ultralytics_nan=True)
    ours, theirs = run_compare(data, BUDGET, tmp_path / "out", runner=runner, log=lambda *_: None)
    assert theirs.status == "diverged" and not theirs.metrics and ours.status == "ok"
    assert not any("convert.py" in " ".join(c) for c in runner.commands)


def test_bad_data_yaml_fails_before_any_training(tmp_path):
    runner = FakeRunner()
    data = write_yaml(tmp_path / "data.yaml", {"train": "images/train", "names": ["a"]})
    with pytest.raises(DataYamlError, match="key 'val'"):
        run_compare(data, BUDGET, tmp_path / "out", runner=runner, log=lambda *_: None)
    assert runner.commands == []


def test_ultralytics_that_cannot_train_stops_the_compare_before_ours_trains(tmp_path):
    make_yolo_set(tmp_path / "set")
    data = write_yaml(tmp_path / "data.yaml", {"path": str(tmp_path / "set"), "train": "images/train",
                                               "val": "images/val", "names": ["a"]})
    runner = FakeRunner(preflight_error="ModuleNotFoundError: No module named 'polars'")
    with pytest.raises(PreflightError, match="ultralytics cannot train here: ModuleNotFoundError: No module named 'polars'"):
        run_compare(data, BUDGET, tmp_path / "out", ultralytics_extra={"lr0": 0.01}, runner=runner, log=lambda *_: None)
    assert len(runner.commands) == 1 and json.loads(runner.commands[0][-1])["lr0"] == 0.01  # its settings are tried too
    assert (tmp_path / "out" / "preflight" / "ultralytics.log").is_file()


def test_cli_without_ultralytics_says_so(tmp_path):
    if ultralytics_available():
        pytest.skip("ultralytics is importable in this environment")
    result = run_cli("compare.py", tmp_path / "d.yaml")
    assert result.returncode == 2 and "ultralytics is not importable" in result.stderr


@pytest.mark.e2e
def test_cli_end_to_end_tiny(tmp_path):
    if not ultralytics_available():
        pytest.skip("ultralytics is not importable (PYTHONPATH=/path/to/ultralytics to run this test)")
    make_yolo_set(tmp_path / "set", n_train=4, n_val=2)
    data = write_yaml(tmp_path / "data.yaml", {"path": str(tmp_path / "set"), "train": "images/train",
                                               "val": "images/val", "names": ["box"]})
    bad = write_yaml(tmp_path / "bad.yaml", {"path": str(tmp_path / "set"), "train": "images/train",
                                             "val": "images/nowhere", "names": ["box"]})
    tool = [sys.executable, str(ROOT / "tools" / "compare.py")]
    result = run_cli("compare.py", bad, "--out", tmp_path / "bad")
    assert result.returncode == 2 and f"{bad}: key 'val'" in result.stderr and not (tmp_path / "bad" / "ours").exists()
    result = subprocess.run([*tool, str(data), "--epochs", "1", "--imgsz", "64", "--batch", "2", "--workers", "0",
                             "--device", "cpu", "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith(("| ours (n) |", "| YOLOv8n |"))]
    assert len(rows) == 2 and all(len(r.split("|")) == 9 for r in rows)  # 7 cells each: both were evaluated
    saved = json.loads((tmp_path / "out" / "compare.json").read_text())["results"]
    assert [r["status"] for r in saved] == ["ok", "ok"] and all("AP" in r["metrics"] for r in saved)
    assert (tmp_path / "out" / "ultralytics" / "train" / "weights" / "best.pt").is_file()


def test_bench_batch_conversion_to_ultralytics_form():
    """benchmarks/train.py feeds YOLOv8n the same boxes: padded xyxy px -> flat normalised cxcywh."""
    import torch

    batch = {"boxes": torch.tensor([[[0.0, 0.0, 32.0, 16.0], [0, 0, 0, 0]], [[16.0, 32.0, 48.0, 64.0], [8.0, 8.0, 24.0, 40.0]]]),
             "labels": torch.tensor([[2, 0], [1, 3]]), "gt_mask": torch.tensor([[True, False], [True, True]])}
    out = ultralytics_batch(batch, imgsz=64)
    assert out["batch_idx"].tolist() == [0.0, 1.0, 1.0] and out["cls"].tolist() == [[2.0], [1.0], [3.0]]
    assert out["bboxes"].tolist() == [[0.25, 0.125, 0.5, 0.25], [0.5, 0.75, 0.5, 0.5], [0.25, 0.375, 0.25, 0.5]]


def test_pretrained_starts_both_from_the_same_checkpoint(tmp_path):
    """--pretrained: ours gets pretrained=<file> (the safe importer), ultralytics YOLO(<file>), the scale is the file's."""
    from detector.cli.compare import checkpoint_scale
    from detector.compare import ultralytics_train_command

    fixture = Path(__file__).resolve().parent / "fixtures" / "yolov8n_coco128_ultralytics.pt"
    budget = Budget(epochs=2, imgsz=64, batch=2, workers=0, scale=checkpoint_scale(fixture, "n"),
                    pretrained=str(fixture))
    ours = ours_train_command(tmp_path / "d.yaml", budget, tmp_path / "ours")
    assert f"pretrained={fixture.resolve()}" in ours and "model=yolov8n" in ours
    theirs = ultralytics_train_command(tmp_path / "d.yaml", budget, tmp_path / "u")
    assert theirs[3] == str(fixture.resolve()) and json.loads(theirs[4])["pretrained"] is True
    with pytest.raises(ValueError, match="--model s but .* is a yolov8n checkpoint"):
        checkpoint_scale(fixture, "s")
    with pytest.raises(ValueError, match="pretrained checkpoint not found"):
        Budget(epochs=1, imgsz=64, batch=2, workers=0, pretrained=str(tmp_path / "missing.pt"))


def test_a_yolo11_model_name_compares_yolo11_with_yolo11(tmp_path):
    from detector.compare import ultralytics_train_command

    budget = Budget(epochs=1, imgsz=64, batch=2, workers=0, scale="yolo11n")
    assert "model=yolo11n" in ours_train_command(tmp_path / "d.yaml", budget, tmp_path / "ours")
    assert ultralytics_train_command(tmp_path / "d.yaml", budget, tmp_path / "u")[3] == "yolo11n.yaml"
    assert budget.ultralytics_name == "YOLO11n" and Budget(1, 64, 2, 0).ultralytics_name == "YOLOv8n"
    with pytest.raises(ValueError, match="model scale must be one of"):
        Budget(1, 64, 2, 0, scale="yolo12n")
