"""ONNX export: onnxruntime against PyTorch (raw and NMS layouts), dynamic axes, checker, metadata."""
import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from detector.export import (
    DecodedDetector,
    DetectorWithNMS,
    OnnxDetector,
    OnnxLayoutError,
    check_onnx,
    detection_difference,
    export_onnx,
    max_difference,
    nms_outputs_to_detections,
    read_metadata,
)
from detector.models.layers import Conv

NAMES = ["circle", "square", "triangle"]
CONF, IOU, MAX_DET = 0.25, 0.7, 20
# detections: same boxes, labels and order; coordinates (hundreds of px on an untrained net) within
# float32 noise, scores within 1e-4
DETECTION_TOLERANCE = 0.05


def assert_as_accurate_as_pytorch(model, images: torch.Tensor, onnx_out: np.ndarray) -> None:
    """onnxruntime is at least as close to the exact (float64) output as PyTorch's own float32 run.

    An untrained net amplifies float32 rounding (PyTorch float32 and float64 differ by ~1e-2 px
    on boxes of several hundred px), so a fixed tolerance would test the weights, not the export.
    """
    with torch.no_grad():
        exact = copy.deepcopy(model).double()(images.double()).numpy()
        single = model(images).numpy()
    pytorch_error = np.abs(single - exact).max()
    assert np.abs(onnx_out - exact).max() <= 2 * pytorch_error + 1e-4
    assert np.abs(onnx_out - single).max() <= 3 * pytorch_error + 1e-4


@pytest.fixture(scope="module")
def model(calibrated_model):
    return calibrated_model(names=NAMES)


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return {"1x64x64": torch.rand(1, 3, 64, 64), "2x96x128": torch.rand(2, 3, 96, 128)}


@pytest.fixture(scope="module")
def raw_file(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("raw") / "model.onnx", imgsz=64, dynamic=True)


@pytest.fixture(scope="module")
def nms_file(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("nms") / "model.onnx", imgsz=64, dynamic=True, nms=True,
                       conf=CONF, iou=IOU, max_det=MAX_DET)


def anchors(height, width):
    return sum((height // s) * (width // s) for s in (8, 16, 32))


def test_fixed_size_predictions_match_pytorch(model, tmp_path):
    path = export_onnx(model, tmp_path / "fixed.onnx", imgsz=96)
    session = OnnxDetector(path)
    assert session.layout == "raw" and session.fixed_size == (96, 96) and session.fixed_batch == 1
    x = torch.rand(1, 3, 96, 96)
    out = session(x.numpy())["predictions"]
    assert out.shape == (1, anchors(96, 96), 4 + 3)
    assert_as_accurate_as_pytorch(model, x, out)
    assert np.ptp(out[..., 4:]) > 0.1 and np.ptp(out[..., :4]) > 50  # not a comparison of two constants
    assert [p.name for p in tmp_path.iterdir()] == ["fixed.onnx"]  # no temporary file left behind


@pytest.mark.parametrize("shape", ["1x64x64", "2x96x128"])
def test_dynamic_batch_and_size_match_pytorch(model, raw_file, images, shape):
    x = images[shape]
    out = OnnxDetector(raw_file)(x.numpy())["predictions"]
    assert out.shape == (x.shape[0], anchors(*x.shape[2:]), 7)
    assert_as_accurate_as_pytorch(model, x, out)
    with torch.no_grad():
        reference = model(x)
    assert max_difference(model, OnnxDetector(raw_file), x.numpy()) == pytest.approx(
        (torch.from_numpy(out) - reference).abs().max().item())
    # anchors are built in the graph: the last anchor centre sits half a stride-32 cell from the corner
    h, w = x.shape[2:]
    centre = (out[0, -1, :2] + out[0, -1, 2:4]) / 2
    assert abs(centre[0] - (w - 16)) < 64 and abs(centre[1] - (h - 16)) < 64


@pytest.mark.parametrize("shape", ["1x64x64", "2x96x128"])
def test_nms_graph_matches_predict(model, nms_file, images, shape):
    x = images[shape]
    out = OnnxDetector(nms_file)(x.numpy())
    batch = x.shape[0]
    assert out["boxes"].shape == (batch, MAX_DET, 4) and out["scores"].shape == (batch, MAX_DET)
    assert out["labels"].shape == (batch, MAX_DET) and out["labels"].dtype == np.int64
    assert out["num_dets"].shape == (batch,)
    reference = model.predict(x, conf=CONF, iou=IOU, max_det=MAX_DET)
    assert out["num_dets"].tolist() == [len(r["scores"]) for r in reference]
    assert out["num_dets"].sum() > 0
    assert detection_difference(reference, nms_outputs_to_detections(out)) < DETECTION_TOLERANCE
    for boxes, scores, labels, count in zip(out["boxes"], out["scores"], out["labels"], out["num_dets"]):
        assert (np.diff(scores[:count]) <= 0).all() and (scores[:count] > CONF).all()
        assert (labels[count:] == -1).all() and (scores[count:] == 0).all() and (boxes[count:] == 0).all()


def test_nms_caps_at_max_det(model, tmp_path, images):
    x = images["2x96x128"]
    full = model.predict(x, conf=CONF, iou=IOU, max_det=300)
    assert min(len(r["scores"]) for r in full) > 3
    path = export_onnx(model, tmp_path / "top3.onnx", imgsz=64, dynamic=True, nms=True, conf=CONF, iou=IOU, max_det=3)
    out = OnnxDetector(path)(x.numpy())
    assert out["num_dets"].tolist() == [3, 3]
    reference = model.predict(x, conf=CONF, iou=IOU, max_det=3)
    assert detection_difference(reference, nms_outputs_to_detections(out)) < DETECTION_TOLERANCE
    top = [r["scores"][:3].numpy() for r in full]
    assert np.allclose(out["scores"], np.stack(top), atol=1e-5)


def test_pytorch_side_of_nms_module_matches_predict(model, images):
    """The torch forward of the NMS module (what the tracer runs) is itself the same computation."""
    x = images["2x96x128"]
    module = DetectorWithNMS(DecodedDetector(model), conf=CONF, iou=IOU, max_det=MAX_DET)
    with torch.no_grad():
        boxes, scores, labels, num_dets = module(x)
    got = [{"boxes": b[:n], "scores": s[:n], "labels": l[:n]} for b, s, l, n in zip(boxes, scores, labels, num_dets)]
    reference = model.predict(x, conf=CONF, iou=IOU, max_det=MAX_DET)
    assert detection_difference(reference, got) < 1e-5


def test_checker_metadata_and_declared_shapes(model, raw_file, nms_file):
    check_onnx(raw_file)
    check_onnx(nms_file)
    raw, nms = read_metadata(raw_file), read_metadata(nms_file)
    for meta in (raw, nms):
        assert meta["format"] == "detector-onnx-v1" and meta["names"] == NAMES and meta["category_ids"] == [1, 2, 3]
        assert meta["imgsz"] == 64 and meta["stride"] == 32 and meta["strides"] == [8, 16, 32]
        assert meta["num_classes"] == 3 and meta["dynamic"] is True
    assert raw["nms"] is False and "conf" not in raw
    assert nms["nms"] is True and (nms["conf"], nms["iou"], nms["max_det"]) == (CONF, IOU, MAX_DET)
    graph = onnx.load(str(nms_file)).graph
    assert [o.name for o in graph.output] == ["boxes", "scores", "labels", "num_dets"]
    assert any(node.op_type == "NonMaxSuppression" for node in graph.node)
    dims = [[d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in graph.output]
    assert dims == [["batch", MAX_DET, 4], ["batch", MAX_DET], ["batch", MAX_DET], ["batch"]]
    raw_graph = onnx.load(str(raw_file)).graph
    assert [i.name for i in raw_graph.input] == ["images"] and [o.name for o in raw_graph.output] == ["predictions"]


def test_head_maps_go_channels_last_straight_from_their_convolutions(raw_file):
    """Each of the six last head convolutions feeds a Transpose to NHWC (then a reshape): no planar
    reshape first, which cost OpenVINO's INT8 graph a layout reorder of every map."""
    graph = onnx.load(str(raw_file)).graph
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    head_convs = [n for n in graph.node if n.op_type == "Conv" and "branches" in n.name
                  and not any(c.op_type == "Mul" or c.op_type == "Sigmoid" for c in consumers.get(n.output[0], []))]
    assert len(head_convs) == 6  # the box and class branches' last 1x1 of 3 levels (no SiLU after them)
    for conv in head_convs:
        (after,) = consumers[conv.output[0]]
        assert after.op_type == "Transpose" and list(after.attribute[0].ints) == [0, 2, 3, 1], conv.name


def test_export_leaves_the_model_untouched(model, tmp_path):
    model.train()
    try:
        export_onnx(model, tmp_path / "m.onnx", imgsz=64)
        assert model.training
        assert all(not isinstance(m.bn, torch.nn.Identity) for m in model.modules() if isinstance(m, Conv))
    finally:
        model.eval()


def test_export_rejects_a_size_that_is_not_a_multiple_of_32(model, tmp_path):
    with pytest.raises(ValueError, match="multiple of 32"):
        export_onnx(model, tmp_path / "m.onnx", imgsz=100)


def test_a_file_of_another_layout_is_refused(tmp_path):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "other", [x], [y])
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(OnnxLayoutError, match="expected input \\['images'\\]"):
        OnnxDetector(path)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(OnnxLayoutError, match="cannot load"):
        OnnxDetector(tmp_path / "junk.onnx")


def test_an_unknown_int8_preset_is_named_before_anything_is_written(tmp_path):
    from omegaconf import OmegaConf

    from detector.engine.deploy import ExportError, deploy_from_config

    cfg = OmegaConf.create({"format": "openvino", "int8": True, "int8_preset": "fast", "output": None})
    message = "^int8_preset=fast is not a quantization preset; choose mixed or performance$"
    with pytest.raises(ExportError, match=message):
        deploy_from_config(cfg, None, {}, tmp_path, "best")  # refused before openvino is even looked for
    assert not list(tmp_path.iterdir())
