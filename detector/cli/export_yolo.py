"""Write a data set in ultralytics' YOLO layout (images linked, one label file each, data.yaml).

    detector export-yolo OUT                                  # the shapes set
    detector export-yolo OUT --train 500 data.num_train=2000  # its first 500 train images
    detector export-yolo OUT data=coco data.root=/data/coco   # any data config

Then ``detector compare OUT/data.yaml`` trains ours and YOLOv8n on the same pictures.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from hydra.utils import instantiate

from detector.data.yolo_export import export_yolo
from detector.engine.compose import compose_task, config_dir
from detector.engine.overrides import check_overrides

INTERMIXED = True  # OUT, --train and the overrides in any order


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detector export-yolo", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=None, help="only the first N training images")
    parser.add_argument("overrides", nargs="*", help="data=<option> and data.<key>=<value>, as detector train")
    return parser


def check(args: argparse.Namespace) -> None:
    check_overrides("train", args.overrides, config_dir())


def run(args: argparse.Namespace) -> int:
    check(args)
    cfg = compose_task("train", args.overrides)
    yaml = export_yolo(instantiate(cfg.data), args.out, limit_train=args.train)
    print(f"wrote {yaml}")
    return 0
