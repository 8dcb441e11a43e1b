"""Collect a Hydra sweep into one table: a row per arm, seeds averaged (mean +- std).

A sweep folder (``runs/multirun/<date>``) holds one sub-folder per run, each with
``.hydra/overrides.yaml`` and ``summary.json``. A run is described by its config-group choices
(``.hydra/hydra.yaml``: ``loss_cls=qfl``, ``dfl=on``, ... whether chosen on the command line or by
default) plus its other overrides; the keys whose values differ between runs label the rows.
``seed`` is pooled, so an arm run with several seeds gives one row with its spread, and several
one-factor sweeps collected under one folder share their baseline runs.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import yaml

METRICS = ("AP", "AP50", "APs", "APm", "APl", "spearman", "pearson")
POOLED_KEYS = ("seed",)
IGNORED_KEYS = ("out_dir", "device", "workers", "progress", "hydra.run.dir", "hydra.sweep.dir")


@dataclass
class Run:
    folder: Path
    overrides: dict[str, str]
    final: dict[str, float]
    train_seconds: float


def load_runs(sweep_dir: str | Path) -> list[Run]:
    runs = []
    for summary_path in sorted(Path(sweep_dir).glob("**/summary.json")):
        folder = summary_path.parent
        overrides_path = folder / ".hydra" / "overrides.yaml"
        if not overrides_path.is_file():
            continue
        overrides = group_choices(folder / ".hydra" / "hydra.yaml")
        for item in yaml.safe_load(overrides_path.read_text()) or []:
            key, _, value = str(item).partition("=")
            if key.lstrip("+~") not in IGNORED_KEYS:
                overrides[key.lstrip("+~")] = value
        summary = json.loads(summary_path.read_text())
        runs.append(Run(folder, overrides, summary.get("final", {}), float(summary.get("train_seconds", 0.0))))
    if not runs:
        raise FileNotFoundError(f"no finished runs (summary.json + .hydra/overrides.yaml) under {sweep_dir}")
    return runs


def group_choices(hydra_yaml: Path) -> dict[str, str]:
    """The run's config-group choices (``{"loss_cls": "qfl", ...}``), Hydra's own groups left out."""
    if not hydra_yaml.is_file():
        return {}
    choices = (yaml.safe_load(hydra_yaml.read_text()) or {}).get("hydra", {}).get("runtime", {}).get("choices", {})
    return {k: str(v) for k, v in choices.items() if not k.startswith("hydra/")}


def arm_label(run: Run, varying: list[str]) -> str:
    return " ".join(f"{k}={run.overrides.get(k, '-')}" for k in varying) or "(single arm)"


def summarise(runs: list[Run]) -> list[dict]:
    """One dict per arm: label, seeds, and mean/std of every metric and of the training time."""
    keys = sorted({k for run in runs for k in run.overrides})
    varying = [k for k in keys if k not in POOLED_KEYS and len({r.overrides.get(k) for r in runs}) > 1]
    arms: dict[str, list[Run]] = {}
    for run in runs:
        arms.setdefault(arm_label(run, varying), []).append(run)
    rows = []
    for label, members in arms.items():
        row = {"arm": label, "runs": len(members)}
        for metric in METRICS:
            values = [float(r.final[metric]) for r in members if metric in r.final]
            row[metric] = statistics.fmean(values) if values else float("nan")
            row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        row["minutes"] = statistics.fmean(r.train_seconds for r in members) / 60
        rows.append(row)
    return sorted(rows, key=lambda r: -r["AP"] if r["AP"] == r["AP"] else 0)


def markdown_table(rows: list[dict]) -> str:
    head = "| arm | runs | " + " | ".join(METRICS) + " | minutes |"
    lines = [head, "|" + "---|" * (len(METRICS) + 3)]
    for row in rows:
        cells = [f"{row[m]:.3f} ± {row[m + '_std']:.3f}" if row["runs"] > 1 else f"{row[m]:.3f}" for m in METRICS]
        lines.append(f"| {row['arm']} | {row['runs']} | " + " | ".join(cells) + f" | {row['minutes']:.1f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows)), 4))
    x = range(len(rows))
    for offset, metric in ((-0.2, "AP"), (0.2, "AP50")):
        ax.bar([i + offset for i in x], [r[metric] for r in rows], width=0.4, label=metric,
               yerr=[r[f"{metric}_std"] for r in rows], capsize=3)
    ax.set_xticks(list(x), [r["arm"].replace(" ", "\n") for r in rows], fontsize=8)
    ax.set_ylabel("COCO metric on val")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
