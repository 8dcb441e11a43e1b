"""The logger= group: results.csv/results.png always, and each tracker's run read back through its own library."""
import csv
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from detector.engine.logging import RunLogger, flat_params, plot_results
from detector.engine.trackers import CsvTracker, TrackerUnavailableError

TARGET = "detector.engine.trackers.{}"
HAS_MLFLOW = all(importlib.util.find_spec(m) for m in ("mlflow", "sqlalchemy", "alembic"))
HAS_WANDB = importlib.util.find_spec("wandb") is not None


def rows_of(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------------------ results.csv and results.png
def test_results_png_has_one_plot_per_measured_column(tmp_path):
    tracker = CsvTracker(run_dir=tmp_path)
    for epoch, ap in ((1, None), (2, 0.25), (3, None), (4, 0.5)):  # val_interval=2: AP measured every other epoch
        tracker.log_metrics({"loss": 3.0 / epoch, "lr_weights": 0.01, "AP": ap, "spearman": None}, epoch)
    rows = rows_of(tmp_path / "results.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"] and [r["AP"] for r in rows] == ["", "0.25", "", "0.5"]
    figure = plot_results(tmp_path / "results.csv")
    assert [ax.get_title() for ax in figure.axes] == ["loss", "lr_weights", "AP"]  # spearman never measured
    x, y = figure.axes[2].lines[0].get_data()
    assert list(x) == [2, 4] and list(y) == [0.25, 0.5]  # blanks left out, not drawn as 0


def test_every_run_writes_results_csv_and_at_its_end_results_png_also_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = RunLogger(tmp_path, {"tensorboard": {"_target_": TARGET.format("TensorBoardTracker")}})
    assert logger.names == ["csv", "tensorboard"]  # results.csv added: it is not a choice
    for epoch in (1, 2):
        logger.epoch_row({"epoch": epoch, "loss": 1.0 / epoch, "AP": 0.1 * epoch})
    assert not (tmp_path / "results.png").exists()  # drawn once, at the end (2 s of CPU a time)
    logger.close()
    assert [r["loss"] for r in rows_of(tmp_path / "results.csv")] == ["1", "0.5"]
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert [e.step for e in events.Images("results")] == [2]
    assert [(e.step, e.value) for e in events.Scalars("epoch/AP")] == [(1, pytest.approx(0.1)), (2, pytest.approx(0.2))]


def test_no_tracker_chosen_still_writes_the_run_folder_files(tmp_path):
    logger = RunLogger(tmp_path, None)
    logger.epoch_row({"epoch": 1, "loss": 2.0})
    logger.summary({"best_AP": 0.0})
    logger.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "results.png", "summary.json"]


def test_flat_params_keeps_lists_whole():
    config = {"optim": {"lr": 0.01, "betas": [0.9, 0.999]}, "epochs": 3, "experiment": None, "augment": {}}
    assert flat_params(config) == {"optim.lr": 0.01, "optim.betas": [0.9, 0.999], "epochs": 3,
                                   "experiment": None, "augment": {}}


def test_a_failing_tracker_is_warned_about_and_the_run_goes_on(tmp_path, caplog):
    class Broken(CsvTracker):
        def log_metrics(self, metrics, step):
            raise ConnectionError("tracking server gone")

    logger = RunLogger(tmp_path, None)
    logger.trackers.append(Broken(run_dir=tmp_path / "elsewhere"))
    logger.names.append("broken")
    logger.epoch_row({"epoch": 1, "loss": 2.0})
    assert "logger=broken: log_metrics failed (ConnectionError: tracking server gone); the run goes on" in caplog.text
    assert len(rows_of(tmp_path / "results.csv")) == 1


# ------------------------------------------------------------------------------ the config group
LOGGER_OPTIONS = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "configs" / "logger").glob("*.yaml"))


@pytest.mark.parametrize("option", LOGGER_OPTIONS)
def test_every_logger_option_names_a_tracker_whose_keywords_are_its_keys(option, tmp_path):
    import inspect

    from hydra.utils import get_class
    from omegaconf import OmegaConf

    from detector.engine.compose import compose_task

    node = OmegaConf.to_container(compose_task("train", [f"logger={option}"]).logger)
    assert list(node) == [option]
    keys = dict(node[option])
    cls = get_class(keys.pop("_target_"))
    parameters = inspect.signature(cls).parameters
    assert set(parameters) == {"run_dir", *keys} and all(p.kind is p.KEYWORD_ONLY for p in parameters.values())
    assert all(parameters[k].default == v for k, v in keys.items())  # the yaml repeats the code's defaults
    if option in ("csv", "tensorboard"):  # the others start a tracker: the runs below
        logger = RunLogger(tmp_path, node)
        assert logger.names == ["csv"] + [option] * (option != "csv")
        logger.close()


def test_several_loggers_at_once_compose_in_order():
    from detector.engine.compose import compose_task

    assert list(compose_task("train", ["logger=[tensorboard,mlflow,wandb]"]).logger) == ["tensorboard", "mlflow",
                                                                                          "wandb"]
    assert list(compose_task("train", []).logger) == ["tensorboard"]  # the default


# ------------------------------------------------------------------------------ missing packages
@pytest.mark.parametrize("option, module, cls", [("mlflow", "mlflow", "MlflowTracker"),
                                                 ("wandb", "wandb", "WandbTracker")])
def test_a_missing_tracker_package_is_a_named_error_before_anything_runs(tmp_path, monkeypatch, option, module, cls):
    monkeypatch.setitem(sys.modules, module, None)  # import mlflow -> ImportError
    started = []
    monkeypatch.setattr(CsvTracker, "close", lambda self, status="FINISHED": started.append(status))
    choice = {"csv": {"_target_": TARGET.format("CsvTracker")}, option: {"_target_": TARGET.format(cls)}}
    with pytest.raises(TrackerUnavailableError) as error:
        RunLogger(tmp_path, choice)
    assert str(error.value) == f'logger={option} needs the {module} package: pip install "detector[{option}]"'
    assert isinstance(error.value, ValueError)  # the command line turns it into one "error:" line
    assert started == ["FAILED"]  # the trackers already started are closed


def test_the_sqlite_store_without_sqlalchemy_is_named(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sqlalchemy" else real(name, *a))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(TrackerUnavailableError, match=r"logger=mlflow's sqlite store \(sqlite:///.*mlflow.db\) needs "
                                                      r'sqlalchemy: pip install "detector\[mlflow\]"'):
        RunLogger(tmp_path, {"mlflow": {"_target_": TARGET.format("MlflowTracker")}})


# ------------------------------------------------------------------------------ a run with every tracker
def tiny_overrides(root, run_dir, *extra):
    """A run of a handful of steps on a tiny shapes set (as tests/test_train_cli.py's tiny_args)."""
    return [f"hydra.run.dir={run_dir}", f"data.root={root / 'shapes'}", "data.num_train=8", "data.num_val=4",
            "data.min_size=96", "data.max_size=128", "imgsz=64", "batch_size=4", "workers=0", "progress=false",
            "close_mosaic=1", "warmup.min_iters=2", "device=cpu", *extra]


def train(overrides):
    from detector.engine import tasks
    from detector.engine.compose import run_task

    return run_task("train", overrides, tasks.train)


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """Two epochs logged to TensorBoard and to each tracker installed: (run folder, results.csv rows, summary)."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("tracked")
    for name, value in (("WANDB_MODE", "offline"), ("WANDB_SILENT", "true"), ("WANDB_CONSOLE", "off"),
                        ("WANDB_DATA_DIR", str(root / "wandb_data")), ("WANDB_CACHE_DIR", str(root / "wandb_cache")),
                        ("WANDB_CONFIG_DIR", str(root / "wandb_config"))):
        mp.setenv(name, value)
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    loggers = ["tensorboard"] + ["mlflow"] * HAS_MLFLOW + ["wandb"] * HAS_WANDB
    run_dir = root / "run"
    summary = train(tiny_overrides(root, run_dir, "epochs=2", f"logger=[{','.join(loggers)}]"))
    yield run_dir, rows_of(run_dir / "results.csv"), summary, root
    mp.undo()


def column(rows, name):
    return [float(r[name]) for r in rows]


@pytest.mark.e2e
def test_mlflow_holds_the_config_the_epochs_and_the_artifacts(tracked_run):
    pytest.importorskip("mlflow")
    if not HAS_MLFLOW:
        pytest.skip("mlflow's sqlite store needs sqlalchemy and alembic")
    from mlflow.tracking import MlflowClient

    run_dir, rows, summary, _ = tracked_run
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("detector")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.tags["detector.run_dir"] == str(run_dir.resolve())
    params = run.data.params
    assert params["epochs"] == "2" and params["imgsz"] == "64" and params["data.num_train"] == "8"
    assert params["loss_cls._target_"] == "detector.losses.modules.BCELoss"
    assert params["choice.loss_cls"] == "bce"
    for name in ("loss", "loss_cls", "AP", "AP50"):
        history = client.get_metric_history(run.info.run_id, name)
        assert [m.step for m in history] == [1, 2]
        assert [m.value for m in history] == pytest.approx(column(rows, name), rel=1e-5, abs=1e-9), name
    lr = next(c for c in rows[0] if c.startswith("lr_"))
    assert [m.step for m in client.get_metric_history(run.info.run_id, lr)] == [1, 2]
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"checkpoints", "results.csv", "results.png", "summary.json", "val"} <= top
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/best.pt"]
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "val")}
    assert {"val/pr_curves_epoch001.png", "val/pr_curves_epoch002.png"} <= figures
    assert str(run.info.artifact_uri).startswith((run_dir / "mlartifacts").as_uri())  # all inside the run folder


@pytest.mark.e2e
def test_a_resumed_run_continues_its_mlflow_run(tracked_run, tmp_path, monkeypatch):
    if not HAS_MLFLOW:
        pytest.skip("needs mlflow, sqlalchemy and alembic")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tracked_run[3]  # its shapes set
    run_dir = tmp_path / "run"
    train(tiny_overrides(root, run_dir, "epochs=1", "logger=mlflow"))
    train([f"resume={run_dir / 'checkpoints' / 'last.pt'}", "epochs=2", f"hydra.run.dir={tmp_path / 'job'}"])
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("detector").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")] == [1, 2]
    assert runs[0].data.params["epochs"] == "1"  # MLflow's params cannot change: those of the first start


def wandb_records(path):
    """The records of a .wandb file: W&B's 7-byte header, then LevelDB-log chunks (crc32c 4 bytes, length 2,
    type 1: full, 2-4: first, middle, last) in 32 KiB blocks, each record a wandb.proto Record."""
    from wandb.proto import wandb_internal_pb2 as pb

    block, data = 32768, Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a header never straddles blocks: the tail is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def item_key(item):
    return item.key or "/".join(item.nested_key)


@pytest.mark.e2e
def test_wandb_offline_run_holds_the_config_the_epochs_and_the_model_artifact(tracked_run):
    pytest.importorskip("wandb")
    run_dir, rows, _, _ = tracked_run
    (folder,) = (run_dir / "wandb").glob("offline-run-*")  # offline, inside the run folder
    config, history, artifacts, run = {}, [], [], None
    for record in wandb_records(next(folder.glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            config.update({item_key(i): json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            config.update({item_key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            history.append({item_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "artifact":
            artifacts.append(record.artifact)
    assert run.project == "detector" and run.display_name == "run"
    assert config["epochs"] == 2 and config["data.num_train"] == 8 and config["choice.loss_cls"] == "bce"
    epochs = [h for h in history if "loss" in h]
    assert [h["_step"] for h in epochs] == [1, 2]
    for name in ("loss", "loss_box", "AP"):
        assert [h[name] for h in epochs] == pytest.approx(column(rows, name), rel=1e-5, abs=1e-9), name
    assert [h.get("val/pr_curves/_type") for h in epochs] == ["image-file"] * 2  # validation figures, as images
    assert len(list(folder.glob("files/media/images/val/pr_curves_*.png"))) == 2
    (artifact,) = artifacts
    assert artifact.type == "model"
    files = {c.path for c in artifact.manifest.contents}
    assert {"checkpoints/best.pt", "results.csv", "results.png", "summary.json"} <= files


@pytest.mark.e2e
def test_tensorboard_and_the_run_folder_files_are_there_with_trackers(tracked_run):
    run_dir, rows, summary, _ = tracked_run
    assert [r["epoch"] for r in rows] == ["1", "2"] and all(not math.isnan(float(r["AP"])) for r in rows)
    assert json.loads((run_dir / "summary.json").read_text())["best_AP"] == summary["best_AP"]
    assert (run_dir / "results.png").is_file() and (run_dir / "train.log").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    assert [e.step for e in events.Images("results")] == [2]
    assert [e.value for e in events.Scalars("epoch/loss")] == pytest.approx(column(rows, "loss"), rel=1e-5)
