"""Collect a Hydra sweep into one table: a row per arm, seeds pooled (mean, std, 95% t-interval),
and each arm's difference to a baseline arm with Welch's t-test.

A sweep folder (``runs/multirun/<date>``) holds one sub-folder per run, each with
``.hydra/overrides.yaml`` and ``summary.json``. A run is described by its config-group choices
(``.hydra/hydra.yaml``: ``loss_cls=qfl``, ``dfl=on``, ... whether chosen on the command line or by
default) plus its other overrides; the keys whose values differ between runs label the rows.
``seed`` is pooled, so an arm run with several seeds gives one row with its spread, and several
one-factor sweeps collected under one folder share their baseline runs.

The baseline is by default the arm whose labelling keys all hold the config's default values
(``default_choices``); a difference is marked resolved when Welch's two-sided p < ``ALPHA``.
Welch rather than Student: arms differ in spread (a collapsed seed widens one arm only).
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import yaml
from scipy import stats

METRICS = ("AP", "ECE", "AP50", "APs", "APm", "APl", "spearman", "pearson")  # ECE: runs from before it have none
POOLED_KEYS = ("seed",)
IGNORED_KEYS = ("out_dir", "device", "workers", "progress", "hydra.run.dir", "hydra.sweep.dir")
ALPHA = 0.05  # two-sided significance level of the "resolved" mark; the interval is 1 - ALPHA


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
        row = {"arm": label, "runs": len(members), "keys": {k: members[0].overrides.get(k, "-") for k in varying}}
        for metric in METRICS:
            values = [float(r.final[metric]) for r in members if metric in r.final]
            row[f"{metric}_values"] = values
            row[metric] = statistics.fmean(values) if values else float("nan")
            row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            row[f"{metric}_ci"] = t_interval(values)
        row["minutes"] = statistics.fmean(r.train_seconds for r in members) / 60
        rows.append(row)
    return sorted(rows, key=lambda r: -r["AP"] if r["AP"] == r["AP"] else 0)


def t_interval(values: list[float], confidence: float = 1 - ALPHA) -> tuple[float, float]:
    """Two-sided Student-t interval for the mean: mean -+ t_{(1+c)/2, n-1} * s / sqrt(n).
    NaN bounds with fewer than 2 values (no spread to estimate)."""
    if len(values) < 2:
        return (math.nan, math.nan)
    mean, sem = statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))
    half = float(stats.t.ppf((1 + confidence) / 2, len(values) - 1)) * sem
    return (mean - half, mean + half)


def welch_test(values: list[float], baseline: list[float]) -> tuple[float, float]:
    """(mean(values) - mean(baseline), two-sided Welch p-value). p is NaN when either side has
    fewer than 2 values or both have zero spread: nothing can be resolved then."""
    diff = statistics.fmean(values) - statistics.fmean(baseline) if values and baseline else math.nan
    if len(values) < 2 or len(baseline) < 2:
        return diff, math.nan
    if statistics.stdev(values) == 0 and statistics.stdev(baseline) == 0:
        return diff, math.nan
    return diff, float(stats.ttest_ind(values, baseline, equal_var=False).pvalue)


def default_choices(config_dir: str | Path, overrides: list[str], keys: list[str]) -> dict[str, str]:
    """The value of each of ``keys`` in the config composed from ``config_dir``/train.yaml with
    ``overrides`` (e.g. ``["experiment=shapes_ablation"]``): group keys as the chosen option,
    other keys as their value. Keys the config lacks are left out."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    choices = dict(cfg.hydra.runtime.choices)
    found = {}
    for key in keys:
        if key in choices:
            found[key] = str(choices[key])
        else:
            value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
            if value is not None:
                found[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return found


def common_overrides(runs: list[Run], rows: list[dict]) -> list[str]:
    """The ``key=value`` overrides every run shares (the budget, e.g. experiment=...), minus the
    keys that label the arms and the pooled ones: what to compose the defaults with."""
    varying = set(rows[0]["keys"]) if rows else set()
    shared = None
    for run in runs:
        items = {f"{k}={v}" for k, v in run.overrides.items()
                 if k not in varying and k not in POOLED_KEYS and v not in ("None", "null")}
        shared = items if shared is None else shared & items
    return sorted(shared or [])


def find_baseline(rows: list[dict], spec: dict[str, str]) -> dict | None:
    """The one arm whose keys include every ``key: value`` of ``spec`` (an arm is labelled by the
    keys that vary, so a spec may be partial: ``{"loss_cls": "qfl"}``; a key an arm's runs never
    set, shown as ``-``, holds the config default and matches). None when no arm matches;
    ValueError when several do, naming them."""
    matches = [r for r in rows if all(r["keys"].get(k) in (v, "-") for k, v in spec.items() if k in r["keys"])
               and any(k in r["keys"] for k in spec)]
    if len(matches) > 1:
        raise ValueError(f"baseline {spec} matches {len(matches)} arms: " + "; ".join(r["arm"] for r in matches))
    return matches[0] if matches else None


def parse_spec(text: str) -> dict[str, str]:
    """``"loss_cls=qfl dfl=on"`` -> ``{"loss_cls": "qfl", "dfl": "on"}``."""
    spec = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"baseline: expected key=value items, got {item!r}")
        spec[key] = value
    return spec


def compare_to_baseline(rows: list[dict], baseline: dict, metric: str = "AP", alpha: float = ALPHA) -> None:
    """Adds ``diff``, ``p`` and ``resolved`` (p < alpha) on ``metric`` to every row, in place;
    the baseline row gets diff 0, p NaN and ``resolved = None`` (it is the reference)."""
    for row in rows:
        row["baseline"] = row is baseline
        if row is baseline:
            row.update(diff=0.0, p=math.nan, resolved=None)
            continue
        diff, p = welch_test(row[f"{metric}_values"], baseline[f"{metric}_values"])
        row.update(diff=diff, p=p, resolved=bool(p < alpha) if p == p else False)


def _fmt(value: float, spec: str = ".3f") -> str:
    return "n/a" if value != value else format(value, spec)


def markdown_table(rows: list[dict], metric: str = "AP") -> str:
    """Per arm: runs, ``metric`` mean ± std, its 95% interval and (after ``compare_to_baseline``)
    the difference to the baseline, Welch's p and the resolved mark; then the other metrics, ECE
    (score calibration, lower is better) first; "-" for a metric the arm's summaries lack."""
    compared = any("p" in row for row in rows)
    others = [m for m in METRICS if m != metric]
    head = ["arm", "runs", metric, f"{metric} 95% CI"]
    if compared:
        head += [f"Δ{metric} vs baseline", "p (Welch)", "resolved"]
    head += [*others, "minutes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        low, high = row[f"{metric}_ci"]
        cells = [row["arm"] + (" (baseline)" if row.get("baseline") else ""), str(row["runs"]),
                 _mean_std(row, metric), "n/a" if low != low else f"{low:.3f} to {high:.3f}"]
        if compared:
            if row.get("baseline"):
                cells += ["-", "-", "-"]
            else:
                cells += [_fmt(row["diff"], "+.3f"), _fmt(row["p"], ".3g"), "yes" if row["resolved"] else "no"]
        cells += [_mean_std(row, m) for m in others] + [f"{row['minutes']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean_std(row: dict, metric: str) -> str:
    """Mean ± std over the arm's runs that have ``metric``; "-" when none has it."""
    values = row[f"{metric}_values"]
    if not values:
        return "-"
    return f"{row[metric]:.3f} ± {row[metric + '_std']:.3f}" if len(values) > 1 else f"{row[metric]:.3f}"


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
