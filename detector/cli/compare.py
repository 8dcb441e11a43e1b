"""Ours against ultralytics' YOLOv8 or YOLO11 on your data, same budget, one evaluator.

    PYTHONPATH=/path/to/ultralytics detector compare data.yaml --epochs 60 --imgsz 320 --batch 16
    PYTHONPATH=/path/to/ultralytics detector compare data.yaml --epochs 60 --model yolo11n
    PYTHONPATH=/path/to/ultralytics detector compare data.yaml --epochs 10 --pretrained yolov8n.pt

Trains ours and ultralytics' model (from <name>.yaml, no weights: yolov8n unless --model; or both
from the same ultralytics checkpoint with --pretrained, the way most users train) one after the
other on the same ultralytics data.yaml with the same epochs, imgsz, batch, workers and seed,
converts ultralytics' best.pt with ``detector convert``, evaluates both best.pt with ``detector val``
and prints one table: AP, AP50, AP75, score-IoU Spearman, wall time, training images/s.
ultralytics (AGPL) is not a dependency: it must be importable for this tool only. Run folders go to
--out.
"""
import argparse
import sys
from datetime import datetime
from pathlib import Path

from detector.compare import (Budget, DataYamlError, PreflightError, format_table, parse_key_values, run_compare,
                              ultralytics_available)
from detector.engine.checkpoint import CheckpointError


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detector compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_yaml", type=Path, help="an ultralytics data.yaml (path, train, val, names)")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--model", default="n", help="n s m l x (YOLOv8) or a model name: yolov8s, yolo11n, ... "
                        "(ours model=<name>, ultralytics <name>.yaml)")
    parser.add_argument("--pretrained", type=Path, default=None, metavar="PATH",
                        help="an ultralytics YOLOv8 or YOLO11 detection .pt both start from (ours through the "
                             "safe importer); its scale is used")
    parser.add_argument("--ours", nargs="*", default=[], metavar="KEY=VALUE", help="extra detector train overrides")
    parser.add_argument("--ultralytics", nargs="*", default=[], metavar="KEY=VALUE", help="extra YOLO.train arguments")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: runs/compare/<date>)")
    return parser


def run(args: argparse.Namespace) -> int:
    if not ultralytics_available():
        print("error: ultralytics is not importable; install it (or put it on PYTHONPATH) to compare with YOLOv8",
              file=sys.stderr)
        return 2
    try:
        scale = checkpoint_scale(args.pretrained, args.model) if args.pretrained else args.model
        budget = Budget(epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, workers=args.workers,
                        seed=args.seed, device=args.device, scale=scale,
                        pretrained=str(args.pretrained) if args.pretrained else None)
        extra = parse_key_values(args.ultralytics)
    except (ValueError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = args.out or Path("runs") / "compare" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    try:
        results = run_compare(args.data_yaml, budget, out, ours_extra=args.ours, ultralytics_extra=extra)
    except (DataYamlError, PreflightError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    table = format_table(results)
    (out / "compare.md").write_text(table + "\n")
    print(table)
    print(f"\nwrote {out / 'compare.md'} and compare.json; run folders under {out}")
    return 0 if all(r.status == "ok" for r in results) else 1


def checkpoint_scale(path: Path, given: str) -> str:
    """The model name (yolov8n, yolo11s, ...) of an ultralytics checkpoint, read by the safe
    importer (nothing unpickled); a different ``--model`` is refused."""
    from detector.interop import load_ultralytics
    from detector.models.registry import get_architecture, resolve

    if not path.is_file():
        raise ValueError(f"--pretrained {path}: no such file")
    _, report = load_ultralytics(path)
    architecture = get_architecture(report["model_args"].get("arch", "yolov8"))
    name = architecture.model_name(report["model_args"]["scale"])
    if given != "n" and resolve(given)[0].model_name(resolve(given)[1]) != name:  # n is the default: "not given"
        raise ValueError(f"--model {given} but {path} is a {name} checkpoint; drop --model")
    return name

