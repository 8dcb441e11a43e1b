"""Printing and writing evaluation results."""
from __future__ import annotations

import json
import math
from pathlib import Path

from detector.eval.diagnostics import MATCH_IOU
from detector.eval.plots import figure_pr_curves, figure_score_vs_iou, save

DESCRIPTIONS = {
    "AP": "AP @[IoU=0.50:0.95 | area=all | maxDets=100]", "AP50": "AP @[IoU=0.50 | area=all | maxDets=100]",
    "AP75": "AP @[IoU=0.75 | area=all | maxDets=100]", "APs": "AP @[IoU=0.50:0.95 | area=small | maxDets=100]",
    "APm": "AP @[IoU=0.50:0.95 | area=medium | maxDets=100]", "APl": "AP @[IoU=0.50:0.95 | area=large | maxDets=100]",
    "AR1": "AR @[IoU=0.50:0.95 | area=all | maxDets=1]", "AR10": "AR @[IoU=0.50:0.95 | area=all | maxDets=10]",
    "AR100": "AR @[IoU=0.50:0.95 | area=all | maxDets=100]", "ARs": "AR @[IoU=0.50:0.95 | area=small | maxDets=100]",
    "ARm": "AR @[IoU=0.50:0.95 | area=medium | maxDets=100]", "ARl": "AR @[IoU=0.50:0.95 | area=large | maxDets=100]",
    "spearman": "score-IoU Spearman correlation", "pearson": "score-IoU Pearson correlation",
    "ECE": "expected calibration error, score vs IoU",
}


def format_metrics_table(metrics: dict) -> str:
    """One line per metric; a NaN (the val set has no labelled box) reads "undefined"."""
    return "\n".join(f"{name:>8}  {DESCRIPTIONS.get(name, ''):<48} "
                     + ("undefined" if math.isnan(metrics[name]) else f"{metrics[name]:.4f}")
                     for name in DESCRIPTIONS if name in metrics)


def json_number(value):
    """A metric for metrics.json: NaN (undefined) becomes null, which JSON has."""
    return None if isinstance(value, float) and math.isnan(value) else value


def format_per_class_table(per_class: dict) -> str:
    width = max([len(str(n)) for n in per_class] + [5])
    lines = [f"{'class':<{width}}  AP@[.5:.95]"]
    lines += [f"{str(name):<{width}}  {ap:.4f}" if ap >= 0 else f"{str(name):<{width}}  (no GT)"
              for name, ap in per_class.items()]
    return "\n".join(lines)


def format_class_table(diagnostics) -> str:
    """The diagnostics' per-class table: P, R and F1 at the F1-optimal confidence, AP50, AP, and
    each class's own F1-optimal confidence; "-" where undefined (no GT, or F1 0 throughout)."""
    rows = diagnostics.table
    width = max([len(str(row["class"])) for row in rows] + [5])
    lines = [f"P, R and F1 at the F1-optimal confidence {_cell(diagnostics.conf)} (score > it, IoU {MATCH_IOU:g}); "
             "conf: each class's own F1-optimal confidence",
             f"{'class':<{width}}  {'images':>6}  {'instances':>9}  {'P':>5}  {'R':>5}  {'F1':>5}  {'AP50':>5}  "
             f"{'AP':>5}  {'conf':>5}"]
    for row in rows:
        lines.append(f"{str(row['class']):<{width}}  {row['images']:>6}  {row['instances']:>9}  "
                     + "  ".join(f"{_cell(row[k]):>5}" for k in ("P", "R", "F1", "AP50", "AP", "conf")))
    return "\n".join(lines)


def _cell(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def write_eval_outputs(out_dir, result, names: list[str]) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "detections.json").write_text(json.dumps(result.detections))
    report = {"metrics": {k: json_number(v) for k, v in result.metrics.items()}, "per_class": result.per_class}
    if getattr(result, "undefined", None):
        report["undefined"] = result.undefined
    if getattr(result, "left_out", None):
        report["left_out"] = list(result.left_out)  # val images that could not be decoded: not in the metric
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    if result.precision is not None:
        save(figure_pr_curves(result.precision, names), out / "pr_curves.png")
    save(figure_score_vs_iou(*result.score_iou), out / "score_vs_iou.png")
