"""The one-class photo set builder of datasets/photo_crops.py (README, side by side)."""
import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

# Loaded by path: datasets/ is a folder of scripts, and ``import datasets`` would find HuggingFace's
# package wherever that is installed.
_SPEC = importlib.util.spec_from_file_location(
    "photo_crops", Path(__file__).resolve().parents[1] / "datasets" / "photo_crops.py")
photo_crops = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(photo_crops)
boxes_in_window, build, crop_windows = photo_crops.boxes_in_window, photo_crops.build, photo_crops.crop_windows


def test_window_keeps_boxes_mostly_inside_and_moves_them():
    boxes = np.array([[10, 10, 30, 30],     # wholly inside
                      [90, 10, 130, 30],    # half inside (x 90..100 of 90..130: 25%) -> dropped
                      [80, 50, 110, 70]])   # 20 of 30 px wide inside (67%) -> kept, clipped
    kept = boxes_in_window(boxes.astype(float), (0, 0, 100, 100))
    np.testing.assert_allclose(kept, [[10, 10, 30, 30], [80, 50, 100, 70]])
    np.testing.assert_allclose(boxes_in_window(boxes.astype(float), (5, 5, 105, 105)),
                               [[5, 5, 25, 25], [75, 45, 100, 65]])


def test_windows_square_inside_and_around_large_boxes_only():
    rng = np.random.default_rng(0)
    boxes = np.array([[100, 100, 200, 260], [10, 10, 20, 20]], dtype=float)  # one large, one under min_side
    windows = crop_windows(boxes, 640, 480, min_side=32, rng=rng)
    assert windows[0] == (0, 0, 640, 480) and len(windows) == 2
    x0, y0, x1, y1 = windows[1]
    assert 0 <= x0 and 0 <= y0 and x1 <= 640 and y1 <= 480 and x1 - x0 == y1 - y0
    assert 160 / 0.8 - 1 <= x1 - x0 <= 160 / 0.35 + 1  # the box's longer side is 35-80% of the window's


def test_build_holds_out_by_source_picture(tmp_path):
    source = tmp_path / "src"
    (source / "images").mkdir(parents=True)
    (source / "labels").mkdir()
    rng = np.random.default_rng(1)
    for k in range(8):
        cv2.imwrite(str(source / "images" / f"p{k}.jpg"), rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
        (source / "labels" / f"p{k}.txt").write_text("0 0.5 0.5 0.4 0.5\n1 0.2 0.2 0.1 0.1\n")
    (source / "data.yaml").write_text(f"path: {source}\ntrain: images\nval: images\nnames:\n  0: person\n  1: dog\n")
    yaml = build(source / "data.yaml", tmp_path / "out", "person", n_train=100, n_val=100, min_side=32, seed=0)
    assert "names:\n  0: person" in yaml.read_text()
    stems = {split: {p.stem.rsplit("_", 1)[0] for p in (tmp_path / "out" / "images" / split).glob("*.jpg")}
             for split in ("train", "val")}
    assert stems["val"] == {"p3", "p7"} and stems["train"] == {"p0", "p1", "p2", "p4", "p5", "p6"}
    for label in (tmp_path / "out" / "labels").rglob("*.txt"):
        rows = np.loadtxt(label, ndmin=2)
        assert (rows[:, 0] == 0).all() and ((rows[:, 1:] >= 0) & (rows[:, 1:] <= 1)).all()
    assert len(list((tmp_path / "out" / "images" / "train").glob("*.jpg"))) == 12  # 6 pictures + 6 crops


def test_unknown_class_named(tmp_path):
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.jpg"), np.zeros((32, 32, 3), np.uint8))
    (tmp_path / "data.yaml").write_text(f"path: {tmp_path}\ntrain: images\nval: images\nnames:\n  0: cat\n")
    with pytest.raises(SystemExit, match="no class named 'person'"):
        build(tmp_path / "data.yaml", tmp_path / "out", "person", 10, 10, 32, 0)
