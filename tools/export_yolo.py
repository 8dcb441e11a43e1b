"""Write a data set in ultralytics' YOLO layout (images linked, one label file each, data.yaml).

    python tools/export_yolo.py OUT                                  # the shapes set
    python tools/export_yolo.py OUT --train 500 data.num_train=2000  # its first 500 train images
    python tools/export_yolo.py OUT data=coco data.root=/data/coco   # any data config

Then ``tools/compare.py OUT/data.yaml`` trains ours and YOLOv8n on the same pictures.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from detector.data.yolo_export import export_yolo

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=None, help="only the first N training images")
    parser.add_argument("overrides", nargs="*", help="data=<option> and data.<key>=<value>, as tools/train.py")
    args = parser.parse_intermixed_args(argv)
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="train", overrides=args.overrides)
    yaml = export_yolo(instantiate(cfg.data), args.out, limit_train=args.train)
    print(f"wrote {yaml}")
    return yaml


if __name__ == "__main__":
    main()
