"""Benchmarks: speed and memory figures, one sub-benchmark per part of the framework.

    python tools/bench.py                    # all of them
    python tools/bench.py losses assigner    # some
    python tools/bench.py model --quick      # fewer repeats / smaller sizes, for a smoke check
    python tools/bench.py model train --models yolov8n,yolo11n   # the benchmarks that take models, for these
    python tools/bench.py export --ckpt best.pt --data data.yaml # the formats table, with AP on that val split

Each sub-benchmark lives in ``benchmarks/<name>.py`` of the checkout and returns a list of rows
(dicts); this entry point prints them as a table and writes ``<out>/<name>.json`` with the
machine it ran on.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
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
    parser.add_argument("--models", type=model_list, default=None, metavar="NAMES",
                        help=f"comma-separated model names for {', '.join(TAKE_MODELS)} (default: each one's own)")
    export = parser.add_argument_group("export (the formats table)")
    export.add_argument("--ckpt", default=None, help="checkpoint to export (default: an untrained n, no AP)")
    export.add_argument("--data", default=None, metavar="DATA_YAML",
                        help="ultralytics data.yaml: AP on its val split, INT8 calibrated on its train split "
                             "(default: the checkpoint's own data set)")
    export.add_argument("--imgsz", type=int, default=None, help="export, latency and AP size (default: 640)")
    export.add_argument("--calib-images", type=float, default=300, help="INT8 calibration images (default: 300)")
    return parser


EXPORT_OPTIONS = ("ckpt", "data", "imgsz", "calib_images")  # passed to the run() that takes them (export)


TAKE_MODELS = ("model", "train")  # the sub-benchmarks whose run() takes models=


def model_list(text: str) -> list[str]:
    """"yolov8n,yolo11n" -> the names, each checked by the model registry."""
    from detector.models.registry import resolve

    names = [name.strip() for name in text.split(",") if name.strip()]
    try:
        for name in names:
            resolve(name)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if not names:
        raise argparse.ArgumentTypeError("no model names given")
    return names


def main(argv: list[str] | None = None) -> int:
    return run(parser().parse_args(argv))


def check(args: argparse.Namespace) -> None:
    """Refuse ``--models`` (``--ckpt``, ``--data``, ``--imgsz``) when no chosen sub-benchmark takes
    models (is export): it would change nothing; and ``--data`` without ``--ckpt``."""
    if args.models and not set(args.names or BENCHMARKS) & set(TAKE_MODELS):
        raise SystemExit(f"error: detector bench: --models applies to {' and '.join(TAKE_MODELS)} only")
    given = [key for key in ("ckpt", "data", "imgsz") if getattr(args, key, None) is not None]
    if given and "export" not in (args.names or BENCHMARKS):
        raise SystemExit(f"error: detector bench: --{given[0]} applies to export only")
    if getattr(args, "data", None) and not getattr(args, "ckpt", None):
        raise SystemExit("error: detector bench export: --data scores a checkpoint: give --ckpt too")


def run(args: argparse.Namespace) -> int:
    """The sub-benchmarks of ``args.names`` (all when empty), each printed and written as JSON."""
    check(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    print(f"machine: {info}")
    for name in args.names or BENCHMARKS:
        module = importlib.import_module(f"benchmarks.{name}")
        options = {"quick": args.quick}
        if getattr(args, "models", None) and "models" in inspect.signature(module.run).parameters:
            options["models"] = args.models
        options.update({key: getattr(args, key) for key in EXPORT_OPTIONS
                        if getattr(args, key, None) is not None and key in inspect.signature(module.run).parameters})
        rows = module.run(**options)
        print_table(name, rows)
        (out / f"{name}.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=2))
    return 0
