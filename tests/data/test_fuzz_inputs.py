"""Property tests over the files users bring: YOLO label lines, data.yaml files and COCO jsons.

Each reading gives the value of a small reference reading written here from the rules (not from
the code), or a ValueError naming the file; never another exception. Bounded to a few seconds each."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from detector.data import CocoDetection
from detector.data.base import Problems
from detector.data.data_yaml import DataYamlError, read_data_yaml, split_images
from detector.data.yolo import parse_label_lines, read_yolo_index

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WIDTH, HEIGHT, CLASSES = 256, 128, 3
names = itertools.count()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A folder with images/a.png and images/b.png (32 x 16), shared by the examples."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "images").mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((16, 32, 3), np.uint8)).save(root / "images" / name)
    return root


# --- YOLO label lines ----------------------------------------------------------------------------

def reference_lines(text: str) -> tuple[list[tuple[int, list[float]]], set[int]]:
    """The rules of a YOLO label file, read plainly: ([(class, xyxy px)] kept, numbers of the lines
    that carry anything). 5 values: a box; 1 + 2k values (k >= 3): a polygon's bounding box; every
    value clipped to [0, 1] (a box after it is made xyxy); kept when finite, of positive size, of a
    known class and at least 1 px wide and high once clipped to the picture."""
    kept, lines = [], set()
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if tokens:
            lines.add(number)
        n = len(tokens)
        if not (n == 5 or (n >= 7 and n % 2 == 1)):
            continue
        try:
            label, values = int(float(tokens[0])), [float(t) for t in tokens[1:]]
        except (ValueError, OverflowError):
            continue
        if not all(math.isfinite(v) for v in values) or not 0 <= label < CLASSES:
            continue
        if n == 5:
            cx, cy, w, h = values
            if w <= 0 or h <= 0:
                continue
            box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        else:
            xs, ys = np.clip(values[0::2], 0, 1), np.clip(values[1::2], 0, 1)
            box = [xs.min(), ys.min(), xs.max(), ys.max()]
            if box[2] <= box[0] or box[3] <= box[1]:
                continue
        px = np.clip(np.array(box) * [WIDTH, HEIGHT, WIDTH, HEIGHT], 0, [WIDTH, HEIGHT, WIDTH, HEIGHT])
        if px[2] - px[0] >= 1 and px[3] - px[1] >= 1:
            kept.append((label, px.tolist()))
    return kept, lines


# coordinates on a 1/64 grid (exact in binary and in decimal), beyond [0, 1] too, and a few specials
coordinate = st.one_of(st.integers(-32, 96).map(lambda k: repr(k / 64)),
                       st.sampled_from(["nan", "inf", "-inf", "1e999", "0", "1", "x", "0x1", "1_0", "٣"]))
class_token = st.one_of(st.integers(-1, 4).map(str), st.sampled_from(["1.0", "2.7", "nan", "inf", "a", "-0.5"]))
numeric_line = st.builds(lambda c, values: " ".join([c, *values]), class_token, st.lists(coordinate, max_size=12))
polygon_line = st.builds(lambda c, points: " ".join([c, *itertools.chain.from_iterable(points)]), class_token,
                         st.lists(st.tuples(coordinate, coordinate), min_size=3, max_size=6))
any_line = st.one_of(numeric_line, polygon_line, st.text(max_size=30).map(lambda t: t.replace("\r", " ")))
label_text = st.builds(lambda lines, sep: sep.join(lines), st.lists(any_line, max_size=8),
                       st.sampled_from(["\n", "\r\n"]))


@FUZZ
@given(label_text)
def test_label_lines_read_as_the_reference_and_every_line_is_kept_or_named(text):
    problems = Problems("fuzz")
    boxes, labels, numbers = parse_label_lines(text, "x.txt", WIDTH, HEIGHT, CLASSES, problems)
    kept, lines = reference_lines(text)
    assert labels.tolist() == [label for label, _ in kept]
    np.testing.assert_allclose(boxes.reshape(-1, 4), np.array([b for _, b in kept]).reshape(-1, 4), atol=1e-3)
    named = {int(place.rsplit(":", 1)[1]) for kind, places in problems.items.items() if "clipped" not in kind
             for place in places}
    assert named.isdisjoint(numbers.tolist()) and named | set(numbers.tolist()) == lines  # read, or named


@FUZZ
@given(st.binary(max_size=80) | label_text.map(lambda t: ("\ufeff" + t).encode()))
def test_label_file_bytes_give_an_index_or_name_the_file(folder, data):
    label = folder / "labels" / f"bytes{next(names)}.txt"
    label.parent.mkdir(exist_ok=True)
    label.write_bytes(data)
    index, problems, _ = read_yolo_index([folder / "images" / "a.png"], [label], CLASSES)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        assert len(index) == 0 and any(place.startswith(label.name) for place in
                                       problems["label files that are not UTF-8 text (image left out)"])
        return
    kept, _ = reference_lines(text)  # a.png is 32 x 16, not the reference's WIDTH x HEIGHT: labels only
    assert len(index) == 1 and len(index.labels) <= len(kept)


# --- data.yaml -----------------------------------------------------------------------------------

safe_text = st.text(alphabet="abgimsx._ ", max_size=12).filter(lambda t: ".." not in t)  # no walk outside the folder
scalar = st.one_of(st.none(), st.booleans(), st.integers(-3, 5), st.floats(allow_nan=False, width=32), safe_text,
                   st.sampled_from(["images", "images/a.png", "missing", "", "."]))
value = st.recursive(scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.one_of(st.integers(-1, 3), safe_text), inner, max_size=3), max_leaves=6)
any_yaml = st.dictionaries(st.sampled_from(["path", "train", "val", "test", "names", "nc", "validation"]),
                           value, max_size=6)
split = st.sampled_from(["images", "images/a.png", ["images", "images/b.png"], "./images"] * 3
                        + ["missing", ["images", 3]])
plausible_yaml = st.fixed_dictionaries(  # the usual keys, each at times of another kind
    {"train": split, "val": split,
     "names": st.one_of(st.lists(safe_text | st.integers(0, 3), min_size=1, max_size=3),
                        st.lists(safe_text, min_size=1, max_size=3),
                        st.dictionaries(st.integers(0, 2), safe_text, min_size=1), value)},
    optional={"path": st.sampled_from([".", "", ".", "missing"]) | value, "nc": st.integers(0, 3), "test": split})
yaml_content = st.one_of(any_yaml, plausible_yaml, plausible_yaml)


def reference_names(content: dict) -> list[str] | None:
    """The class names a data.yaml gives when they are plainly valid: a non-empty list of strings,
    or a mapping of 0..n-1 to strings; None when the reading may refuse them."""
    raw = content.get("names")
    if isinstance(raw, list) and raw and all(isinstance(n, str) for n in raw):
        return raw
    if isinstance(raw, dict) and raw and sorted(raw, key=str) == list(range(len(raw))) and \
            all(isinstance(n, str) for n in raw.values()):
        return [raw[i] for i in range(len(raw))]
    return None


def write_yaml(folder, data: bytes):
    file = folder / f"data{next(names)}.yaml"
    file.write_bytes(data)
    return file


@FUZZ
@given(yaml_content)
def test_data_yaml_reads_as_the_reference_or_names_the_file(folder, content):
    file = write_yaml(folder, yaml.safe_dump(content, allow_unicode=True).encode())
    try:
        data = read_data_yaml(file)
        images = {key: split_images(data, key).images for key in data.splits}
    except DataYamlError as error:
        assert str(file) in str(error)
        event("refused")
        return
    event("read")
    expected = reference_names(content)
    if expected is not None:
        assert data.names == expected
    assert all(isinstance(n, str) for n in data.names) and data.names
    assert all(images[key] for key in images) and {"train", "val"} <= set(data.splits)


@FUZZ
@given(st.binary(max_size=120) | st.text(max_size=120).map(str.encode))
def test_any_bytes_as_a_data_yaml_read_or_name_the_file(folder, data):
    file = write_yaml(folder, data)
    try:
        read_data_yaml(file)  # (the entries are only checked to exist: no folder is walked)
    except DataYamlError as error:
        assert str(file) in str(error)


# --- COCO jsons ----------------------------------------------------------------------------------

json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-2, 3), st.floats(-5, 40, allow_nan=False),
                        st.sampled_from(["a.png", "b.png", "c.png", "", "x/y.png", "\ud800", 2**70]))
json_value = st.recursive(json_scalar, lambda inner: st.lists(inner, max_size=4), max_leaves=5)


def is_int(v) -> bool:
    return type(v) is int and -2**63 <= v < 2**63


def record(fields: dict):
    """A dict with every field of its usual kind, most often intact, else one field dropped or
    given another value (``json_value``)."""
    def damage(drawn):
        fields, key, drop, other = drawn
        if key is not None:
            fields.pop(key) if drop else fields.__setitem__(key, other)
        return fields

    return st.tuples(st.fixed_dictionaries(fields), st.sampled_from([None] * 20 + list(fields)), st.booleans(),
                     json_value).map(damage)


image_record = record({"id": st.integers(1, 3), "file_name": st.sampled_from(["a.png", "b.png", "c.png"]),
                       "width": st.just(32), "height": st.sampled_from([16, 16.0])})
category_record = record({"id": st.integers(1, 2), "name": st.sampled_from(["cat", "dog"])})


@st.composite
def coco_object(draw):
    """A COCO object whose annotations mostly point at its own images and categories."""
    images = draw(st.lists(image_record, min_size=1, max_size=3, unique_by=lambda r: str(r.get("id"))))
    categories = draw(st.lists(category_record, min_size=1, max_size=2, unique_by=lambda r: str(r.get("id"))))
    image_ids = [r["id"] for r in images if is_int(r.get("id"))] or [1]
    category_ids = [r["id"] for r in categories if is_int(r.get("id"))] or [1]
    annotation = record({"id": st.integers(1, 50), "image_id": st.sampled_from(image_ids),
                         "category_id": st.sampled_from(category_ids),
                         "bbox": st.lists(st.integers(-4, 40), min_size=4, max_size=4),
                         "iscrowd": st.sampled_from([0, 1])})
    data = {"images": images, "categories": categories}
    if draw(st.integers(0, 4)):  # at times no annotations at all: every image background
        data["annotations"] = draw(st.lists(annotation, max_size=5))
    return data


coco_content = st.one_of(coco_object(), coco_object(), coco_object(), coco_object(),  # mostly one object, at times
                         # broken whole
                         coco_object().map(lambda d: {k: v for k, v in d.items() if k != "images"}),
                         coco_object().map(lambda d: dict(d, images=d["images"] * 2)),  # every id twice
                         json_value)


def reference_coco(data) -> tuple[int, int] | None:
    """(images on disk, boxes kept) of a plainly valid COCO json, None for one that must be refused."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or \
            not isinstance(data.get("categories"), list) or not isinstance(data.get("annotations", []), list):
        return None
    images, categories, anns = data["images"], data["categories"], data.get("annotations", [])
    if not all(isinstance(r, dict) for r in images + categories + anns):
        return None
    for im in images:
        if not (is_int(im.get("id")) and isinstance(im.get("file_name"), str) and im["file_name"]
                and "\ud800" not in im["file_name"]):
            return None
        if not all(type(im.get(k)) in (int, float) and float(im[k]).is_integer() and 0 < im[k] < 2**31
                   for k in ("width", "height")):
            return None
    ids = [im["id"] for im in images]
    cats = [c.get("id") for c in categories]
    if len(set(ids)) < len(ids) or not all(is_int(c) for c in cats) or len(set(cats)) < len(cats):
        return None
    if not all(type(c.get("name")) in (str, int, float) for c in categories):
        return None
    sizes = {im["id"]: (im["width"], im["height"]) for im in images}
    boxes = 0
    for a in anns:
        if not (is_int(a.get("id")) and is_int(a.get("image_id")) and a["image_id"] in sizes
                and is_int(a.get("category_id")) and a["category_id"] in cats
                and type(a.get("iscrowd", 0)) in (int, float, bool) and a.get("iscrowd", 0) in (0, 1)):
            return None
    on_disk = {im["id"] for im in images if im["file_name"] in ("a.png", "b.png")}
    for a in anns:
        bbox = a.get("bbox")
        if a.get("iscrowd", 0) or a["image_id"] not in on_disk or not isinstance(bbox, list) or len(bbox) != 4 \
                or not all(type(v) in (int, float) for v in bbox):
            continue
        width, height = sizes[a["image_id"]]
        x1, y1 = np.clip([bbox[0], bbox[1]], 0, [width, height])
        x2, y2 = np.clip([bbox[0] + bbox[2], bbox[1] + bbox[3]], 0, [width, height])
        boxes += bool(x2 - x1 >= 1 and y2 - y1 >= 1)
    return len(on_disk), boxes


@FUZZ
@given(coco_content)
def test_coco_json_reads_as_the_reference_or_names_the_json(folder, data):
    ann = folder / f"ann{next(names)}.json"  # a file of its own: its label cache is never another's
    ann.write_text(json.dumps(data))
    expected = reference_coco(data)
    try:
        ds = CocoDetection(folder / "images", ann)
    except ValueError as error:
        assert str(ann) in str(error)
        assert expected is None or expected[0] == 0, error  # refused only when plainly invalid, or no image on disk
        event("refused")
        return
    event(f"read, {'with' if len(ds.index.boxes) else 'without'} boxes")
    assert expected is not None and (len(ds), len(ds.index.boxes)) == expected
