"""Collect a sweep into a markdown table and a chart, each arm against a baseline arm.

    detector train -m loss_cls=qfl,vfl,focal,bce seed=0,1,2
    detector ablate runs/multirun/<date> [--baseline "loss_cls=bce"] [--metric AP] [--out ablation.md]

Rows are the arms (the overrides that differ between runs, seeds pooled): mean ± std, a 95%
t-interval, the difference to the baseline with Welch's p-value and "resolved" when p < 0.05.
The baseline is by default the arm holding the config defaults (composed from configs/ with the
overrides every run shares). Writes ``ablation.md`` and ``ablation.png`` into the sweep folder.
"""
import argparse
import sys
from pathlib import Path

from detector.ablation import (METRICS, common_overrides, compare_to_baseline, default_choices, find_baseline,
                               load_runs, markdown_table, parse_spec, plot, summarise)
from detector.engine.compose import config_dir


def defaults(runs, rows) -> dict:
    try:
        return default_choices(config_dir(), common_overrides(runs, rows), list(rows[0]["keys"]))
    except Exception as error:  # noqa: BLE001 - Hydra's composition errors have no common base we can name
        print(f"note: could not compose the default config ({error})", file=sys.stderr)
        return {}


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detector ablate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun folder (searched recursively)")
    parser.add_argument("--out", type=Path, default=None, help="markdown file (default: <sweep_dir>/ablation.md)")
    parser.add_argument("--baseline", default=None, help='the reference arm, e.g. "loss_cls=bce" (default: config defaults)')
    parser.add_argument("--metric", default="AP", choices=METRICS, help="the metric tested (default: AP)")
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        runs = load_runs(args.sweep_dir)
        rows = summarise(runs)
        spec = parse_spec(args.baseline) if args.baseline else defaults(runs, rows)
        baseline = find_baseline(rows, spec) if rows[0]["keys"] and spec else None
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if baseline is None and args.baseline:
        print(f"error: --baseline {args.baseline!r} matches no arm; arms: " + "; ".join(r["arm"] for r in rows),
              file=sys.stderr)
        return 2
    if baseline is not None:
        compare_to_baseline(rows, baseline, metric=args.metric)
    else:
        print("note: no arm holds the config defaults; pass --baseline to compare arms", file=sys.stderr)
    table = markdown_table(rows, metric=args.metric)
    out = args.out or args.sweep_dir / "ablation.md"
    out.write_text(table + "\n")
    plot(rows, out.with_suffix(".png"))
    print(table)
    print(f"\nwrote {out} and {out.with_suffix('.png')}")
    return 0
