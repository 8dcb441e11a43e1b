"""datasets/class_subset.py: a YOLO set with some of its classes, renumbered in the order given."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

_SPEC = importlib.util.spec_from_file_location(
    "class_subset", Path(__file__).resolve().parents[1] / "datasets" / "class_subset.py")
class_subset = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(class_subset)


def make_set(root: Path) -> Path:
    labels = {"train": {"a": "0 0.5 0.5 0.2 0.2\n2 0.3 0.3 0.1 0.1\n1 0.7 0.7 0.2 0.2\n", "b": "1 0.5 0.5 0.4 0.4\n"},
              "val": {"c": "2 0.5 0.5 0.2 0.2\n\n0 0.1 0.1 0.1 0.1\n"}}
    for split, files in labels.items():
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for stem, text in files.items():
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / split / f"{stem}.png")
            (root / "labels" / split / f"{stem}.txt").write_text(text)
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: [cat, dog, car]\n")
    return root / "data.yaml"


def test_keeps_the_classes_given_renumbered_in_their_order(tmp_path):
    kept = class_subset.build(make_set(tmp_path / "src"), tmp_path / "out", ["car", "cat"])
    out = tmp_path / "out"
    assert kept == {"train": 2, "val": 2}
    assert (out / "labels" / "train" / "a.txt").read_text() == "1 0.5 0.5 0.2 0.2\n0 0.3 0.3 0.1 0.1\n"
    assert (out / "labels" / "train" / "b.txt").read_text() == ""  # a picture of dogs only: background now
    assert (out / "labels" / "val" / "c.txt").read_text() == "0 0.5 0.5 0.2 0.2\n1 0.1 0.1 0.1 0.1\n"
    assert sorted(p.name for p in (out / "images" / "train").iterdir()) == ["a.png", "b.png"]
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["names"] == {0: "car", 1: "cat"} and Path(data["path"]) == out.resolve()
    from detector.data.data_yaml import read_data_yaml

    assert read_data_yaml(out / "data.yaml").names == ["car", "cat"]


def test_an_unknown_class_is_named_with_the_file_and_the_classes_it_has(tmp_path):
    source = make_set(tmp_path / "src")
    with pytest.raises(SystemExit, match=r"data.yaml: no class 'bird'; it has cat, dog, car"):
        class_subset.build(source, tmp_path / "out", ["cat", "bird"])
    assert not (tmp_path / "out").exists()
