"""layout=ultralytics: output0 [B, 4 + C, A] (or [B, K, 6] with NMS) and ultralytics' metadata, read
back by us, by ultralytics' own AutoBackend and by the OpenCV DNN YOLOv8 sample (each skipped
without its library), and ultralytics' own export read by us."""
import ast
import json
import os

import cv2
import numpy as np
import onnx
import pytest
import torch
from torchvision.ops import batched_nms, nms

from detector.export import OnnxDetector, OnnxLayoutError, detection_difference, export_onnx, max_difference
from detector.export.layouts import from_ultralytics
from detector.predict import load_predictor, predict_image

from tests.reference.yolov8 import ultralytics_xyxy

os.environ.setdefault("YOLO_OFFLINE", "1")  # no update checks or downloads from a test
NAMES = ["circle", "square", "triangle"]
SIZE, CONF, IOU = 128, 0.25, 0.7


@pytest.fixture(scope="module")
def model(calibrated_model):
    return calibrated_model(names=NAMES)


@pytest.fixture(scope="module")
def files(model, tmp_path_factory):
    """Fixed-size 128 px files in ultralytics' layout, raw and with NMS."""
    root = tmp_path_factory.mktemp("layouts")
    return {name: export_onnx(model, root / f"{name}.onnx", imgsz=SIZE, layout="ultralytics", nms=name == "nms",
                              conf=CONF, iou=IOU, max_det=300) for name in ("raw", "nms")}


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """A 128x128 picture (blurred noise: the calibrated net's scores spread over 0.2-0.3 on it) as a
    PNG, so that every consumer reads the same pixels with no resize or padding."""
    rng = np.random.default_rng(0)
    rgb = cv2.GaussianBlur(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), (9, 9), 3)
    path = tmp_path_factory.mktemp("image") / "image.png"
    cv2.imwrite(str(path), rgb[..., ::-1])
    return {"path": path, "rgb": rgb, "batch": rgb.transpose(2, 0, 1)[None].astype(np.float32) / 255}


def single_label(predictions: torch.Tensor, conf: float, iou: float, agnostic: bool, clip: bool) -> dict:
    """The rule YOLOv8 consumers apply to the raw layout: each anchor's best class, score > conf,
    NMS (per class, or over all classes), by score; boxes then clipped to the image (``clip``).
    predictions [A, 4 + C] xyxy px of a SIZE x SIZE image."""
    scores, labels = predictions[:, 4:].max(1)  # [A], [A]
    keep = scores > conf
    boxes, scores, labels = predictions[keep, :4], scores[keep], labels[keep]
    kept = nms(boxes, scores, iou) if agnostic else batched_nms(boxes, scores, labels, iou)
    boxes = boxes[kept].clamp(0, SIZE) if clip else boxes[kept]
    return {"boxes": boxes, "scores": scores[kept], "labels": labels[kept]}


def test_raw_layout_and_metadata_are_ultralytics(model, files, image):
    path = files["raw"]
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["images"] and [o.name for o in proto.graph.output] == ["output0"]
    anchors = sum((SIZE // s) ** 2 for s in (8, 16, 32))
    assert [d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim] == [1, 4 + 3, anchors]
    props = {p.key: p.value for p in proto.metadata_props}
    # read as ultralytics' BaseBackend.apply_metadata reads them: int() and ast.literal_eval
    assert int(props["stride"]) == 32 and int(props["batch"]) == 1 and int(props["channels"]) == 3
    assert ast.literal_eval(props["imgsz"]) == [SIZE, SIZE] and props["task"] == "detect"
    assert ast.literal_eval(props["names"]) == {0: "circle", 1: "square", 2: "triangle"}
    assert ast.literal_eval(props["end2end"]) is False
    args = ast.literal_eval(props["args"])
    assert args["nms"] is False and args["dynamic"] is False and args["batch"] == 1
    assert {"description", "author", "date", "version", "docs"} <= set(props)
    assert json.loads(props["detector"])["format"] == "detector-onnx-v1"  # ours, beside theirs
    # decoded channel-first from the head's maps, as ultralytics' graph: no transpose of [B, A, 4 + C], one
    # of the anchor points ([A, 2] -> [2, A]) only
    assert [n.op_type for n in proto.graph.node].count("Transpose") == 1
    # the tensor itself: PyTorch's predictions, transposed and as cx, cy, w, h
    raw = OnnxDetector(path).session.run(None, {"images": image["batch"]})[0]  # [1, 7, A]
    with torch.no_grad():
        ours = model(torch.from_numpy(image["batch"]))[0].numpy()  # [A, 7] xyxy
    expected = np.concatenate(((ours[:, :2] + ours[:, 2:4]) / 2, ours[:, 2:4] - ours[:, :2], ours[:, 4:]), 1)
    np.testing.assert_allclose(raw[0].T, expected, atol=0.02)  # px: float32 noise of an untrained net
    assert np.ptp(raw[0, 4:]) > 0.05 and np.ptp(raw[0, :4]) > 50  # not two constants compared


def test_our_reader_takes_both_layouts_to_the_same_detections(model, files, image):
    session = OnnxDetector(files["raw"])
    assert (session.convention, session.layout, session.fixed_size) == ("ultralytics", "raw", (SIZE, SIZE))
    assert session.metadata["names"] == NAMES and session.metadata["imgsz"] == SIZE
    assert max_difference(model, session, image["batch"]) < 0.02  # predictions, as the export check compares
    end2end = OnnxDetector(files["nms"])
    assert (end2end.convention, end2end.layout) == ("ultralytics", "nms")
    assert end2end.session.get_outputs()[0].shape == [1, 300, 6]
    assert max_difference(model, end2end, image["batch"]) < 0.02  # detections against model.predict
    raw = predict_image(load_predictor(files["raw"]), image["rgb"], SIZE, CONF, IOU)
    with_nms = predict_image(load_predictor(files["nms"]), image["rgb"], SIZE, CONF, IOU)
    assert len(raw["scores"]) > 3 and detection_difference([raw], [with_nms]) < 1e-3


def test_dynamic_file_is_right_at_another_batch_and_size(model, tmp_path):
    path = export_onnx(model, tmp_path / "dynamic.onnx", imgsz=64, dynamic=True, layout="ultralytics")
    session = OnnxDetector(path)
    assert session.session.get_outputs()[0].shape == ["batch", 7, "anchors"] and session.fixed_size is None
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        reference = model(x)  # [2, A, 7]
    got = torch.from_numpy(session(x.numpy())["predictions"])
    assert got.shape == reference.shape and (got - reference).abs().max() < 0.05


def test_end2end_rows_convert_to_our_nms_outputs():
    rows = np.zeros((1, 4, 6), np.float32)
    rows[0, 1] = [1, 2, 3, 4, 0.9, 2]
    rows[0, 3] = [5, 6, 7, 8, 0.5, 0]
    out = from_ultralytics(rows, end2end=True)
    assert out["num_dets"].tolist() == [2] and out["labels"].tolist() == [[2, 0, -1, -1]]
    assert out["scores"][0, :2].tolist() == pytest.approx([0.9, 0.5]) and out["boxes"][0, 1].tolist() == [5, 6, 7, 8]


def test_unknown_layout_and_foreign_tasks_are_refused(model, tmp_path, files):
    with pytest.raises(ValueError, match="layout=yolo is not a layout; choose ours or ultralytics"):
        export_onnx(model, tmp_path / "m.onnx", imgsz=64, layout="yolo")
    proto = onnx.load(str(files["raw"]))
    for entry in proto.metadata_props:
        if entry.key == "task":
            entry.value = "segment"
    onnx.save(proto, str(tmp_path / "segment.onnx"))
    with pytest.raises(OnnxLayoutError, match="segment.onnx is not a detection file in ultralytics' layout: its task"):
        OnnxDetector(tmp_path / "segment.onnx")


# ------------------------------------------------------------------------------ ecosystem consumers
def test_ultralytics_predicts_from_our_file_what_we_predict(calibrated_model, files, image, tmp_path):
    """ultralytics' own loader (AutoBackend: metadata, layout, its letterbox and NMS) on our files.

    Its predict keeps one class per box (multi_label=False), ours every class above conf, so the
    3-class raw file is held to that rule applied to PyTorch's output; a 1-class raw file and the
    end2end (nms=true) file are held to our predict itself."""
    ultralytics = pytest.importorskip("ultralytics", reason="ultralytics is not installed (pip install .[compat])")

    def theirs(path):
        result = ultralytics.YOLO(str(path), task="detect").predict(str(image["path"]), conf=CONF, iou=IOU,
                                                                   imgsz=SIZE, verbose=False)[0]
        assert result.names == dict(enumerate(load_predictor(path).names))  # read from our metadata
        return {"boxes": result.boxes.xyxy, "scores": result.boxes.conf, "labels": result.boxes.cls.long()}

    one_class = calibrated_model(names=["thing"])
    files = {**files, "one_class": export_onnx(one_class, tmp_path / "one.onnx", imgsz=SIZE, layout="ultralytics")}
    for name in ("one_class", "nms"):
        ours = predict_image(load_predictor(files[name]), image["rgb"], SIZE, CONF, IOU)
        got = theirs(files[name])
        assert len(got["scores"]) == len(ours["scores"]) > 3, name
        assert detection_difference([ours], [got]) < 1e-3, name
    model = calibrated_model(names=NAMES)
    with torch.no_grad():
        predictions = model(torch.from_numpy(image["batch"]))[0]  # [A, 7]
    reference = single_label(predictions, CONF, IOU, agnostic=False, clip=True)
    got = theirs(files["raw"])
    assert len(got["scores"]) == len(reference["scores"]) > 3
    assert detection_difference([reference], [got]) < 1e-3


def opencv_yolov8_sample(onnx_model: str, input_image: str, imgsz: int) -> list[dict]:
    """The post-processing of ultralytics' examples/YOLOv8-OpenCV-ONNX-Python/main.py, as written
    there (with its 640 as ``imgsz``): OpenCV DNN runs the file, the output [1, 84, 8400] is
    transposed, each row's best class kept above 0.25, cv2.dnn.NMSBoxes(0.25, 0.45, 0.5)."""
    model = cv2.dnn.readNetFromONNX(onnx_model)
    original_image = cv2.imread(input_image)
    height, width, _ = original_image.shape
    length = max((height, width))
    image = np.zeros((length, length, 3), np.uint8)
    image[0:height, 0:width] = original_image
    scale = length / imgsz
    blob = cv2.dnn.blobFromImage(image, scalefactor=1 / 255, size=(imgsz, imgsz), swapRB=True)
    model.setInput(blob)
    outputs = model.forward()
    outputs = np.array([cv2.transpose(outputs[0])])
    rows = outputs.shape[1]
    boxes, scores, class_ids = [], [], []
    for i in range(rows):
        classes_scores = outputs[0][i][4:]
        # the sample unpacks (x, maxClassIndex): OpenCV 4 reads a 1-D array as a column, OpenCV 5
        # as a row (index in x, the sample's class would always be 0 there); either way, the index
        (min_score, max_score, min_class_loc, max_class_loc) = cv2.minMaxLoc(classes_scores)
        max_class_index = max(max_class_loc)
        if max_score >= 0.25:
            box = [outputs[0][i][0] - (0.5 * outputs[0][i][2]), outputs[0][i][1] - (0.5 * outputs[0][i][3]),
                   outputs[0][i][2], outputs[0][i][3]]
            boxes.append(box)
            scores.append(max_score)
            class_ids.append(max_class_index)
    result_boxes = cv2.dnn.NMSBoxes(boxes, scores, 0.25, 0.45, 0.5)
    detections = []
    for index in np.asarray(result_boxes).flatten():
        box = boxes[index]
        detections.append({"class_id": class_ids[index], "confidence": scores[index],
                           "box": [round(v * scale, 4) for v in (box[0], box[1], box[0] + box[2], box[1] + box[3])]})
    return detections


def test_opencv_dnn_yolov8_sample_reads_our_file(model, files, image):
    """A consumer that parses the raw tensor itself, with its own runtime (OpenCV DNN, not onnxruntime)."""
    if not hasattr(cv2, "dnn"):
        pytest.skip("this OpenCV build has no dnn module")
    detections = opencv_yolov8_sample(str(files["raw"]), str(image["path"]), SIZE)
    got = {"boxes": torch.tensor([d["box"] for d in detections]).reshape(-1, 4),
           "scores": torch.tensor([d["confidence"] for d in detections]),
           "labels": torch.tensor([d["class_id"] for d in detections])}
    with torch.no_grad():
        predictions = model(torch.from_numpy(image["batch"]))[0]  # [A, 7]
    reference = single_label(predictions, CONF, 0.45, agnostic=True, clip=False)  # the sample does not clip
    assert len(got["scores"]) == len(reference["scores"]) > 3
    assert detection_difference([reference], [got]) < 0.05  # OpenCV's float path differs from PyTorch's by ~1e-2 px


def test_we_read_ultralytics_own_export(tmp_path, monkeypatch, image):
    ultralytics = pytest.importorskip("ultralytics", reason="ultralytics is not installed (pip install .[compat])")
    monkeypatch.chdir(tmp_path)  # its exporter writes next to the yaml's name, in the working folder
    yolo = ultralytics.YOLO("yolov8n.yaml")
    path = yolo.export(format="onnx", imgsz=64, simplify=False, verbose=False)
    session = OnnxDetector(path)
    assert (session.convention, session.layout, session.fixed_size) == ("ultralytics", "raw", (64, 64))
    assert session.metadata["names"] == [str(i) for i in range(80)] and session.metadata["imgsz"] == 64
    predictor = load_predictor(path)
    assert predictor.imgsz == 64 and len(predictor.names) == 80
    x = torch.rand(1, 3, 64, 64)
    torch_model = yolo.model.eval()
    with torch.no_grad():
        raw = torch_model(x)
        reference = ultralytics_xyxy(raw[0] if isinstance(raw, (list, tuple)) else raw)  # [1, A, 84]
    got = torch.from_numpy(session(x.numpy())["predictions"])
    assert got.shape == reference.shape and (got - reference).abs().max() < 1e-3
