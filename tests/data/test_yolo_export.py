import numpy as np
import pytest

from detector.data.base import DataSplits
from detector.data.coco import CocoDetection
from detector.data.yolo import yolo_splits
from detector.data.yolo_export import export_yolo

pytestmark = pytest.mark.usefixtures("user_cache")  # conftest: a cache folder of its own


def test_export_reads_back_as_the_same_boxes_labels_and_names(coco_set, tmp_path):
    img_dir, ann = coco_set
    dataset = CocoDetection(img_dir, ann)
    splits = DataSplits(train=dataset, val=dataset, val_ann_file=str(ann), names=dataset.names)
    yaml = export_yolo(splits, tmp_path / "out")
    assert (tmp_path / "out" / "labels" / "train" / "b.txt").read_text() == "0 0.119792 0.117188 0.208333 0.156250\n"
    assert (tmp_path / "out" / "images" / "train" / "a.png").resolve() == (img_dir / "a.png").resolve()
    back = yolo_splits(data_yaml=str(yaml), cache_dir=str(tmp_path / "cache"))
    assert back.names == ["cat", "dog"] and len(back.train) == len(dataset) == 3
    for i in range(3):  # same order: file names sort alike here
        ours, theirs = dataset.sample(i), back.train.sample(i)
        assert ours.path.name == theirs.path.name
        np.testing.assert_allclose(theirs.boxes, ours.boxes, atol=1e-3)  # 6 decimals of 96 x 64 px
        np.testing.assert_array_equal(theirs.labels, ours.labels)


def test_export_limits_the_training_images_and_refuses_two_pictures_of_one_name(coco_set, tmp_path):
    img_dir, ann = coco_set
    dataset = CocoDetection(img_dir, ann)
    export_yolo(DataSplits(dataset, dataset, str(ann), dataset.names), tmp_path / "out", limit_train=2)
    assert sorted(p.name for p in (tmp_path / "out" / "labels" / "train").iterdir()) == ["a.txt", "b.txt"]
    assert len(list((tmp_path / "out" / "labels" / "val").iterdir())) == 3
    twice = DataSplits(dataset, dataset, str(ann), dataset.names)
    twice.train.index.files[1] = twice.train.index.files[0]
    with pytest.raises(ValueError, match="two images named a.png"):
        export_yolo(twice, tmp_path / "again")


@pytest.mark.e2e
def test_export_tool_writes_the_shapes_set(tmp_path):
    from tests.cli_runner import run_cli

    done = run_cli("export_yolo.py", tmp_path / "shapes", "--train", "4", "data.num_train=6", "data.num_val=3",
                   "data.min_size=64", "data.max_size=96")
    assert done.returncode == 0, done.stderr
    yaml = tmp_path / "shapes" / "data.yaml"
    assert f"wrote {yaml}" in done.stdout
    text = yaml.read_text()
    assert "names:\n  0: circle" in text and f"path: {tmp_path / 'shapes'}" in text
    assert len(list((tmp_path / "shapes" / "images" / "train").iterdir())) == 4
    assert len(list((tmp_path / "shapes" / "labels" / "val").iterdir())) == 3
