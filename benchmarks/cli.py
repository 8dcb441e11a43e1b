"""Benchmarks: speed and memory figures, one sub-benchmark per part of the framework.

    python tools/bench.py                    # all of them
    python tools/bench.py losses assigner    # some
    python tools/bench.py model --quick      # fewer repeats / smaller sizes, for a smoke check

Each sub-benchmark lives in ``benchmarks/<name>.py`` of the checkout and returns a list of rows
(dicts); this entry point prints them as a table and writes ``<out>/<name>.json`` with the
machine it ran on.
"""
from __future__ import annotations

import argparse
import importlib
import json
import platform
from pathlib import Path

import torch

BENCHMARKS = ("losses", "loss_scale", "model", "assigner", "data", "train", "eval", "export")


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def print_table(name: str, rows: list[dict]) -> None:
    if not rows:
        print(f"{name}: no rows")
        return
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_fmt(row.get(col, "")) for col in columns] for row in rows]
    widths = [max(len(col), *(len(r[i]) for r in cells)) for i, col in enumerate(columns)]
    print(f"\n## {name}")
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detector bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", choices=[[], *BENCHMARKS], help="sub-benchmarks (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats")
    parser.add_argument("--out", default="bench_results", help="folder for the JSON results")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """The sub-benchmarks of ``args.names`` (all when empty), each printed and written as JSON."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    print(f"machine: {info}")
    for name in args.names or BENCHMARKS:
        module = importlib.import_module(f"benchmarks.{name}")
        rows = module.run(quick=args.quick)
        print_table(name, rows)
        (out / f"{name}.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=2))
    return 0
