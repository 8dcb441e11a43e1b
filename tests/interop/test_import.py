"""Importing an ultralytics-written checkpoint: parity with ultralytics' own outputs (stored with the
fixture, so no ultralytics is needed), the 8.0 module layout, and refusals of other tasks and
architectures before any mapping."""
import re

import numpy as np
import pytest
import torch

from detector.engine.checkpoint import CheckpointError, load_checkpoint
from detector.interop import load_ultralytics
from detector.interop import ultralytics as interop
from detector.models.postprocess import postprocess

# What ultralytics 8.0.40 pickles for a yolov8n (observed in a file it wrote): one flat modules package.
V80_GLOBALS = {"ultralytics.nn.modules.Bottleneck", "ultralytics.nn.modules.C2f", "ultralytics.nn.modules.Concat",
               "ultralytics.nn.modules.Conv", "ultralytics.nn.modules.DFL", "ultralytics.nn.modules.Detect",
               "ultralytics.nn.modules.SPPF", "ultralytics.nn.tasks.DetectionModel"}
V80_PATHS = {b"cultralytics.nn.modules.conv\n": b"cultralytics.nn.modules\n",
             b"cultralytics.nn.modules.block\n": b"cultralytics.nn.modules\n",
             b"cultralytics.nn.modules.head\n": b"cultralytics.nn.modules\n"}


@pytest.fixture(scope="module")
def imported(ul_checkpoint):
    return load_ultralytics(ul_checkpoint)


def run(model, images_uint8: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    with torch.no_grad():
        return model.to(dtype)(torch.from_numpy(images_uint8).to(dtype) / 255)


def test_report_says_what_was_read(imported):
    model, report = imported
    assert report["model_args"] == {"arch": "yolov8", "scale": "n", "num_classes": 80, "reg_max": 16, "cls_width": None}
    assert report["weights"] == "model"  # strip_optimizer moved the EMA weights there and dropped 'ema'
    assert (report["mapped"], report["total"]) == (354, 355)
    assert report["unmapped"] == ["model.22.dfl.conv.weight"]  # the constant DFL ramp, verified on import
    assert report["version"] == "8.4.190" and report["imgsz"] == 160
    assert model.names[:3] == ["person", "bicycle", "car"] and len(model.names) == 80
    assert not model.training and all(p.dtype == torch.float32 for p in model.parameters())  # fp16 -> fp32


def test_raw_output_equals_ultralytics(ul_checkpoint, ul_expected):
    """In float64 (the stored reference) the two nets agree to rounding: the mapping is exact."""
    model, _ = load_ultralytics(ul_checkpoint)
    predictions = run(model, ul_expected["images"], torch.float64)  # [1, A, 4 + 80]
    expected = torch.from_numpy(ul_expected["predictions"])
    assert predictions.shape == expected.shape == (1, 525, 84)  # 20x20 + 10x10 + 5x5 anchors
    assert (predictions - expected).abs().max() < 1e-6
    assert expected[..., 4:].max() > 0.5  # a trained model: scores well above the prior


def test_float32_output_is_as_close_to_the_reference_as_ultralytics_own(imported, ul_expected):
    """fp32 rounding moves this net's largest boxes (stride 32, ~470 px) by a few 1e-3 px, in
    ultralytics as here: ours must be no further from the float64 reference than ultralytics' fp32."""
    predictions = run(imported[0], ul_expected["images"]).double()
    error = (predictions - torch.from_numpy(ul_expected["predictions"])).abs()
    assert error[..., 4:].max() < 1e-4  # scores
    assert error[..., :4].max() < max(1e-4, 2 * float(ul_expected["fp32_error"]))


def test_nms_equals_ultralytics(ul_checkpoint, ul_expected):
    model, _ = load_ultralytics(ul_checkpoint)
    det = postprocess(run(model, ul_expected["images"], torch.float64), conf=float(ul_expected["conf"]),
                      iou=float(ul_expected["iou"]))[0]
    ref = torch.from_numpy(ul_expected["nms"])  # [N, 6] xyxy, score, class (multi-label, as ours)
    assert len(det["scores"]) == len(ref) > 0
    ours = torch.cat((det["boxes"], det["scores"][:, None], det["labels"][:, None].double()), 1)
    ours, ref = ours[ours[:, 4].argsort(descending=True)], ref[ref[:, 4].argsort(descending=True)]
    assert torch.equal(ours[:, 5], ref[:, 5])
    assert (ours[:, :4] - ref[:, :4]).abs().max() < 1e-6 and (ours[:, 4] - ref[:, 4]).abs().max() < 1e-9


def test_load_checkpoint_detects_the_foreign_format(ul_checkpoint, imported, ul_expected):
    model, config = load_checkpoint(ul_checkpoint)
    assert config == {"imgsz": 160, "source": "ultralytics",
                      "model": {"arch": "yolov8", "scale": "n", "num_classes": 80, "reg_max": 16, "cls_width": None}}
    assert model.names == imported[0].names
    assert torch.equal(run(model, ul_expected["images"]), run(imported[0], ul_expected["images"]))


def test_ultralytics_8_0_module_paths_load_the_same(tmp_path, ul_checkpoint, rewrite_pickle, imported, ul_expected):
    old = rewrite_pickle(ul_checkpoint, tmp_path / "v80.pt", V80_PATHS)
    found = {g for g in interop.pickled_globals(old) if g.startswith("ultralytics.")}
    assert found == V80_GLOBALS
    model, report = load_ultralytics(old)
    assert report["mapped"] == 354
    assert torch.equal(run(model, ul_expected["images"]), run(imported[0], ul_expected["images"]))


def test_ema_is_preferred_over_model(monkeypatch, ul_checkpoint):
    from detector.interop.unpickler import restricted_load

    model_record = restricted_load(ul_checkpoint)["model"]
    ema_record = restricted_load(ul_checkpoint)["model"]
    bias = ema_record.tensors()["model.22.cv3.0.2.bias"]
    bias.fill_(-3.0)  # the record holds the tensor itself: this changes the 'ema' weights only
    monkeypatch.setattr(interop, "restricted_load",
                        lambda path: {"model": model_record, "ema": ema_record, "train_args": {"imgsz": 320}})
    model, report = load_ultralytics(ul_checkpoint)
    assert report["weights"] == "ema" and report["imgsz"] == 320
    assert torch.all(model.head.cls_branches[0][2].bias == -3.0)


@pytest.mark.parametrize("replacements, what", [
    ({b"\nDetectionModel\n": b"\nSegmentationModel\n"}, "a segmentation model"),
    ({b"\nDetectionModel\n": b"\nPoseModel\n"}, "a pose-estimation model"),
    ({b"\nDetectionModel\n": b"\nClassificationModel\n"}, "a classification model"),
    ({b"\nDetectionModel\n": b"\nOBBModel\n"}, "an oriented-box (OBB) model"),
    ({b"\nDetectionModel\n": b"\nRTDETRDetectionModel\n"}, "an RT-DETR model"),
    ({b"block\nC2f\n": b"block\nC3k2\n"}, "a YOLO11 model (C3k2 blocks)"),
    ({b"block\nSPPF\n": b"block\nC2PSA\n"}, "a YOLO11 model (C2PSA blocks)"),
    ({b"block\nC2f\n": b"block\nC3\n"}, "a YOLOv5u model (C3 blocks)"),
    ({b"head\nDetect\n": b"head\nSegment\n"}, "a segmentation model (Segment head)"),
    ({b"block\nSPPF\n": b"block\nSPPELAN\n"}, "a DetectionModel with layers [Conv, Conv, C2f"),
])
def test_other_tasks_and_architectures_are_refused_before_mapping(tmp_path, ul_checkpoint, rewrite_pickle,
                                                                  monkeypatch, replacements, what):
    path = rewrite_pickle(ul_checkpoint, tmp_path / "other.pt", replacements)
    monkeypatch.setattr(interop.Record, "tensors", lambda *a: pytest.fail("tensors read before the check"))
    with pytest.raises(CheckpointError) as error:
        load_ultralytics(path)
    message = str(error.value)
    assert message.startswith(str(path)) and what in message
    assert "this project builds YOLOv8 detection models" in message


def test_our_own_checkpoint_is_not_an_ultralytics_one(tmp_path):
    from detector import build_model
    from detector.engine.checkpoint import save_checkpoint

    save_checkpoint({"model": build_model("n", 2).state_dict(), "model_args": {"scale": "n", "num_classes": 2,
                                                                              "reg_max": 16}}, tmp_path / "ours.pt")
    assert not interop.is_ultralytics_checkpoint(tmp_path / "ours.pt")
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / 'ours.pt'} has no pickled model")):
        load_ultralytics(tmp_path / "ours.pt")


def test_a_truncated_ultralytics_file_fails_in_load_checkpoint_naming_it(tmp_path, ul_checkpoint):
    path = tmp_path / "half.pt"
    path.write_bytes(ul_checkpoint.read_bytes()[:3_000_000])
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_checkpoint(path)


def test_layer_name_mapping():
    assert interop.to_our_name("model.0.conv.weight") == "backbone.stem.conv.weight"
    assert interop.to_our_name("model.4.m.1.cv2.bn.running_var") == "backbone.stage2.1.m.1.cv2.bn.running_var"
    assert interop.to_our_name("model.9.cv2.conv.weight") == "backbone.stage4.2.cv2.conv.weight"
    assert interop.to_our_name("model.15.cv1.bn.bias") == "neck.top_down3.cv1.bn.bias"
    assert interop.to_our_name("model.19.conv.weight") == "neck.down4.conv.weight"
    assert interop.to_our_name("model.22.cv2.1.2.bias") == "head.box_branches.1.2.bias"
    assert interop.to_our_name("model.22.cv3.2.0.conv.weight") == "head.cls_branches.2.0.conv.weight"
    assert interop.to_our_name("model.22.dfl.conv.weight") is None
    assert interop.to_our_name("model.10.anything") is None  # Upsample has no weights
