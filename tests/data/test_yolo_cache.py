"""The YOLO label cache (detector/data/yolo.py over detector/data/index.py): a hit restores exactly
the fresh build without opening an image; a stale or damaged cache is rebuilt; unwritable folders."""
import logging
import os
import re

import numpy as np
import pytest
import yaml

from detector.data import yolo as yolo_module
from detector.data.index import cache_key, files_fingerprint, load_cache
from detector.data.yolo import INDEX_OPTIONS, YoloDetection, yolo_splits

INDEX_KEYS = ("files", "image_ids", "sizes", "offsets", "boxes", "labels")


pytestmark = pytest.mark.usefixtures("user_cache")  # conftest: a cache folder of its own


@pytest.fixture
def builds(count_calls):
    """How many times the images and label files are read (a cache hit reads none)."""
    return count_calls(yolo_module, "read_yolo_index")


@pytest.fixture
def no_file_opened(monkeypatch):
    """Makes any image header or label file read fail: what a cache hit must never do."""
    def refuse(*args):
        raise AssertionError(f"read on a cache hit: {args[0]}")

    def patch():
        monkeypatch.setattr(yolo_module, "image_size", refuse)
        monkeypatch.setattr(yolo_module, "parse_label_file", refuse)
    return patch


def caches(folder, pattern="*.cache.npz"):
    return sorted(p.name for p in folder.glob(pattern))


def assert_same_index(first, second):
    for key in INDEX_KEYS:
        np.testing.assert_array_equal(getattr(first.index, key), getattr(second.index, key), err_msg=key)
    assert first.index.root == second.index.root
    assert first.names == second.names and first.category_ids == second.category_ids
    assert first.image_sizes == second.image_sizes and first.input_files == second.input_files


def test_hit_equals_the_fresh_build_and_opens_no_file(yolo_set, builds, no_file_opened, caplog):
    labels = yolo_set / "labels" / "train"
    (labels / "b.txt").write_text("3 0.5 0.5 1.0 1.0\n1 0.5\n")  # ids 0, 1 (a.txt), 3: 4 classes inferred
    (labels / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")  # no image
    (yolo_set / "images" / "train" / "bad.png").write_bytes(b"junk")  # unreadable: image id 2 skipped
    with caplog.at_level(logging.INFO, logger="detector"):
        first = YoloDetection(yolo_set, "train")
    fresh_log, _ = caplog.text, caplog.clear()
    no_file_opened()
    with caplog.at_level(logging.INFO, logger="detector"):
        second = YoloDetection(yolo_set, "train")
    assert len(builds) == 1
    (name,) = caches(yolo_set / "labels")  # beside the label folder, as ultralytics' labels/train.cache
    assert re.fullmatch(r"train\.[0-9a-f]{12}\.cache\.npz", name)
    assert load_cache(yolo_set / "labels" / "train", {**INDEX_OPTIONS, "num_classes": None}, first.files_digest)
    # hand-checked values: images a, b, bad, bg (96 x 64) -> ids 0, 1, 3; a's two boxes, b's full-image box
    assert first.index.image_ids.tolist() == [0, 1, 3] and first.index.offsets.tolist() == [0, 2, 3, 3]
    assert first.index.files.tolist() == [b"a.png", b"b.png", b"bg.png"]
    assert first.index.sizes.tolist() == [[96, 64]] * 3
    np.testing.assert_array_equal(first.index.boxes, [[36, 16, 60, 48], [18, 8, 30, 24], [0, 0, 96, 64]])
    assert first.index.labels.tolist() == [0, 1, 3] and first.names == ["class0", "class1", "class2", "class3"]
    assert first.image_sizes == {0: (96, 64), 1: (96, 64), 3: (96, 64)}
    assert [p.name for p in first.input_files] == ["a.png", "b.png", "bad.png", "bg.png",
                                                   "a.txt", "b.txt", "bad.txt", "bg.txt"]
    assert_same_index(first, second)
    assert first.samples[0].path == yolo_set / "images" / "train" / "a.png"
    assert second[0][1]["labels"].tolist() == [0, 1]  # the items themselves still decode the image
    # the same report and the same class inference log, word for word
    assert caplog.text == fresh_log
    for phrase in ("1 x label files without an image: ghost.txt", "1 x unreadable images: bad.png",
                   "1 x label lines with fewer than 5 fields: b.txt:2",
                   "without a label file (kept as background): bg.png",
                   "4 classes inferred from the largest class id, 1 of them without instances"):
        assert phrase in fresh_log, phrase


def test_refused_class_id_is_refused_again_from_the_cache(yolo_set, builds, no_file_opened):
    label_file = yolo_set / "labels" / "train" / "b.txt"
    label_file.write_text("1 0.5 0.5 0.5 0.5\n999 0.5 0.5 1.0 1.0\n")
    message = re.escape(f"{label_file}:2: class id 999 implies 1000 classes, 997 of them")
    with pytest.raises(ValueError, match=message):
        YoloDetection(yolo_set, "train")
    no_file_opened()
    with pytest.raises(ValueError, match=message):
        YoloDetection(yolo_set, "train")
    assert len(builds) == 1


def test_edited_label_file_rebuilds(yolo_set, builds):
    label_file = yolo_set / "labels" / "train" / "b.txt"
    YoloDetection(yolo_set, "train", names=["a", "b"])
    stat = label_file.stat()
    os.utime(label_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same bytes, newer time
    YoloDetection(yolo_set, "train", names=["a", "b"])
    assert len(builds) == 2
    label_file.write_text("0 0.5 0.5 0.5 1\n")  # two bytes less, the same time as before
    os.utime(label_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    dataset = YoloDetection(yolo_set, "train", names=["a", "b"])
    assert len(builds) == 3 and dataset.index.boxes[2].tolist() == [24, 0, 72, 64] and dataset.index.labels[2] == 0
    assert len(caches(yolo_set / "labels")) == 1  # the stale cache was replaced
    YoloDetection(yolo_set, "train", names=["a", "b"])
    assert len(builds) == 3


def test_added_or_removed_image_rebuilds(yolo_set, builds, write_image):
    assert len(YoloDetection(yolo_set, "train", names=["a", "b"])) == 3
    write_image(yolo_set / "images" / "train" / "c.png", width=32, height=48)
    dataset = YoloDetection(yolo_set, "train", names=["a", "b"])
    assert len(builds) == 2 and len(dataset) == 4 and dataset.image_sizes[3] == (32, 48)
    (yolo_set / "images" / "train" / "a.png").unlink()
    dataset = YoloDetection(yolo_set, "train", names=["a", "b"])
    assert len(builds) == 3 and dataset.index.files.tolist() == [b"b.png", b"bg.png", b"c.png"]
    write_image(yolo_set / "images" / "train" / "bg.png", width=48)  # the same name, other bytes
    assert YoloDetection(yolo_set, "train", names=["a", "b"]).image_sizes[1] == (48, 64) and len(builds) == 4


def test_class_count_is_in_the_key_names_are_not(yolo_set, builds):
    YoloDetection(yolo_set, "train", names=["a", "b"])
    renamed = YoloDetection(yolo_set, "train", names=["x", "y"])  # the same index: the cache serves
    assert len(builds) == 1 and renamed.names == ["x", "y"]
    one = YoloDetection(yolo_set, "train", names=["a"])  # class 1 now out of range: rebuilt
    assert len(builds) == 2 and one.index.labels.tolist() == [0]
    inferred = YoloDetection(yolo_set, "train")
    assert len(builds) == 3 and inferred.names == ["class0", "class1"]


def test_format_version_change_rebuilds(yolo_set, builds, monkeypatch):
    YoloDetection(yolo_set, "train", names=["a", "b"])
    monkeypatch.setattr("detector.data.index.FORMAT_VERSION", 99)
    YoloDetection(yolo_set, "train", names=["a", "b"])
    assert len(builds) == 2


def test_damaged_cache_is_rebuilt(yolo_set, builds):
    YoloDetection(yolo_set, "train", names=["a", "b"])
    (cache,) = (yolo_set / "labels").glob("train.*.cache.npz")
    cache.write_bytes(b"PK\x03\x04 cut short")
    assert len(YoloDetection(yolo_set, "train", names=["a", "b"])) == 3 and len(builds) == 2
    assert cache.stat().st_size > 100  # written again
    YoloDetection(yolo_set, "train", names=["a", "b"])
    assert len(builds) == 2


def test_unwritable_folder_falls_back_then_goes_on_without(yolo_set, user_cache, builds, caplog, tmp_path,
                                                           monkeypatch):
    YoloDetection(yolo_set, "train", names=["a", "b"])
    (beside,) = (yolo_set / "labels").glob("train.*.cache.npz")
    beside.unlink()
    beside.mkdir()  # a folder where the cache file should go: the write fails as on a read-only disk
    with caplog.at_level(logging.WARNING, logger="detector"):
        dataset = YoloDetection(yolo_set, "train", names=["a", "b"])
    assert len(dataset) == 3 and f"written to {user_cache / 'labels'}" in caplog.text
    assert len(list((user_cache / "labels").glob("train.*.cache.npz"))) == 1
    YoloDetection(yolo_set, "train", names=["a", "b"])
    assert len(builds) == 2  # the fallback cache is read back
    (tmp_path / "blocker").write_text("")
    monkeypatch.setenv("DETECTOR_CACHE", str(tmp_path / "blocker" / "cache"))  # under a file: cannot exist
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="detector"):
        assert len(YoloDetection(yolo_set, "train", names=["a", "b"])) == 3
        YoloDetection(yolo_set, "train", names=["a", "b"])
    assert len(builds) == 4
    assert caplog.text.count("going on without a label cache") == 1 and str(beside) in caplog.text


def test_data_yaml_splits_are_cached_each_under_its_key(yolo_set, builds, no_file_opened, caplog):
    (yolo_set / "train.txt").write_text("./images/train/a.png\n./images/train/gone.png\n./images/train/b.png\n")
    data_yaml = yolo_set / "data.yaml"
    data_yaml.write_text(yaml.safe_dump({"path": str(yolo_set), "train": "train.txt", "val": "images/train",
                                         "names": ["a", "b"]}))
    with caplog.at_level(logging.WARNING, logger="detector"):
        first = yolo_splits(data_yaml=str(data_yaml))
    fresh_log, _ = caplog.text, caplog.clear()
    assert len(builds) == 2 and "1 x listed images that do not exist: train.txt:2" in fresh_log
    names = caches(yolo_set / "labels")
    assert len(names) == 2 and names[0].startswith("train.train.") and names[1].startswith("train.val.")
    no_file_opened()
    with caplog.at_level(logging.WARNING, logger="detector"):
        second = yolo_splits(data_yaml=str(data_yaml))
    assert len(builds) == 2 and caplog.text == fresh_log
    assert len(second.train) == 2 and len(second.val) == 3
    assert_same_index(first.train, second.train)
    assert_same_index(first.val, second.val)
    assert second.val_ann_file == first.val_ann_file  # the val json is keyed by the same fingerprint


def test_val_json_follows_the_labels(yolo_set):
    first = yolo_splits(str(yolo_set), train_split="train", val_split="train", names=["a", "b"]).val_ann_file
    (yolo_set / "labels" / "train" / "b.txt").write_text("0 0.5 0.5 0.5 1\n")
    second = yolo_splits(str(yolo_set), train_split="train", val_split="train", names=["a", "b"]).val_ann_file
    assert second != first and '"bbox": [24.0, 0.0, 48.0, 64.0]' in open(second).read()


def test_fingerprint_sees_size_time_and_absence(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("12")
    start = files_fingerprint([a, b])
    assert files_fingerprint([a, b]) == start and files_fingerprint([b, a]) != start
    stat = a.stat()
    os.utime(a, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert files_fingerprint([a, b]) != start
    os.utime(a, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    b.write_text("")  # created: size 0 is not "absent"
    assert files_fingerprint([a, b]) != start
    b.unlink()
    assert files_fingerprint([a, b]) == start
    key = cache_key(tmp_path / "not_there", {"o": 1}, fingerprint=start)  # no stat of the source itself
    assert key["fingerprint"] == start and "size" not in key


def test_label_lines_checked_per_file_keep_their_order_and_kinds(yolo_set, caplog):
    """The boxes of a file are clipped together: the report still follows the lines' order, and a
    class id of inf (int() overflows) is reported as not a number rather than crashing the build."""
    (yolo_set / "labels" / "train" / "a.txt").write_text(
        "0 3.0 3.0 0.1 0.1\ninf 0.5 0.5 0.1 0.1\n1 0.5 0.5 0.5 1\n0 0.5 0.5 -1 1\n0 0.995 0.5 0.2 0.2\n")
    with caplog.at_level(logging.WARNING, logger="detector"):
        dataset = YoloDetection(yolo_set, "train", names=["a", "b"])
    # line 3: 24..72 x 0..64; line 5: cx 95.52, w 19.2 -> 85.92..105.12, clipped to 96
    np.testing.assert_allclose(dataset.index.boxes_of(0), [[24, 0, 72, 64], [85.92, 25.6, 96, 38.4]], rtol=1e-6)
    assert dataset.index.labels_of(0).tolist() == [1, 0]
    report = caplog.text
    assert report.index("outside the image: a.txt:1") < report.index("not numbers: a.txt:2") < report.index(
        "non-positive size: a.txt:4")
