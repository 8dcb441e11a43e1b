import json
from pathlib import Path

import cv2
import numpy as np
import pytest


def write_image(path: Path, width=96, height=64, rect=None, colour=(255, 0, 0), background=(0, 0, 0)):
    image = np.zeros((height, width, 3), np.uint8)
    image[:] = background
    if rect is not None:
        x1, y1, x2, y2 = rect
        image[y1:y2, x1:x2] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture
def user_cache(tmp_path, monkeypatch):
    """$DETECTOR_CACHE in the test's folder, and the once-per-process warnings forgotten."""
    monkeypatch.setenv("DETECTOR_CACHE", str(tmp_path / "user_cache"))
    monkeypatch.setattr("detector.data.index._reported", set())
    return tmp_path / "user_cache"


def count_calls(monkeypatch, module, name: str) -> list:
    """Replace ``module.name`` by a wrapper that records each call's arguments in the list returned."""
    calls, original = [], getattr(module, name)
    monkeypatch.setattr(module, name, lambda *args: calls.append(args) or original(*args))
    return calls


@pytest.fixture(name="count_calls")
def count_calls_fixture(monkeypatch):
    return lambda module, name: count_calls(monkeypatch, module, name)


@pytest.fixture(name="write_image")
def write_image_fixture():
    """The image writer as a fixture: test modules cannot import conftest under importlib mode."""
    return write_image


@pytest.fixture
def coco_set(tmp_path):
    """3 images: two with boxes (one crowd), one background; categories with non-contiguous ids."""
    img_dir = tmp_path / "images"
    for name in ("a.png", "b.png", "c.png"):
        write_image(img_dir / name, rect=(10, 20, 50, 60))
    data = {
        "images": [{"id": 7, "file_name": "a.png", "width": 96, "height": 64},
                   {"id": 9, "file_name": "b.png", "width": 96, "height": 64},
                   {"id": 11, "file_name": "c.png", "width": 96, "height": 64}],
        "categories": [{"id": 3, "name": "cat"}, {"id": 17, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 17, "bbox": [10, 20, 40, 40], "area": 1600, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 3, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 1},
            {"id": 3, "image_id": 9, "category_id": 3, "bbox": [1.5, 2.5, 20, 10], "area": 200, "iscrowd": 0},
        ],
    }
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    return img_dir, ann


@pytest.fixture
def yolo_set(tmp_path):
    root = tmp_path / "yolo"
    write_image(root / "images" / "train" / "a.png")
    write_image(root / "images" / "train" / "b.png")
    write_image(root / "images" / "train" / "bg.png")  # no label file: background
    labels = root / "labels" / "train"
    labels.mkdir(parents=True)
    (labels / "a.txt").write_text("0 0.5 0.5 0.25 0.5\n1 0.25 0.25 0.125 0.25\n")
    (labels / "b.txt").write_text("1 0.5 0.5 1.0 1.0\n")
    return root


@pytest.fixture(scope="session")
def coco128():
    """YoloDetection over ../shared/data/coco128 (or $COCO128); the test skips when it is absent."""
    from detector.data import YoloDetection
    from tests.reference.coco128 import coco128_root

    root = coco128_root()
    if root is None:
        pytest.skip("COCO128 is absent ($COCO128, else ../shared/data/coco128)")
    return YoloDetection(root, "train2017")
