"""Validation with square and with rectangular batches (``eval.rect``): time and AP of each.

    python -m benchmarks.rect_val CKPT                        # the checkpoint's own data set
    python -m benchmarks.rect_val CKPT --coco128 --imgsz 640  # COCO128 (train2017 as val)

The two runs are interleaved over ``--rounds`` rounds; the time is the median, the model fused,
one process, no DataLoader workers (so the loading cost is in the figure).
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

from hydra.utils import instantiate
from omegaconf import OmegaConf


def main(argv=None) -> list[dict]:
    from detector.engine.build import build_val_loader
    from detector.engine.checkpoint import load_checkpoint
    from detector.eval.evaluator import evaluate
    from tests.reference.coco128 import coco128_root

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt")
    parser.add_argument("--coco128", action="store_true")
    parser.add_argument("--imgsz", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    model, train_cfg = load_checkpoint(args.ckpt)
    imgsz = args.imgsz or train_cfg.get("imgsz", 640)
    if args.coco128:
        from detector.data.yolo import yolo_splits

        root = coco128_root()
        splits = yolo_splits(data_yaml=str(root / "coco128.yaml"))  # its val is train2017
    else:
        splits = instantiate(OmegaConf.create(train_cfg["data"]))
    fused = copy.deepcopy(model).for_inference()
    cfg = OmegaConf.create({"imgsz": imgsz, "val_batch_size": 16, "workers": 0})
    times: dict[bool, list[float]] = {False: [], True: []}
    results = {}
    for _ in range(args.rounds):
        for rect in (False, True):
            loader = build_val_loader(cfg, splits.val, rect=rect)
            start = time.perf_counter()
            results[rect] = evaluate(fused, loader, splits.val_ann_file, list(splits.val.category_ids),
                                     progress=False).metrics
            times[rect].append(time.perf_counter() - start)
            if rect:
                pixels = sum(int(h) * int(w) * min(16, len(loader.dataset) - 16 * b)
                             for b, (h, w) in enumerate(loader.dataset.shapes)) / len(loader.dataset)
    rows = [{"val": "rect" if rect else "square", "images": len(splits.val), "imgsz": imgsz,
             "seconds": round(statistics.median(times[rect]), 2),
             "images_per_s": round(len(splits.val) / statistics.median(times[rect]), 1),
             "pixels_per_image": round(pixels if rect else imgsz * imgsz),
             "AP": round(results[rect]["AP"], 4), "AP50": round(results[rect]["AP50"], 4)} for rect in (False, True)]
    print(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
