"""patience=N: the run stops when val AP has not improved for N epochs; the stop survives resume."""
import csv
import json
import shutil
from types import SimpleNamespace

import pytest
import torch

from detector.engine.checkpoint import save_checkpoint
from detector.engine.trainer import TrainState, record_validation, should_stop


def stops(aps, patience, val_interval=1):
    """Feed validations (every ``val_interval`` epochs) to a fresh state: (stop epoch or 0, best epoch)."""
    state = TrainState()
    for i, ap in enumerate(aps):
        epoch = (i + 1) * val_interval
        record_validation(state, ap, epoch, patience)
        if state.stopped_epoch:
            break
    return state.stopped_epoch, state.best_epoch


@pytest.mark.parametrize("aps, patience, val_interval, expected", [
    ([0.1, 0.3, 0.3, 0.2, 0.5], 2, 1, (4, 2)),  # equal is no improvement; 2 epochs after the best
    ([0.1, 0.2, 0.3, 0.4], 1, 1, (0, 4)),  # improving every epoch never stops
    ([0.1, 0.3, 0.3, 0.2, 0.5], 0, 1, (0, 5)),  # 0: off
    ([0.0, 0.0, 0.0, 0.1, 0.1, 0.1], 2, 1, (6, 4)),  # AP 0 does not start the count (YOLOv8's rule)
    ([0.2, 0.2, 0.2], 2, 3, (6, 3)),  # counted in epochs: the validation of epoch 6 is 3 epochs after the best
    ([0.2, 0.2, 0.2], 4, 3, (9, 3)),
])
def test_the_patience_count(aps, patience, val_interval, expected):
    assert stops(aps, patience, val_interval) == expected


def test_should_stop_needs_a_best_above_zero():
    assert should_stop(2, TrainState(best_ap=0.3, best_epoch=2), 4)
    assert not should_stop(2, TrainState(best_ap=0.3, best_epoch=2, patience_start=3), 4)  # trained on after a stop
    assert not should_stop(2, TrainState(best_ap=0.3, best_epoch=2), 3)
    assert not should_stop(2, TrainState(best_ap=0.0, best_epoch=1), 10)
    assert not should_stop(0, TrainState(best_ap=0.3, best_epoch=1), 10)


# ------------------------------------------------------------------------------ runs
def tiny_overrides(root, run_dir, *extra):
    """A run of a handful of steps on a tiny shapes set (as tests/test_train_cli.py's tiny_args)."""
    return [f"hydra.run.dir={run_dir}", f"data.root={root / 'shapes'}", "data.num_train=8", "data.num_val=4",
            "data.min_size=96", "data.max_size=128", "imgsz=64", "batch_size=4", "workers=0", "progress=false",
            "close_mosaic=1", "warmup.min_iters=2", "device=cpu", "logger=csv", *extra]


def train(overrides):
    from detector.engine import tasks
    from detector.engine.compose import run_task

    return run_task("train", overrides, tasks.train)


def scripted_validation(monkeypatch, aps):
    """Validation returns these APs in turn (then the last again): the loop's logic without a detector that
    learns; the epochs it was called for are recorded."""
    seen = []

    def validate(cfg, model, loader, splits, device, dtype, logger, step):
        seen.append(step)
        ap = aps[min(len(seen), len(aps)) - 1]
        return SimpleNamespace(metrics={"AP": ap, "AP50": 2 * ap})

    monkeypatch.setattr("detector.engine.trainer.validate", validate)
    return seen


def epochs_in(run_dir):
    with open(run_dir / "results.csv") as handle:
        return [int(r["epoch"]) for r in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """epochs=6 patience=2 with APs 0.1, 0.3, 0.3, 0.2: stops after epoch 4. (root, run folder, summary)."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("patience")
    scripted_validation(mp, [0.1, 0.3, 0.3, 0.2])
    summary = train(tiny_overrides(root, root / "run", "epochs=6", "patience=2"))
    mp.undo()
    return root, root / "run", summary


@pytest.mark.e2e
def test_the_run_stops_after_patience_epochs_with_last_and_best_intact(stopped_run):
    _, run_dir, summary = stopped_run
    assert epochs_in(run_dir) == [1, 2, 3, 4]
    written = json.loads((run_dir / "summary.json").read_text())
    assert written["stopped_early_at"] == summary["stopped_early_at"] == 4
    assert written["best_epoch"] == 2 and written["best_AP"] == pytest.approx(0.3) and written["epochs"] == 6
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == 3 and last["metrics"]["AP"] == pytest.approx(0.2)  # the final epoch's last.pt
    state = last["train_state"]
    assert (state["next_epoch"], state["best_epoch"], state["stopped_epoch"]) == (4, 2, 4)
    assert state["best_ap"] == pytest.approx(0.3)
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == 1 and best["metrics"]["AP"] == pytest.approx(0.3) and "train_state" not in best
    assert "patience=2: no improvement in 2 epochs since epoch 2 (best AP 0.3000): stopping" in \
        (run_dir / "train.log").read_text()


def resumed_copy(stopped_run, tmp_path):
    _, run_dir, _ = stopped_run
    shutil.copytree(run_dir, tmp_path / "run")
    return tmp_path / "run", [f"resume={tmp_path / 'run' / 'checkpoints' / 'last.pt'}",
                              f"hydra.run.dir={tmp_path / 'job'}"]


@pytest.mark.e2e
def test_resuming_a_stopped_run_runs_nothing_unless_epochs_is_raised(stopped_run, tmp_path, monkeypatch):
    run_dir, resume = resumed_copy(stopped_run, tmp_path)
    seen = scripted_validation(monkeypatch, [0.3])
    summary = train(resume)
    assert seen == [] and epochs_in(run_dir) == [1, 2, 3, 4] and summary["stopped_early_at"] == 4
    assert summary["final"]["AP"] == pytest.approx(0.2)  # the checkpoint's, not {}
    assert "this run stopped early at epoch 4 (patience): nothing to run; raise epochs above 6" in \
        (run_dir / "train.log").read_text()

    summary = train([*resume, "epochs=8"])  # more epochs: the count starts again at the stop
    assert seen == [5, 6] and epochs_in(run_dir) == [1, 2, 3, 4, 5, 6]
    assert summary["stopped_early_at"] == 6 and summary["best_epoch"] == 2 and summary["epochs"] == 8
    assert "no improvement in 2 epochs since epoch 4 (best AP 0.3000 at epoch 2): stopping" in \
        (run_dir / "train.log").read_text()


@pytest.mark.e2e
def test_a_checkpoint_from_before_patience_resumes(stopped_run, tmp_path, monkeypatch):
    """No best_epoch / stopped_epoch in its train_state: it loads, and the count starts at the resumed epoch."""
    run_dir, resume = resumed_copy(stopped_run, tmp_path)
    last = run_dir / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    for key in ("best_epoch", "patience_start", "stopped_epoch"):
        del state["train_state"][key]
    save_checkpoint(state, last)
    seen = scripted_validation(monkeypatch, [0.3])
    summary = train([*resume, "epochs=7"])  # patience=2 counts from epoch 4: stops after 6
    assert seen == [5, 6] and epochs_in(run_dir) == [1, 2, 3, 4, 5, 6]
    assert summary["stopped_early_at"] == 6 and summary["best_epoch"] is None  # not known: best.pt has it
    assert "no improvement in 2 epochs since epoch 4 (best AP 0.3000): stopping" in (run_dir / "train.log").read_text()


@pytest.mark.e2e
def test_the_last_epoch_is_not_an_early_stop(stopped_run, tmp_path, monkeypatch):
    root, _, _ = stopped_run
    scripted_validation(monkeypatch, [0.3, 0.1])
    summary = train(tiny_overrides(root, tmp_path / "run", "epochs=2", "patience=1"))
    assert summary["stopped_early_at"] is None and epochs_in(tmp_path / "run") == [1, 2]
