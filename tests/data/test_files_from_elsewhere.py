"""Files from elsewhere, read as ultralytics reads them: photos with an EXIF orientation, polygon
label lines, byte-order marks and other encodings, symbolic links, malformed COCO jsons, and
images that cannot be decoded. Every crafted file is small and made in tmp_path."""
from __future__ import annotations

import json
import logging
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from detector.data import CocoDetection, YoloDetection, yolo_splits
from detector.data.base import EXIF_ORIENTATION, ImageDecodeError, image_size, read_image, read_resized
from detector.data.data_yaml import DataYamlError, read_data_yaml, split_images
from detector.data.pipeline import TrainDataset
from detector.data.rect import RectValDataset

pytestmark = pytest.mark.usefixtures("user_cache")  # conftest: a cache folder of its own

# PIL's exif_transpose turns the stored picture by orientation o; storing shown.transpose(UNDO[o]) undoes it
UNDO = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
        7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}
SHOWN = (40, 60)  # (width, height) of the picture as shown
RED = (22, 4, 36, 24)  # xyxy px of the red block in the shown picture: no flip or turn maps it onto itself


def turned_photo(path, orientation: int, shown=SHOWN, red=RED, image_format="JPEG"):
    """A photo whose picture, once its EXIF orientation is applied, is ``shown`` (w, h) with a red
    block at ``red``: the file stores it turned back, with the orientation tag."""
    width, height = shown
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[red[1]:red[3], red[0]:red[2]] = (255, 0, 0)
    stored = Image.fromarray(pixels)
    if UNDO[orientation] is not None:
        stored = stored.transpose(UNDO[orientation])
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    options = {"quality": 100, "subsampling": 0} if image_format == "JPEG" else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    stored.save(path, image_format, exif=exif.tobytes(), **options)
    with Image.open(path) as check:  # PIL shows the intended picture: the file is what a phone writes
        assert np.array_equal(np.asarray(ImageOps.exif_transpose(check).convert("RGB"))[..., 0] > 128,
                              pixels[..., 0] > 128)
    return path


def red_box(image: torch.Tensor) -> list[int]:
    """xyxy px of the red pixels of a uint8 [3, H, W] image."""
    red = (image[0] > 128) & (image[1] < 100) & (image[2] < 100)
    ys, xs = torch.nonzero(red, as_tuple=True)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def yolo_line(box, size, cls=0) -> str:
    (x1, y1, x2, y2), (width, height) = box, size
    cx, cy, w, h = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height
    return f"{cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n"


@pytest.fixture
def photo_set(tmp_path):
    """A YOLO set of one phone photo (orientation 6) labelled on the picture as shown."""
    root = tmp_path / "photos"
    turned_photo(root / "images" / "train" / "p.jpg", 6)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "p.txt").write_text(yolo_line(RED, SHOWN))
    return root


# --- 1. EXIF orientation -------------------------------------------------------------------------

@pytest.mark.parametrize("orientation", range(1, 9))
def test_labels_of_a_turned_photo_land_on_its_drawn_object(tmp_path, orientation):
    root = tmp_path / "set"
    turned_photo(root / "images" / "train" / "p.jpg", orientation)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "p.txt").write_text(yolo_line(RED, SHOWN))
    ds = YoloDetection(root, "train", names=["a"])
    assert ds.index.sizes.tolist() == [list(SHOWN)]  # the index (and its label cache) holds the shown size
    image, target = ds[0]
    assert tuple(image.shape[1:]) == SHOWN[::-1] and target["orig_size"] == SHOWN[::-1]
    assert red_box(image) == list(RED)
    np.testing.assert_allclose(target["boxes"][0].tolist(), RED, atol=1e-3)


@pytest.mark.parametrize("image_format, suffix", [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("TIFF", "tif")])
@pytest.mark.parametrize("orientation", [1, 3, 5, 6, 7, 8])
def test_header_size_is_the_size_the_decoder_shows(tmp_path, image_format, suffix, orientation):
    path = turned_photo(tmp_path / f"p.{suffix}", orientation, image_format=image_format)
    image = read_image(path)
    assert image_size(path) == (image.shape[1], image.shape[0]) == SHOWN


def test_a_turned_photo_decoded_at_a_reduced_scale_is_decoded_once(photo_set, tmp_path, count_calls):
    from detector.data import base

    path = turned_photo(tmp_path / "big.jpg", 6, shown=(800, 1200), red=(440, 80, 720, 480))
    calls = count_calls(base, "read_image")
    reduced, orig = read_resized(path, 160, image_size(path))  # 1/4 scale (OpenCV turns it too), then resized
    assert len(calls) == 1 and calls[0][1] == 4  # no second, full decode: the reduced size was as expected
    full, _ = read_resized(path, 160)
    assert orig == (1200, 800) and reduced.shape == full.shape == (160, 107, 3)
    assert np.abs(reduced.astype(int) - full.astype(int)).mean() < 2.0


@pytest.mark.parametrize("cache", ["off", "ram", "disk"])
def test_training_pipeline_sees_the_turned_picture_with_its_labels(photo_set, cache):
    ds = YoloDetection(photo_set, "train", names=["a"])
    train = TrainDataset(ds, imgsz=64, mosaic=0.0, scale=0.0, translate=0.0, fliplr=0.0, hsv_h=0.0, hsv_s=0.0,
                         hsv_v=0.0, cache=cache)
    image, target = train[0]
    np.testing.assert_allclose(target["boxes"][0].tolist(), red_box(image), atol=1.5)


def test_rect_val_batches_use_the_turned_size(photo_set):
    ds = YoloDetection(photo_set, "train", names=["a"])
    shapes = RectValDataset(ds, imgsz=64, batch_size=1).shapes
    assert shapes.tolist() == [[96, 64]]  # portrait as shown (the stored picture is landscape)


def coco_json(path, size, box=RED) -> str:
    x1, y1, x2, y2 = box
    path.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "p.jpg", "width": size[0], "height": size[1]}],
        "categories": [{"id": 5, "name": "a"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0}]}))
    return path


def test_coco_sizes_are_those_of_the_shown_picture(tmp_path):
    turned_photo(tmp_path / "img" / "p.jpg", 6)
    ds = CocoDetection(tmp_path / "img", coco_json(tmp_path / "shown.json", SHOWN))
    image, target = ds[0]
    assert red_box(image) == list(RED) and target["boxes"][0].tolist() == list(RED)


def test_coco_json_giving_the_stored_size_of_a_turned_photo_is_named(tmp_path, caplog):
    turned_photo(tmp_path / "img" / "p.jpg", 6)
    ds = CocoDetection(tmp_path / "img", coco_json(tmp_path / "stored.json", SHOWN[::-1]))
    with pytest.raises(ImageDecodeError, match=r"p\.jpg: decodes to 40x60, not the 60x40 its annotation gives \(the "
                                               r"file is stored 60x40 with EXIF orientation 6"):
        ds[0]
    train = TrainDataset(ds, imgsz=64, mosaic=0.0)
    with caplog.at_level(logging.WARNING, logger="detector"), pytest.raises(RuntimeError, match="no image could"):
        train[0]  # its only image cannot be used: named, never trained on with boxes of the other frame
    assert "EXIF orientation 6" in caplog.text


def test_predict_reads_the_turned_picture(tmp_path):
    from detector import predict

    path = turned_photo(tmp_path / "p.jpg", 8)
    assert predict.read_image is read_image
    assert red_box(torch.from_numpy(read_image(path)).permute(2, 0, 1)) == list(RED)


# --- 2. polygons and values outside [0, 1] -------------------------------------------------------

def index_of(tmp_path, label_bytes: bytes, caplog, names=("a", "b", "c")):
    """(dataset or None, the warnings) of a 200 x 100 picture with ``label_bytes`` as its label file."""
    root = tmp_path / "lines"
    (root / "images" / "train").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((100, 200, 3), np.uint8)).save(root / "images" / "train" / "x.png")
    Image.fromarray(np.zeros((100, 200, 3), np.uint8)).save(root / "images" / "train" / "y.png")
    (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
    (root / "labels" / "train" / "x.txt").write_bytes(label_bytes)
    (root / "labels" / "train" / "y.txt").write_bytes(b"1 0.5 0.5 0.5 0.5\n")
    with caplog.at_level(logging.WARNING, logger="detector"):
        return YoloDetection(root, "train", names=list(names))


def test_polygon_lines_are_read_as_their_bounding_box(tmp_path, caplog):
    ds = index_of(tmp_path, b"0 0.1 0.2 0.5 0.2 0.5 0.6 0.1 0.6\n"  # a quadrilateral (9 values)
                            b"1 0.1 0.1 0.3 0.1 0.2 0.5\n"  # a triangle (7 values): ultralytics' smallest polygon
                            b"2 0.5 0.5 0.2 0.2\n", caplog)  # a box
    np.testing.assert_allclose(ds.index.boxes_of(0), [[20, 20, 100, 60], [20, 10, 60, 50], [80, 40, 120, 60]],
                               atol=1e-4)
    assert ds.index.labels_of(0).tolist() == [0, 1, 2] and "skipped bad input" not in caplog.text


def test_lines_that_are_neither_a_box_nor_a_polygon_are_named_by_file_and_line(tmp_path, caplog):
    ds = index_of(tmp_path, b"0 0.5 0.5 0.2 0.2 0.9\n0 0.1 0.1 0.3 0.1 0.2 0.5 0.4\n1 0.5 0.5 0.2 0.2\n", caplog)
    assert ds.index.labels_of(0).tolist() == [1]
    assert "2 x label lines of 6 or an even number of values" in caplog.text and "x.txt:1, x.txt:2" in caplog.text


def test_values_outside_0_1_are_clipped_and_counted(tmp_path, caplog):
    ds = index_of(tmp_path, b"0 -0.2 0.2 0.5 0.2 0.5 1.3\n0 0.5 0.5 1.2 0.5\n0 0.5 0.5 0.2 0.2\n", caplog)
    np.testing.assert_allclose(ds.index.boxes_of(0), [[0, 20, 100, 100], [0, 25, 200, 75], [80, 40, 120, 60]])
    assert "2 x label lines with values outside [0, 1] (clipped to the image): x.txt:1, x.txt:2" in caplog.text


# --- 3. encodings --------------------------------------------------------------------------------

def test_a_byte_order_mark_is_ignored(tmp_path, caplog):
    ds = index_of(tmp_path, b"\xef\xbb\xbf0 0.5 0.5 0.2 0.2\n", caplog)
    np.testing.assert_allclose(ds.index.boxes_of(0), [[80, 40, 120, 60]])
    assert "skipped" not in caplog.text


def test_a_label_file_that_is_not_utf8_is_named_and_its_image_left_out(tmp_path, caplog):
    ds = index_of(tmp_path, "0 0.5 0.5 0.2 0.2 # café\n".encode("latin-1"), caplog)
    assert [s.path.name for s in ds.samples] == ["y.png"]  # kept, its objects would be taught as background
    assert "1 x label files that are not UTF-8 text (image left out): x.txt (byte 23)" in caplog.text


@pytest.mark.parametrize("content, message", [
    ("path: .\ntrain: images\nval: images\nnames: [café]\n".encode("latin-1"), r"not UTF-8 text \(byte 45"),
    (b"path: .\ntrain: [images\nval: images\n", "not valid YAML"),
    (b"- images\n- names\n", "expected a mapping of keys"),
    (b"train: images\nval: images\nnames: 5\n", "key 'names' must be a non-empty list or mapping, got 5"),
    (b"train: images\nval: images\nnames: [[a, b], c]\n", r"key 'names' item 0: a class name must be a string"),
    (b"train: images\nval: images\nnames: [a, null]\n", r"key 'names' item 1: a class name must be a string, got None"),
    (b"train: images\nval: images\nnames: {0: a, x: b}\n", "key 'names' must map integers to names, got the key 'x'"),
    (b"train: images\nval: images\nnames: {0: a, '0': b}\n", "key 'names' gives class 0 twice"),
    (b"path: [a]\ntrain: images\nval: images\nnames: [a]\n", "key 'path' must be a folder path"),
    (b"train: images\nval: 5\nnames: [a]\n", "key 'val' must be a path or a list of paths"),
])
def test_a_bad_data_yaml_is_a_named_error(tmp_path, content, message):
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    (tmp_path / "data.yaml").write_bytes(content)
    with pytest.raises(DataYamlError, match=re.escape(str(tmp_path / "data.yaml")) + ".*" + message):
        yolo_splits(data_yaml=str(tmp_path / "data.yaml"), cache_dir=str(tmp_path / "cache"))


# --- 4. symbolic links ---------------------------------------------------------------------------

def test_symlinked_image_folders_are_followed_and_loops_are_not(tmp_path, caplog):
    root = tmp_path / "set"
    elsewhere = tmp_path / "elsewhere"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save((root / "images" / "train").mkdir(parents=True)
                                                          or root / "images" / "train" / "b.png")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(elsewhere.mkdir() or elsewhere / "a.png")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(root / "images" / "train" / ".hidden.png")
    os.symlink(elsewhere, root / "images" / "train" / "linked")
    os.symlink(root / "images", root / "images" / "train" / "loop")  # back to a folder above it
    (root / "labels" / "train" / "linked").mkdir(parents=True)
    (root / "labels" / "train" / "linked" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")  # by the path it was found by
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/train\nnames: [a]\n")
    with caplog.at_level(logging.WARNING, logger="detector"):
        images = split_images(read_data_yaml(root / "data.yaml"), "train").images
        train = yolo_splits(data_yaml=str(root / "data.yaml"), cache_dir=str(tmp_path / "cache")).train
    assert [str(p.relative_to(root)) for p in images] == ["images/train/b.png", "images/train/linked/a.png"]
    assert "1 symbolic link(s) to a folder above them not followed (a loop)" in caplog.text
    assert [len(s.labels) for s in train.samples] == [0, 1]  # a.png's label found through the link


# --- 5. COCO jsons -------------------------------------------------------------------------------

def coco_data(**changes):
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 30, "height": 20},
                       {"id": 2, "file_name": "b.png", "width": 30, "height": 20}],
            "categories": [{"id": 4, "name": "x"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 4, "bbox": [1, 1, 10, 10], "iscrowd": 0}]}
    for key, value in changes.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    return json.dumps(data)


IMAGE = {"id": 1, "file_name": "a.png", "width": 30, "height": 20}


@pytest.mark.parametrize("text, message", [
    (coco_data(images=[IMAGE, dict(IMAGE, file_name="b.png")]), r"two images have the id 1 \(a.png and b.png\)"),
    (coco_data(images=None), "no 'images' list"),
    (coco_data(images=[{k: v for k, v in IMAGE.items() if k != "file_name"}]), "image id 1 has no 'file_name'"),
    (coco_data(images=[{k: v for k, v in IMAGE.items() if k != "id"}]), r"images\[0\] \('a.png'\) has no integer 'id'"),
    (coco_data(images=[{k: v for k, v in IMAGE.items() if k != "width"}]), r"image id 1 \(a.png\) needs a positive"),
    (coco_data(categories=None), "no 'categories' list"),
    (coco_data(annotations=[{"id": 5, "image_id": 99, "category_id": 4, "bbox": [1, 1, 5, 5]}]),
     "annotation id 5: image_id 99 is not the id of an image"),
    (coco_data(annotations=[{"id": 5, "image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5]}]),
     "annotation id 5: category_id 7 is not the id of a category"),
    ('{"images": [}', r"not valid JSON \(Expecting value"),
    (b"\xff\xfe{}".decode("latin-1"), "not valid JSON"),
    ("[1, 2]", "expected an object with 'images'"),
])
def test_a_malformed_coco_json_is_a_named_error(tmp_path, text, message):
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / name)
    (tmp_path / "ann.json").write_text(text, encoding="latin-1")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "ann.json")) + ": " + message):
        CocoDetection(tmp_path, tmp_path / "ann.json")
