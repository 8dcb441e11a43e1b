"""Convert an ultralytics YOLOv8 detection checkpoint to ours: detector convert yolov8s.pt yolov8s_det.pt

The input is read without ultralytics and without unpickling code (detector/interop); the output
loads with torch.load(weights_only=True) and is taken by ``detector val``, ``export``, ``predict``
and by ``pretrained=`` in ``detector train``. Prints what was mapped.
"""
import argparse
import sys
from pathlib import Path

from detector.engine.checkpoint import CheckpointError, save_checkpoint
from detector.interop import load_ultralytics


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detector convert", description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="ultralytics detection checkpoint (.pt)")
    parser.add_argument("output", type=Path, help="where to write our checkpoint (.pt)")
    parser.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.output.exists() and not args.force:
        sys.exit(f"error: {args.output} exists; pass --force to overwrite it")
    if args.output.resolve() == args.source.resolve():
        sys.exit("error: OUTPUT must differ from SOURCE")
    try:
        model, report = load_ultralytics(args.source)
    except CheckpointError as error:
        sys.exit(f"error: {error}")
    save_checkpoint({
        "model": model.state_dict(),
        "model_args": report["model_args"],
        "names": list(model.names),
        "category_ids": [],
        "config": {"imgsz": report["imgsz"], "model": dict(report["model_args"]),
                   "source": {"format": "ultralytics", "path": str(args.source), "version": report["version"],
                              "date": report["date"], "weights": report["weights"]}},
        "epoch": -1,
        "metrics": {},
    }, args.output)
    from detector.models import get_architecture

    args_ = report["model_args"]
    title = get_architecture(args_.get("arch", "yolov8")).title
    scale, classes = args_["scale"], args_["num_classes"]
    print(f"{args.source} (ultralytics {report['version']}, '{report['weights']}' weights) -> {args.output}: "
          f"{title}{scale}, {classes} classes, {report['mapped']} of {report['total']} tensors mapped"
          f" (not mapped: {', '.join(report['unmapped']) or 'none'}; the DFL ramp is built in)")
    return 0
