"""Experiment trackers: one class per backend of the ``logger=`` config group (configs/logger/).

Each takes the run folder and its option file's keys, and implements the ``Tracker`` protocol:
the resolved config once as params, a row of results.csv per epoch as metrics (step = the
1-based epoch), figures, and at the end the files of the run folder (best.pt, pictures, json) as
artifacts. ``detector.engine.logging.RunLogger`` fans out to the chosen ones.

mlflow and wandb are optional extras; a tracker whose package is missing raises
``TrackerUnavailableError`` (one line, the extra to install) when it is built, which is before
any training.
"""
from __future__ import annotations

import csv
import hashlib
import importlib
import importlib.util
import os
import time
from pathlib import Path
from typing import Protocol

# a metric value of None: not measured at that step (validation skipped: a blank cell of results.csv)
Metrics = dict[str, "float | None"]


class TrackerUnavailableError(ImportError, ValueError):
    """A tracker that cannot start: its package is missing, or it refused to start (one line)."""


class Tracker(Protocol):
    def log_params(self, params: dict[str, object]) -> None: ...

    def log_metrics(self, metrics: Metrics, step: int) -> None: ...

    def log_figure(self, name: str, figure, step: int) -> None: ...

    def log_artifacts(self, files: list[Path]) -> None: ...  # files inside the run folder

    def close(self, status: str = "FINISHED") -> None: ...  # FINISHED | FAILED | KILLED (MLflow's words)


def require(module: str, option: str, extra: str | None = None):
    """``import module``, or a TrackerUnavailableError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise TrackerUnavailableError(f'logger={option} needs the {module} package: pip install '
                                      f'"detector[{extra or option}]"') from None


def numbers(metrics: Metrics) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if v is not None}


class CsvTracker:
    """results.csv: a row per epoch, columns fixed by the first row (a resumed run keeps the file's)."""

    def __init__(self, *, run_dir: str | Path):
        self.path = Path(run_dir) / "results.csv"
        self._columns: list[str] | None = None

    def log_params(self, params: dict[str, object]) -> None:  # the config is in .hydra/config.yaml
        pass

    def log_metrics(self, metrics: Metrics, step: int) -> None:
        row = {"epoch": step, **metrics}
        if self._columns is None:
            self._columns = list(row)
            if self.path.exists():  # resumed run: keep the rows already there
                with self.path.open() as handle:
                    self._columns = next(csv.reader(handle), None) or self._columns
            else:
                with self.path.open("w", newline="") as handle:
                    csv.writer(handle).writerow(self._columns)
        with self.path.open("a", newline="") as handle:
            csv.writer(handle).writerow([_cell(row.get(col)) for col in self._columns])

    def log_figure(self, name: str, figure, step: int) -> None:
        pass

    def log_artifacts(self, files: list[Path]) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


def _cell(value):
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else value


class TensorBoardTracker:
    """Event files in ``<run dir>/tensorboard``. Besides the protocol it takes the per-iteration stream
    (``log_scalars``: losses, lr, speed; validation scalars) and the hparams summary at the end."""

    def __init__(self, *, run_dir: str | Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def log_params(self, params: dict[str, object]) -> None:
        table = "\n".join(f"| {k} | {v} |" for k, v in params.items())
        self.writer.add_text("config", f"| key | value |\n|---|---|\n{table}", 0)

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, float(value), step)

    def log_metrics(self, metrics: Metrics, step: int) -> None:
        self.log_scalars({f"epoch/{k}": v for k, v in numbers(metrics).items()}, step)

    def log_figure(self, name: str, figure, step: int) -> None:
        self.writer.add_figure(name, figure, step, close=False)

    def log_image_file(self, name: str, path: Path, step: int) -> None:
        """A picture already written (PNG or JPEG), without drawing it again."""
        from torchvision.io import ImageReadMode, read_image

        self.writer.add_image(name, read_image(str(path), ImageReadMode.RGB), step)

    def log_hparams(self, hparams: dict, metrics: dict) -> None:
        clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()}
        self.writer.add_hparams(clean, {f"hparam/{k}": float(v) for k, v in metrics.items()}, run_name="hparams")

    def log_artifacts(self, files: list[Path]) -> None:  # they are next to the event files already
        pass

    def close(self, status: str = "FINISHED") -> None:
        self.writer.close()


class MlflowTracker:
    """An MLflow run in ``experiment``; a resumed run continues the MLflow run of its run folder (found by
    the tag ``detector.run_dir``). With no ``tracking_uri`` (and no $MLFLOW_TRACKING_URI) the store is
    local: ``sqlite:///<run dir>/mlflow.db``, artifacts in ``<run dir>/mlartifacts``
    (``mlflow ui --backend-store-uri sqlite:///<run dir>/mlflow.db`` shows it)."""

    BATCH = 100  # MLflow's limit of params per log_batch call

    def __init__(self, *, run_dir: str | Path, tracking_uri: str | None = None, experiment: str = "detector",
                 run_name: str | None = None):
        require("mlflow", "mlflow")
        run_dir = Path(run_dir).resolve()
        self.run_dir = run_dir
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        artifact_location = None
        if not uri:
            uri, artifact_location = f"sqlite:///{run_dir / 'mlflow.db'}", (run_dir / "mlartifacts").as_uri()
        if uri.startswith("sqlite:"):
            missing = [m for m in ("sqlalchemy", "alembic") if importlib.util.find_spec(m) is None]
            if missing:
                raise TrackerUnavailableError(
                    f"logger=mlflow's sqlite store ({uri}) needs {' and '.join(missing)}: pip install "
                    '"detector[mlflow]" (or set logger.mlflow.tracking_uri to a tracking server)')
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        try:
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else \
                self.client.create_experiment(experiment, artifact_location=artifact_location)
            self.run_id, self.resumed = self._run_of_folder(experiment_id, run_name or run_dir.name)
        except Exception as error:  # an unreachable server, a store it cannot open
            raise TrackerUnavailableError(f"logger=mlflow cannot start a run at {uri} "
                                          f"({type(error).__name__}: {_first_line(error)})") from None

    def _run_of_folder(self, experiment_id: str, run_name: str) -> tuple[str, bool]:
        folder = str(self.run_dir)
        if "'" not in folder:  # MLflow's filter syntax quotes with '
            runs = self.client.search_runs([experiment_id], f"tags.`detector.run_dir` = '{folder}'", max_results=1)
            if runs:
                self.client.update_run(runs[0].info.run_id, status="RUNNING")
                return runs[0].info.run_id, True
        run = self.client.create_run(experiment_id, run_name=run_name, tags={"detector.run_dir": folder})
        return run.info.run_id, False

    def log_params(self, params: dict[str, object]) -> None:
        from mlflow.entities import Param

        try:
            from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH as limit
        except ImportError:
            limit = 500
        known = self.client.get_run(self.run_id).data.params if self.resumed else {}
        # MLflow's params cannot change: a resumed run keeps those of its first start (its config says the rest)
        items = [Param(k, str(v)[:limit]) for k, v in params.items() if k not in known]
        for i in range(0, len(items), self.BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + self.BATCH])

    def log_metrics(self, metrics: Metrics, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in numbers(metrics).items()])

    def log_figure(self, name: str, figure, step: int) -> None:
        self.client.log_figure(self.run_id, figure, f"{name}_epoch{step:03d}.png")

    def log_artifacts(self, files: list[Path]) -> None:
        for path in files:
            folder = Path(path).resolve().parent.relative_to(self.run_dir).as_posix()
            self.client.log_artifact(self.run_id, str(path), artifact_path=None if folder == "." else folder)

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


class WandbTracker:
    """A W&B run in ``<run dir>/wandb``, offline unless ``mode`` says otherwise. Its id is derived from the
    run folder, so that a resumed run continues the same W&B run (``resume="allow"``)."""

    def __init__(self, *, run_dir: str | Path, project: str = "detector", name: str | None = None,
                 entity: str | None = None, mode: str = "offline"):
        wandb = require("wandb", "wandb")
        run_dir = Path(run_dir).resolve()
        self.run_dir, self._wandb = run_dir, wandb
        run_id = hashlib.sha1(str(run_dir).encode()).hexdigest()[:16]
        try:
            self.run = wandb.init(project=project, name=name or run_dir.name, entity=entity, mode=mode,
                                  dir=str(run_dir), id=run_id, resume="allow")
        except Exception as error:  # online without an API key, an unknown entity
            raise TrackerUnavailableError(f"logger=wandb cannot start a run in mode={mode} "
                                          f"({type(error).__name__}: {_first_line(error)}); "
                                          "logger.wandb.mode=offline needs no account") from None

    def log_params(self, params: dict[str, object]) -> None:
        self.run.config.update(params, allow_val_change=True)

    def log_metrics(self, metrics: Metrics, step: int) -> None:
        self.run.log(numbers(metrics), step=step)

    def log_figure(self, name: str, figure, step: int) -> None:
        self.run.log({name: self._wandb.Image(figure)}, step=step)

    def log_artifacts(self, files: list[Path]) -> None:
        artifact = self._wandb.Artifact(f"run-{self.run.id}", type="model",
                                        description="best.pt and the results of the run folder")
        for path in files:
            artifact.add_file(str(path), name=Path(path).resolve().relative_to(self.run_dir).as_posix())
        self.run.log_artifact(artifact)

    def close(self, status: str = "FINISHED") -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else ""
