import json
import logging
import re

import pytest
import torch
from pycocotools.coco import COCO

from detector.data import CocoDetection, YoloDetection, yolo_splits, yolo_to_coco
from detector.data.base import ImageDecodeError



def test_coco_round_trip_contiguous_labels_crowd_and_background(coco_set):
    img_dir, ann = coco_set
    ds = CocoDetection(img_dir, ann)
    assert len(ds) == 3 and ds.names == ["cat", "dog"] and ds.category_ids == [3, 17]
    image, target = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 64, 96)
    assert target["image_id"] == 7 and target["orig_size"] == (64, 96)
    assert torch.equal(target["boxes"], torch.tensor([[10.0, 20.0, 50.0, 60.0]]))  # crowd box left out
    assert target["labels"].tolist() == [1]
    assert torch.equal(ds[1][1]["boxes"], torch.tensor([[1.5, 2.5, 21.5, 12.5]]))
    assert ds[2][1]["boxes"].shape == (0, 4)  # background image kept


def test_yolo_round_trip(yolo_set):
    ds = YoloDetection(yolo_set, "train", names=["a", "b"])
    assert len(ds) == 3
    _, target = ds[0]
    assert torch.allclose(target["boxes"], torch.tensor([[36.0, 16.0, 60.0, 48.0], [18.0, 8.0, 30.0, 24.0]]))  # 96x64: cx 24, w 12
    assert target["labels"].tolist() == [0, 1]
    assert ds[2][1]["boxes"].shape == (0, 4)


def test_yolo_to_coco_matches_the_data_set(yolo_set, tmp_path):
    out = yolo_to_coco(yolo_set, "train", ["a", "b"], tmp_path / "out.json")
    coco = COCO(out)
    ds = YoloDetection(yolo_set, "train", names=["a", "b"])
    for index in range(len(ds)):
        _, target = ds[index]
        anns = coco.imgToAnns[target["image_id"]]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns]).reshape(-1, 4)
        assert torch.allclose(boxes, target["boxes"])
        assert [a["category_id"] for a in anns] == [ds.category_ids[l] for l in target["labels"].tolist()]


def test_yolo_splits_cache_the_val_json(yolo_set):
    splits = yolo_splits(str(yolo_set), train_split="train", val_split="train", names=["a", "b"])
    assert json.loads(open(splits.val_ann_file).read())["categories"][1]["name"] == "b"
    again = yolo_splits(str(yolo_set), train_split="train", val_split="train", names=["a", "b"])
    assert again.val_ann_file == splits.val_ann_file


def test_bad_label_lines_are_skipped_and_reported(yolo_set, caplog):
    labels = yolo_set / "labels" / "train"
    (labels / "a.txt").write_text("0 0.5 0.5 0.25 0.5\n1 0.5\nnan 0.5 0.5 0.1 0.1\n0 nan 0.5 0.1 0.1\n"
                                  "0 0.5 0.5 -0.1 0.2\n0 3.0 3.0 0.1 0.1\n7 0.5 0.5 0.1 0.1\n")
    (labels / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")  # no image
    with caplog.at_level(logging.WARNING, logger="detector"):
        ds = YoloDetection(yolo_set, "train", names=["a", "b"])
    _, target = ds[0]
    assert target["labels"].tolist() == [0]
    text = caplog.text
    for phrase in ("fewer than 5 fields", "not numbers", "NaN", "non-positive size", "outside the image",
                   "class id outside", "label files without an image", "ghost.txt", "a.txt:2"):
        assert phrase in text, phrase
    assert text.count("skipped bad input") == 1  # reported once


def test_undecodable_image_is_replaced_and_reported(yolo_set, caplog):
    (yolo_set / "images" / "train" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with caplog.at_level(logging.WARNING, logger="detector"):
        ds = YoloDetection(yolo_set, "train", names=["a", "b"])
        image, target = ds[0]
    assert "a.png" in caplog.text
    assert image.shape[0] == 3 and target["image_id"] != 0 or len(ds) == 2


def test_truncated_image_in_coco_raises_naming_it_never_another_image(coco_set):
    """Read directly, an image cut short raises; no neighbour is given in its place (the training
    pipeline replaces it, a val loader leaves it out: tests/data/test_files_from_elsewhere.py)."""
    img_dir, ann = coco_set
    data = (img_dir / "a.png").read_bytes()
    (img_dir / "a.png").write_bytes(data[:40])
    ds = CocoDetection(img_dir, ann)
    with pytest.raises(ImageDecodeError, match=re.escape(f"{img_dir / 'a.png'}: cannot be decoded")):
        ds[0]
    assert ds[1][1]["image_id"] == 9


def test_jpeg_cut_short_is_skipped(yolo_set, caplog):
    """OpenCV 4 decodes a cut JPEG with grey rows and no error (OpenCV 5 refuses it): caught either way."""
    import cv2
    import numpy as np

    from detector.data.base import is_truncated_jpeg

    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    data = cv2.imencode(".jpg", image)[1].tobytes()
    cut = data[:len(data) * 6 // 10]
    assert is_truncated_jpeg(np.frombuffer(cut, np.uint8))
    assert not is_truncated_jpeg(np.frombuffer(data, np.uint8))
    assert not is_truncated_jpeg(np.frombuffer(data + bytes(100), np.uint8))  # padding after the end marker
    folder = yolo_set / "images" / "train"
    (folder / "a.png").unlink()
    (folder / "a.jpg").write_bytes(cut)
    ds = YoloDetection(yolo_set, "train", names=["a", "b"])
    with pytest.raises(ImageDecodeError, match=r"a\.jpg: cannot be decoded \(truncated or not an image\)"):
        ds[0]  # a.jpg is first: its header reads, its pixels do not


def test_images_without_a_label_file_are_kept_as_background_and_reported(yolo_set, caplog):
    with caplog.at_level(logging.WARNING, logger="detector"):
        ds = YoloDetection(yolo_set, "train", names=["a", "b"])
    assert len(ds) == 3 and ds[2][1]["boxes"].shape == (0, 4)
    assert "1 x images without a label file (kept as background): bg.png" in caplog.text


def test_coco_json_pointing_at_missing_images(coco_set, caplog):
    img_dir, ann = coco_set
    (img_dir / "b.png").unlink()
    with caplog.at_level(logging.WARNING, logger="detector"):
        ds = CocoDetection(img_dir, ann)
    assert len(ds) == 2 and "1 x images missing on disk" in caplog.text and "b.png" in caplog.text
    data = json.loads(ann.read_text())
    data["annotations"].append({"id": 9, "image_id": 999, "category_id": 3, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0})
    ann.write_text(json.dumps(data))  # an annotation of no image: the json is refused, naming it
    with pytest.raises(ValueError, match=re.escape(f"{ann}: annotation id 9: image_id 999 is not the id of an image")):
        CocoDetection(img_dir, ann)


def test_nothing_valid_is_refused(tmp_path, write_image):
    write_image(tmp_path / "yolo" / "images" / "train" / "x.png").write_bytes(b"junk")
    with pytest.raises(ValueError, match="no valid image"):
        YoloDetection(tmp_path / "yolo", "train")
    with pytest.raises(FileNotFoundError, match="images/val"):
        YoloDetection(tmp_path / "yolo", "val")


@pytest.mark.coco128
def test_coco128_counts(coco128):
    assert len(coco128) == 128
    assert sum(len(s.labels) for s in coco128.samples) == 929
    assert sum(len(s.labels) == 0 for s in coco128.samples) == 2


# --- YOLO sets without names: the class count is inferred, and a stray class id is refused ---------

def test_inferred_class_count_is_logged_with_the_empty_classes(yolo_set, caplog):
    (yolo_set / "labels" / "train" / "b.txt").write_text("3 0.5 0.5 1.0 1.0\n")  # ids 0, 1, 3: class 2 empty
    with caplog.at_level(logging.INFO, logger="detector"):
        ds = YoloDetection(yolo_set, "train")
    assert ds.names == ["class0", "class1", "class2", "class3"]
    assert "4 classes inferred from the largest class id, 1 of them without instances" in caplog.text


def test_class_id_that_leaves_most_classes_empty_names_file_and_line(yolo_set):
    (yolo_set / "labels" / "train" / "b.txt").write_text("1 0.5 0.5 0.5 0.5\n999 0.5 0.5 1.0 1.0\n")
    label_file = yolo_set / "labels" / "train" / "b.txt"
    # ids 0, 1 (a.txt) and 999: 997 of 1000 classes empty
    with pytest.raises(ValueError, match=re.escape(f"{label_file}:2: class id 999 implies 1000 classes, 997 of them")):
        YoloDetection(yolo_set, "train")
    with pytest.raises(ValueError, match="b.txt:2: class id 999"):
        yolo_splits(str(yolo_set), train_split="train", val_split="train")
    # with names the line is skipped and reported as before, nothing inferred
    assert YoloDetection(yolo_set, "train", names=["a", "b"]).names == ["a", "b"]


def test_inference_at_the_half_boundary(yolo_set):
    # ids 0, 1 and 3 of 4 classes: 1 empty, accepted (above); ids 0, 1 and 4 of 5: 2 empty of 5, accepted;
    # ids 0 and 4 of 5 (b.txt only, a.txt emptied): 3 of 5 empty, refused
    labels = yolo_set / "labels" / "train"
    (labels / "b.txt").write_text("4 0.5 0.5 1.0 1.0\n")
    assert len(YoloDetection(yolo_set, "train").names) == 5
    (labels / "a.txt").write_text("0 0.5 0.5 0.25 0.5\n")
    with pytest.raises(ValueError, match="b.txt:1: class id 4 implies 5 classes, 3 of them"):
        YoloDetection(yolo_set, "train")
