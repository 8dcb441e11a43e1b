"""Run logging: TensorBoard scalars and figures, results.csv (a row per epoch), summary.json.

Only rank 0 creates a ``RunLogger``; other ranks get a ``NullLogger`` with the same methods.
"""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

log = logging.getLogger("detector")


class RunLogger:
    def __init__(self, run_dir: str | Path):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        self.csv_path = self.run_dir / "results.csv"
        self._columns: list[str] | None = None

    def scalars(self, values: dict[str, float], step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, float(value), step)

    def figure(self, name: str, figure, step: int) -> None:
        self.writer.add_figure(name, figure, step)

    def epoch_row(self, row: dict) -> None:
        """Append one row to results.csv; columns are fixed by the first row."""
        if self._columns is None:
            self._columns = list(row)
            if self.csv_path.exists():  # resumed run: keep the rows already there
                with self.csv_path.open() as handle:
                    header = next(csv.reader(handle), None)
                self._columns = header or self._columns
            else:
                with self.csv_path.open("w", newline="") as handle:
                    csv.writer(handle).writerow(self._columns)
        with self.csv_path.open("a", newline="") as handle:
            csv.writer(handle).writerow([_fmt(row.get(col, "")) for col in self._columns])

    def hparams(self, hparams: dict, metrics: dict) -> None:
        clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()}
        self.writer.add_hparams(clean, {f"hparam/{k}": float(v) for k, v in metrics.items()}, run_name="hparams")

    def summary(self, summary: dict) -> None:
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))

    def close(self) -> None:
        self.writer.close()


class NullLogger:
    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def _fmt(value):
    return f"{value:.6g}" if isinstance(value, float) else value
