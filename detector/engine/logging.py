"""What a run leaves to read: results.csv (a row per epoch), results.png (its columns plotted, drawn when the
run ends), summary.json, and the trackers of the ``logger=`` group (detector.engine.trackers: TensorBoard,
MLflow, W&B).

``RunLogger`` fans out to the chosen trackers; results.csv is always written (a ``CsvTracker`` is added
when ``logger=`` does not name it), so are results.png and summary.json (train.log is
detector.engine.compose's). results.png is drawn at the end, as YOLOv8 does, because drawing it costs
about 2 s of CPU (19 small plots), more than an epoch of a small run; TensorBoard has the same
curves live (``epoch/*``). A tracker that fails in the middle of a run (a tracking server gone) is
warned about and the run goes on; one that cannot start stops the run before it trains.
Only rank 0 creates a ``RunLogger``; other ranks get a ``NullLogger`` with the same methods.
"""
from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

from detector.engine.trackers import CsvTracker, Metrics, TensorBoardTracker, Tracker, TrackerUnavailableError

log = logging.getLogger("detector")

# the run's files that trackers keep: best.pt, and the results and diagnostics (pictures, csv, json) at the top of the
# run folder or one folder down; not the trackers' own folders, nor the bulk of detections.json
ARTIFACT_PATTERNS = ("*.png", "*.jpg", "*.csv", "*.json")
ARTIFACT_SKIP_FOLDERS = {"checkpoints", "tensorboard", "wandb", "mlartifacts", "mlruns", ".hydra"}
ARTIFACT_SKIP_FILES = {"detections.json"}
RESULTS_COLUMNS_PER_ROW = 5


class RunLogger:
    """``trackers``: the ``logger`` node of the config ({name: option node with its ``_target_``}), built here
    with ``run_dir``; None or empty: results.csv and the other files of the run folder only."""

    def __init__(self, run_dir: str | Path, trackers: dict | None = None):
        from hydra.errors import InstantiationException
        from hydra.utils import instantiate

        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.names: list[str] = []
        self.trackers: list[Tracker] = []
        self._last_epoch, self._drawn_epoch = 0, 0  # of the rows logged, of results.png
        try:
            for name, node in (trackers or {}).items():
                try:
                    self.trackers.append(instantiate(node, run_dir=str(self.run_dir)))
                except InstantiationException as error:  # Hydra's wrapper would hide the one-line message
                    if isinstance(error.__cause__, TrackerUnavailableError):
                        raise error.__cause__ from None
                    raise
                self.names.append(str(name))
        except BaseException:
            self.close("FAILED")  # those already started
            raise
        if not any(isinstance(t, CsvTracker) for t in self.trackers):
            self.trackers.insert(0, CsvTracker(run_dir=self.run_dir))
            self.names.insert(0, "csv")
        self.csv_path = self.run_dir / "results.csv"
        self.tensorboard = next((t for t in self.trackers if isinstance(t, TensorBoardTracker)), None)
        log.info("logging to: %s", ", ".join(self.names))

    def _each(self, method: str, *args) -> None:
        for name, tracker in zip(self.names, self.trackers):
            try:
                getattr(tracker, method)(*args)
            except Exception as error:  # a tracker is a convenience: never lose a run over one
                log.warning("logger=%s: %s failed (%s: %s); the run goes on", name, method, type(error).__name__,
                            str(error).splitlines()[0][:200] if str(error) else "")

    def params(self, params: dict[str, object]) -> None:
        self._each("log_params", params)

    def scalars(self, values: dict[str, float], step: int) -> None:
        """The live stream (per-iteration losses, lr, speed; validation scalars): TensorBoard only."""
        if self.tensorboard is not None:
            self.tensorboard.log_scalars(values, step)

    def figure(self, name: str, figure, step: int) -> None:
        self._each("log_figure", name, figure, step)

    def image_files(self, files: dict[str, Path], step: int) -> None:
        """Pictures the run folder holds already, as TensorBoard images (the other trackers take
        them as artifacts at the end)."""
        if self.tensorboard is not None:
            for name, path in files.items():
                self.tensorboard.log_image_file(name, path, step)

    def epoch_row(self, row: dict) -> None:
        """One epoch's row (``epoch`` 1-based, then numbers; None where not measured): results.csv and every
        tracker's metrics."""
        self._last_epoch = int(row["epoch"])
        metrics: Metrics = {k: v for k, v in row.items() if k != "epoch"}
        self._each("log_metrics", metrics, self._last_epoch)

    def draw_results(self) -> None:
        """results.png from results.csv, also to TensorBoard as the image ``results`` (at the last epoch)."""
        if self._drawn_epoch == self._last_epoch or not self.csv_path.is_file():
            return
        try:
            path = self.run_dir / "results.png"
            plot_results(self.csv_path).savefig(path, dpi=100)
            if self.tensorboard is not None:  # the file written, not a second drawing
                self.tensorboard.log_image_file("results", path, self._last_epoch)
            self._drawn_epoch = self._last_epoch
        except Exception as error:  # a picture is a convenience
            log.warning("results.png not drawn (%s: %s)", type(error).__name__, error)

    def hparams(self, hparams: dict, metrics: dict) -> None:
        if self.tensorboard is not None:
            self.tensorboard.log_hparams(hparams, metrics)

    def summary(self, summary: dict) -> None:
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))

    def artifacts(self) -> list[Path]:
        """The run folder's files the trackers keep (best.pt, results.csv, pictures, json); returns them."""
        folders = [self.run_dir] + sorted(p for p in self.run_dir.iterdir() if p.is_dir() and
                                          p.name not in ARTIFACT_SKIP_FOLDERS)
        files = {p for folder in folders for pattern in ARTIFACT_PATTERNS for p in folder.glob(pattern)
                 if p.is_file() and p.name not in ARTIFACT_SKIP_FILES}
        best = self.run_dir / "checkpoints" / "best.pt"
        files = sorted(files | ({best} if best.is_file() else set()))
        self._each("log_artifacts", files)
        return files

    def close(self, status: str = "FINISHED") -> None:
        """results.png drawn if rows came since (an interrupted or failed run too), then every tracker closed."""
        if self.trackers:
            self.draw_results()
        self._each("close", status)
        self.trackers, self.names, self.tensorboard = [], [], None


class NullLogger:
    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def flat_params(config: dict, prefix: str = "") -> dict[str, object]:
    """A nested config as {"optim.lr": 0.002, ...}; lists stay whole (``data.names``: one value)."""
    flat: dict[str, object] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flat_params(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def read_results(path: str | Path) -> dict[str, list[float]]:
    """results.csv as {column: values per epoch} (NaN where a cell is blank); ``epoch`` included."""
    with Path(path).open() as handle:
        rows = list(csv.DictReader(handle))
    columns = list(rows[0]) if rows else []
    return {c: [_number(r.get(c)) for r in rows] for c in columns}


def _number(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def plot_results(path: str | Path):
    """YOLOv8's results.png from results.csv: one small plot per numeric column against the epoch (a
    matplotlib Figure of its own, outside pyplot: nothing to close)."""
    from matplotlib.figure import Figure

    table = read_results(path)
    epochs = table.pop("epoch", [])
    columns = [c for c, values in table.items() if any(not math.isnan(v) for v in values)]
    ncols = min(RESULTS_COLUMNS_PER_ROW, max(len(columns), 1))
    nrows = max(math.ceil(len(columns) / ncols), 1)
    figure = Figure(figsize=(3.0 * ncols, 2.2 * nrows))
    # fixed margins (in inches, as fractions of this size) instead of tight_layout, which measures every
    # tick label and is most of the drawing's time
    figure.subplots_adjust(left=0.35 / (3.0 * ncols), right=1 - 0.1 / (3.0 * ncols), bottom=0.45 / (2.2 * nrows),
                           top=1 - 0.3 / (2.2 * nrows), wspace=0.3, hspace=0.45)
    axes = figure.subplots(nrows, ncols, squeeze=False)
    for ax, column in zip(axes.flat, columns):
        points = [(e, v) for e, v in zip(epochs, table[column]) if not math.isnan(v)]
        ax.plot([e for e, _ in points], [v for _, v in points], marker=".", linewidth=1.5)
        ax.set_title(column, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(columns):]:
        ax.remove()
    figure.supxlabel("epoch", fontsize=9, y=0.1 / (2.2 * nrows))
    return figure
