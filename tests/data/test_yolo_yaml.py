"""ultralytics' data.yaml (detector/data/data_yaml.py and yolo_splits): COCO128's own yaml, each
form of path/train/val/names on tiny generated sets, the label rule, and bad input naming key and path."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from detector.data import yolo_splits
from detector.data.data_yaml import DataYamlError, label_path, read_data_yaml, split_images
from tests.cli_runner import run_cli

ROOT = Path(__file__).resolve().parents[2]
COCO128 = Path(os.environ.get("COCO128", ROOT.parent / "shared" / "data" / "coco128"))


@pytest.fixture
def yolo_tree(tmp_path, write_image):
    """set/images/{train,train/sub,val}/*.png with labels/... (class 0 in train, class 1 in val)."""
    root = tmp_path / "set"
    for rel, line in (("train/a", "0 0.5 0.5 0.5 0.5"), ("train/b", "0 0.25 0.25 0.25 0.25"),
                      ("train/sub/d", "1 0.5 0.5 0.2 0.2"), ("val/c", "1 0.5 0.5 0.5 0.5")):
        write_image(root / "images" / f"{rel}.png")
        (root / "labels" / f"{rel}.txt").parent.mkdir(parents=True, exist_ok=True)
        (root / "labels" / f"{rel}.txt").write_text(line + "\n")
    return root


def write_yaml(path: Path, content: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(content))
    return path


def stems(dataset):
    return sorted(sample.path.stem for sample in dataset.samples)


# --- COCO128's own yaml ----------------------------------------------------------------------------

@pytest.mark.coco128
def test_coco128_own_yaml_is_enough(tmp_path, monkeypatch):
    if not (COCO128 / "coco128.yaml").is_file():
        pytest.skip("COCO128 is absent ($COCO128, else ../shared/data/coco128)")
    monkeypatch.chdir(tmp_path)  # its "path: ." is the yaml's folder, not the working directory
    splits = yolo_splits(data_yaml=str(COCO128 / "coco128.yaml"), cache_dir=str(tmp_path / "cache"))
    assert len(splits.train) == len(splits.val) == 128
    assert sum(len(s.labels) for s in splits.train.samples) == 929
    assert len(splits.names) == 80 and splits.names[:3] == ["person", "bicycle", "car"]
    assert all(s.path.parent == (COCO128 / "images" / "train2017").resolve() for s in splits.val.samples)
    coco = json.loads(Path(splits.val_ann_file).read_text())
    assert len(coco["images"]) == 128 and len(coco["annotations"]) == 929


# --- the forms of a data.yaml ----------------------------------------------------------------------

def test_folders_names_list_and_absolute_path(yolo_tree, tmp_path):
    data_yaml = write_yaml(tmp_path / "elsewhere" / "data.yaml",
                           {"path": str(yolo_tree), "train": "images/train", "val": "images/val", "names": ["a", "b"]})
    splits = yolo_splits(data_yaml=str(data_yaml))
    assert stems(splits.train) == ["a", "b", "d"]  # images/train/sub is searched too
    assert stems(splits.val) == ["c"] and splits.names == ["a", "b"]
    d = next(s for s in splits.train.samples if s.path.stem == "d")
    assert d.labels.tolist() == [1]  # labels/train/sub/d.txt, by the images -> labels rule
    assert Path(splits.val_ann_file).parent == yolo_tree / "annotations_coco"


@pytest.mark.parametrize("names", [{0: "a", 1: "b"}, {"1": "b", "0": "a"}])
def test_names_as_a_mapping(yolo_tree, names):
    data_yaml = write_yaml(yolo_tree / "data.yaml", {"train": "images/train", "val": "images/val", "names": names})
    assert read_data_yaml(data_yaml).names == ["a", "b"]


def test_path_absent_means_the_yaml_folder(yolo_tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data_yaml = write_yaml(yolo_tree / "data.yaml", {"train": "images/train", "val": "images/val", "names": ["a", "b"]})
    data = read_data_yaml(data_yaml)
    assert data.root == yolo_tree.resolve()
    assert data.splits["train"] == ((yolo_tree / "images" / "train").resolve(),)


def test_relative_path_from_the_yaml_folder_then_the_working_directory(yolo_tree, tmp_path, monkeypatch):
    content = {"path": "../set", "train": "images/train", "val": "images/val", "names": ["a", "b"]}
    data_yaml = write_yaml(tmp_path / "configs" / "data.yaml", content)
    monkeypatch.chdir(yolo_tree)  # ../set from here is the set too, but the yaml's folder comes first
    assert read_data_yaml(data_yaml).root == yolo_tree.resolve()
    # ultralytics' rule: a relative path that is not there from the yaml is taken from the working directory
    content["path"] = "set"
    data_yaml = write_yaml(tmp_path / "configs" / "cwd.yaml", content)
    monkeypatch.chdir(tmp_path)
    assert read_data_yaml(data_yaml).root == yolo_tree.resolve()


def test_txt_lists_relative_to_the_list_and_to_path(yolo_tree, tmp_path):
    lists = yolo_tree / "lists"
    lists.mkdir()
    # "./x" is relative to the list file's folder (ultralytics); "images/..." to path; absolute as is;
    # a comment-free blank line and a missing image are tolerated, the latter reported
    (lists / "train.txt").write_text(f"./../images/train/a.png\nimages/train/sub/d.png\n\n"
                                     f"{yolo_tree / 'images' / 'train' / 'b.png'}\n./gone.png\n")
    (yolo_tree / "val.txt").write_text("./images/val/c.png\n")
    data_yaml = write_yaml(yolo_tree / "data.yaml", {"path": str(yolo_tree), "train": "lists/train.txt",
                                                      "val": "val.txt", "names": ["a", "b"]})
    data = read_data_yaml(data_yaml)
    train = split_images(data, "train")
    assert [p.name for p in train.images] == ["a.png", "b.png", "d.png"]
    assert train.missing == ["train.txt:5"]
    splits = yolo_splits(data_yaml=str(data_yaml))
    assert stems(splits.train) == ["a", "b", "d"] and stems(splits.val) == ["c"]


def test_list_of_folders_and_list_files(yolo_tree):
    (yolo_tree / "extra.txt").write_text("./images/val/c.png\n")
    data_yaml = write_yaml(yolo_tree / "data.yaml", {"train": ["images/train/sub", "extra.txt", "images/train/a.png"],
                                                      "val": ["images/val"], "names": ["a", "b"]})
    splits = yolo_splits(data_yaml=str(data_yaml))
    assert stems(splits.train) == ["a", "c", "d"]
    assert stems(splits.val) == ["c"]


def test_test_split_root_override_and_names_override(yolo_tree, tmp_path):
    data_yaml = write_yaml(tmp_path / "data.yaml", {"path": "/nonexistent/moved", "train": "images/train",
                                                    "val": "images/val", "test": "images/train/sub", "names": ["a", "b"]})
    splits = yolo_splits(root=str(yolo_tree), val_split="test", data_yaml=str(data_yaml), names=["x", "y"])
    assert stems(splits.val) == ["d"] and splits.names == ["x", "y"]


def test_names_only_yaml_keeps_the_root_layout(yolo_tree, tmp_path):
    data_yaml = write_yaml(tmp_path / "names.yaml", {"names": ["a", "b"]})
    splits = yolo_splits(root=str(yolo_tree), val_split="val", data_yaml=str(data_yaml))
    assert stems(splits.train) == ["a", "b"] and splits.names == ["a", "b"]  # images/train, not recursive


def test_label_path_replaces_the_last_images_folder():
    sep = os.sep
    assert label_path(f"{sep}d{sep}images{sep}train{sep}x.jpg") == Path(f"{sep}d{sep}labels{sep}train{sep}x.txt")
    assert label_path(f"{sep}images{sep}s{sep}images{sep}x.v1.png") == Path(f"{sep}images{sep}s{sep}labels{sep}x.v1.txt")
    assert label_path(f"{sep}d{sep}pics{sep}x.jpg") == Path(f"{sep}d{sep}pics{sep}x.txt")


# --- bad input: the key and the path are named, nothing falls back -------------------------------

@pytest.mark.parametrize("change, key, shown", [
    ({"train": "images/nope"}, "'train'", "images/nope"),
    ({"val": "lists/val.txt"}, "'val'", "lists/val.txt"),
    ({"train": ["images/train", "/abs/missing"]}, "'train'", "/abs/missing"),
    ({"val": None, "test": "images/val"}, "'val'", "missing"),  # no fallback to test
    ({"names": None}, "'names'", "missing"),
    ({"names": {0: "a", 2: "b"}}, "'names'", "0..1"),
    ({"path": "/nonexistent/set"}, "path", "/nonexistent/set"),
    ({"path": "no/such/dir"}, "path", "no/such/dir"),
])
def test_bad_data_yaml_names_key_and_path(yolo_tree, change, key, shown):
    content = {"train": "images/train", "val": "images/val", "names": ["a", "b"], **change}
    content = {k: v for k, v in content.items() if v is not None}
    data_yaml = write_yaml(yolo_tree / "bad.yaml", content)
    with pytest.raises(DataYamlError) as error:
        yolo_splits(data_yaml=str(data_yaml))
    message = str(error.value)
    assert str(data_yaml) in message and key in message and shown in message


def test_split_without_images_is_refused(yolo_tree):
    (yolo_tree / "images" / "empty").mkdir()
    data_yaml = write_yaml(yolo_tree / "data.yaml", {"train": "images/train", "val": "images/empty", "names": ["a"]})
    with pytest.raises(DataYamlError, match="key 'val': no images found in .*images/empty"):
        yolo_splits(data_yaml=str(data_yaml))


def test_unknown_split_key_is_refused(yolo_tree):
    data_yaml = write_yaml(yolo_tree / "data.yaml", {"train": "images/train", "val": "images/val", "names": ["a", "b"]})
    with pytest.raises(DataYamlError, match="no key 'test'"):
        yolo_splits(data_yaml=str(data_yaml), val_split="test")


def test_no_root_and_no_data_yaml_is_refused():
    with pytest.raises(ValueError, match="data.data_yaml"):
        yolo_splits()


# --- one option trains, evaluates and predicts ----------------------------------------------------

@pytest.mark.e2e
def test_train_eval_predict_from_a_data_yaml_alone(yolo_tree, tmp_path):
    data_yaml = write_yaml(tmp_path / "data.yaml", {"path": str(yolo_tree), "train": "images/train",
                                                    "val": "images/val", "names": ["a", "b"]})

    def tool(name, *args):
        result = run_cli(name, *args)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    run_dir = tmp_path / "run"
    tool("train.py", "data=yolo", f"data.data_yaml={data_yaml}", f"hydra.run.dir={run_dir}", "epochs=1",
         "imgsz=64", "batch_size=2", "workers=0", "progress=false", "close_mosaic=1", "warmup.min_iters=1")
    ckpt = run_dir / "checkpoints" / "last.pt"
    tool("eval.py", f"ckpt={ckpt}", f"hydra.run.dir={tmp_path / 'eval'}")  # the data set from the checkpoint
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert "AP" in json.dumps(metrics)
    tool("predict.py", f"ckpt={ckpt}", f"source={yolo_tree / 'images' / 'val'}", f"hydra.run.dir={tmp_path / 'pred'}")
    predictions = json.loads((tmp_path / "pred" / "detections.json").read_text())
    assert [Path(p["file"]).name for p in predictions] == ["c.png"]
