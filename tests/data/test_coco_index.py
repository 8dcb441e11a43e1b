"""The flat COCO index and its label cache: values, cache hits, stale caches, unwritable folders."""
import json
import logging
import os

import numpy as np
import pytest

from detector.data import coco as coco_module
from detector.data.coco import INDEX_OPTIONS, CocoDetection
from detector.data.index import FlatIndex, cache_key, cache_path, load_cache, save_cache


@pytest.fixture
def counted_reads(count_calls):
    """How many times the json itself is parsed (a cache hit parses nothing)."""
    return count_calls(coco_module, "read_coco_index")


pytestmark = pytest.mark.usefixtures("user_cache")  # conftest: a cache folder of its own


def test_index_is_flat_and_exact(coco_set):
    img_dir, ann = coco_set
    index = CocoDetection(img_dir, ann).index
    assert index.image_ids.tolist() == [7, 9, 11] and index.offsets.tolist() == [0, 1, 2, 2]
    assert index.files.tolist() == [b"a.png", b"b.png", b"c.png"] and index.sizes.tolist() == [[96, 64]] * 3
    np.testing.assert_array_equal(index.boxes, [[10, 20, 50, 60], [1.5, 2.5, 21.5, 12.5]])  # crowd box out
    assert index.labels.tolist() == [1, 0] and index.boxes.dtype == np.float32
    assert index.nbytes == sum(a.nbytes for a in (index.files, index.image_ids, index.sizes, index.offsets,
                                                  index.boxes, index.labels))
    sub = index.select(np.array([False, True, True]))
    assert sub.offsets.tolist() == [0, 1, 1] and sub.labels.tolist() == [0] and sub.image_ids.tolist() == [9, 11]


def test_second_build_reads_the_cache_and_repeats_the_report(coco_set, counted_reads, caplog):
    img_dir, ann = coco_set
    data = json.loads(ann.read_text())
    data["annotations"].append({"id": 5, "image_id": 9, "category_id": 3, "bbox": [100, 70, 20, 20], "iscrowd": 0})
    ann.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="detector"):
        first = CocoDetection(img_dir, ann)
        second = CocoDetection(img_dir, ann)
    assert len(counted_reads) == 1
    assert cache_path(ann, cache_key(ann, INDEX_OPTIONS)).is_file()  # beside the json
    for key in ("files", "image_ids", "sizes", "offsets", "boxes", "labels"):
        np.testing.assert_array_equal(getattr(first.index, key), getattr(second.index, key))
    assert second.names == ["cat", "dog"] and second.category_ids == [3, 17]
    assert caplog.text.count("b.png ann 5") == 2  # the box outside the image, reported on each start


def test_cache_is_rebuilt_when_the_json_changes(coco_set, counted_reads):
    img_dir, ann = coco_set
    CocoDetection(img_dir, ann)
    stat = ann.stat()
    os.utime(ann, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same bytes, newer time
    CocoDetection(img_dir, ann)
    assert len(counted_reads) == 2
    data = json.loads(ann.read_text())
    data["annotations"][0]["bbox"] = [9.5, 20, 40, 40]  # one byte more, same mtime
    ann.write_text(json.dumps(data))
    os.utime(ann, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    dataset = CocoDetection(img_dir, ann)
    assert len(counted_reads) == 3 and dataset.index.boxes[0].tolist() == [9.5, 20, 49.5, 60]
    assert len(list(ann.parent.glob("ann.json.*.cache.npz"))) == 1  # the stale cache was replaced


def test_cache_of_other_options_or_version_is_never_used(coco_set, monkeypatch):
    img_dir, ann = coco_set
    index = CocoDetection(img_dir, ann).index
    assert load_cache(ann, INDEX_OPTIONS) is not None
    assert load_cache(ann, {**INDEX_OPTIONS, "min_box_px": 2}) is None
    save_cache(ann, {"names": ["a"]}, index, {}, {"n": 1})
    assert load_cache(ann, {"names": ["a"]})[2] == {"n": 1} and load_cache(ann, {"names": ["b"]}) is None
    monkeypatch.setattr("detector.data.index.FORMAT_VERSION", 99)
    assert load_cache(ann, INDEX_OPTIONS) is None


def test_damaged_cache_is_rebuilt(coco_set, counted_reads):
    img_dir, ann = coco_set
    CocoDetection(img_dir, ann)
    cache_path(ann, cache_key(ann, INDEX_OPTIONS)).write_bytes(b"PK\x03\x04 cut short")
    assert len(CocoDetection(img_dir, ann)) == 3 and len(counted_reads) == 2


def test_unwritable_cache_is_reported_once_and_the_data_set_still_works(coco_set, user_cache, counted_reads,
                                                                       caplog, tmp_path, monkeypatch):
    img_dir, ann = coco_set
    beside = cache_path(ann, cache_key(ann, INDEX_OPTIONS))
    beside.mkdir()  # a folder where the cache file should go: the write fails as on a read-only disk
    with caplog.at_level(logging.WARNING, logger="detector"):
        dataset = CocoDetection(img_dir, ann)
    assert len(dataset) == 3 and f"written to {user_cache / 'labels'}" in caplog.text
    assert len(list((user_cache / "labels").glob("*.cache.npz"))) == 1
    CocoDetection(img_dir, ann)
    assert len(counted_reads) == 1  # the fallback cache is read back
    (tmp_path / "blocker").write_text("")
    monkeypatch.setenv("DETECTOR_CACHE", str(tmp_path / "blocker" / "cache"))  # under a file: cannot exist
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="detector"):
        CocoDetection(img_dir, ann)
        CocoDetection(img_dir, ann)
    assert len(counted_reads) == 3
    assert caplog.text.count("going on without a label cache") == 1 and str(beside) in caplog.text


def test_missing_files_found_by_listing_not_stat(coco_set, monkeypatch, caplog):
    img_dir, ann = coco_set
    (img_dir / "b.png").unlink()
    stats = []
    original = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: stats.append(str(p)) or original(p, *a, **k))
    with caplog.at_level(logging.WARNING, logger="detector"):
        dataset = CocoDetection(img_dir, ann)
    assert dataset.index.image_ids.tolist() == [7, 11] and dataset.index.offsets.tolist() == [0, 1, 1]
    assert "1 x images missing on disk" in caplog.text and "b.png" in caplog.text
    assert not any(p.endswith(".png") for p in stats)


def test_from_lists_matches_per_image_samples():
    index = FlatIndex.from_lists("/r", ["x.jpg", "sub/y.jpg"], [3, 4], [np.ones((2, 4)), np.zeros((0, 4))],
                                 [np.array([1, 2]), np.zeros(0)])
    assert index.offsets.tolist() == [0, 2, 2] and str(index.path(1)) == "/r/sub/y.jpg"
    assert index.labels_of(0).tolist() == [1, 2] and index.boxes_of(1).shape == (0, 4)
