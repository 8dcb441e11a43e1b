"""onnxruntime CPU latency of our layout=ultralytics ONNX file against ultralytics' own ONNX export
of YOLOv8n (80 classes, random weights: no download; latency does not depend on the weights).

    PYTHONPATH=/path/to/ultralytics python benchmarks/ultralytics_layout.py [--imgsz 640] [--repeats 9]

Both files take images [1, 3, imgsz, imgsz] and give output0 [1, 84, A]. Ours is ``export_onnx(...,
layout="ultralytics")``; theirs ``YOLO("yolov8n.yaml").export(format="onnx")`` with its defaults
(onnxslim simplification when onnxslim is importable, which the output says). The two sessions
(CPU provider, default threads) are timed in alternation, ``--runs`` calls each per repeat (median),
the order swapped every repeat, so that a machine shared with other work slows both alike; the
ratio is the median over repeats of ours / theirs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector import build_model  # noqa: E402
from detector.export.onnx import export_onnx  # noqa: E402
from detector.timing import median_ms  # noqa: E402


def export_both(folder: Path, imgsz: int) -> tuple[Path, Path, bool]:
    """(ours, theirs, whether onnxslim simplified theirs)."""
    import torch
    from ultralytics import YOLO

    torch.manual_seed(0)
    ours = export_onnx(build_model("n", num_classes=80).eval(), folder / "ours.onnx", imgsz=imgsz, layout="ultralytics")
    try:
        import onnxslim  # noqa: F401

        simplify = True
    except ImportError:
        simplify = False  # ultralytics would try to pip-install it
    cwd = os.getcwd()
    os.chdir(folder)  # its exporter writes yolov8n.onnx into the working folder
    try:
        theirs = folder / Path(YOLO("yolov8n.yaml").export(format="onnx", imgsz=imgsz, simplify=simplify,
                                                           verbose=False)).name
    finally:
        os.chdir(cwd)
    return ours, theirs, simplify


def run(imgsz: int = 640, repeats: int = 9, runs: int = 20) -> dict:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        ours_path, theirs_path, simplified = export_both(Path(tmp), imgsz)
        sessions = {name: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                    for name, path in (("ours", ours_path), ("ultralytics", theirs_path))}
        shapes = {name: s.get_outputs()[0].shape for name, s in sessions.items()}
        images = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
        times = {"ours": [], "ultralytics": []}
        for repeat in range(repeats):
            order = ("ours", "ultralytics") if repeat % 2 == 0 else ("ultralytics", "ours")
            for name in order:
                session = sessions[name]
                times[name].append(median_ms(lambda: session.run(None, {"images": images}), runs=runs, warmup=3))
        ratios = [a / b for a, b in zip(times["ours"], times["ultralytics"])]
        return {"imgsz": imgsz, "repeats": repeats, "runs": runs, "onnxslim": simplified, "shapes": shapes,
                "ours_ms": statistics.median(times["ours"]), "ultralytics_ms": statistics.median(times["ultralytics"]),
                "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                "mib": {"ours": ours_path.stat().st_size / 2**20, "ultralytics": theirs_path.stat().st_size / 2**20},
                "threads": os.cpu_count()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--runs", type=int, default=20, help="session.run calls per repeat and file (median)")
    args = parser.parse_args(argv)
    result = run(args.imgsz, args.repeats, args.runs)
    print(f"output shapes: {result['shapes']}; ultralytics export simplified by onnxslim: {result['onnxslim']}")
    print(f"file size MiB: ours {result['mib']['ours']:.2f}, ultralytics {result['mib']['ultralytics']:.2f}")
    print(f"onnxruntime CPU, batch 1, {args.imgsz}x{args.imgsz}, median of {args.repeats} repeats x {args.runs} runs: "
          f"ours {result['ours_ms']:.1f} ms, ultralytics {result['ultralytics_ms']:.1f} ms, ratio ours/theirs "
          f"{result['ratio']:.3f} (repeats {result['ratio_min']:.3f}-{result['ratio_max']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
