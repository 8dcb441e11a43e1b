"""OpenVINO export: the IR against PyTorch (raw, dynamic, NMS, layout=ultralytics), the folder and
its metadata, predict and val through the exported model, and the bad inputs (a missing or
corrupt .xml/.bin pair, another input size, openvino not installed)."""
import copy
import json
import sys
from importlib.util import find_spec

import cv2
import numpy as np
import pytest
import torch
import yaml

if find_spec("openvino") is None:  # find_spec: this process may hand them to another (conftest.py)
    pytest.skip('the OpenVINO tests need the openvino extra: pip install -e ".[openvino]"', allow_module_level=True)

from detector.data.synthetic import NAMES  # noqa: E402
from detector.engine import tasks  # noqa: E402
from detector.engine.checkpoint import save_checkpoint  # noqa: E402
from detector.engine.compose import run_task  # noqa: E402
from detector.engine.deploy import deploy_and_check  # noqa: E402
from detector.export import detection_difference, nms_outputs_to_detections  # noqa: E402
from detector.export.openvino import (MissingExtraError, OpenVinoDetector, OpenVinoModelError,  # noqa: E402
                                      read_metadata)
from detector.predict import load_predictor, resolve_imgsz  # noqa: E402

pytestmark = pytest.mark.openvino  # run in a process of their own (tests/conftest.py)

CONF, IOU, MAX_DET = 0.25, 0.7, 20
DETECTION_TOLERANCE = 0.05  # px and scores: float32 noise on boxes of hundreds of px (tests/export/test_onnx.py)
TINY_DATA = ["data=shapes", "data.num_train=6", "data.num_val=3", "data.min_size=64", "data.max_size=96"]


@pytest.fixture(scope="module")
def model(calibrated_model):
    return calibrated_model(names=NAMES)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("openvino")


@pytest.fixture(scope="module")
def dynamic_export(model, root):
    """A dynamic raw-layout model: ``<root>/m_openvino_model/m.xml``."""
    return deploy_and_check(model, root / "m_openvino_model", stem="m", imgsz=64, dynamic=True, latency_runs=2)


@pytest.fixture(scope="module")
def nms_export(model, root):
    """A fixed 64x64 model ending in NMS, in ultralytics' layout (output0 [1, K, 6], metadata.yaml)."""
    return deploy_and_check(model, root / "nms_openvino_model", stem="nms", imgsz=64, nms=True, conf=CONF, iou=IOU,
                            max_det=MAX_DET, layout="ultralytics", latency_runs=0)


@pytest.fixture(scope="module")
def ckpt(model, root):
    save_checkpoint({"model": model.state_dict(), "model_args": {"scale": "n", "num_classes": len(NAMES),
                                                                 "reg_max": 16},
                     "names": NAMES, "category_ids": list(range(1, len(NAMES) + 1)), "config": {"imgsz": 64}},
                    root / "best.pt")
    return root / "best.pt"


def exact_and_single(model, images: torch.Tensor):
    with torch.no_grad():
        return copy.deepcopy(model).double()(images.double()).numpy(), model(images).numpy()


@pytest.mark.parametrize("shape", [(1, 64, 64), (2, 96, 128)])
def test_dynamic_predictions_are_as_accurate_as_pytorch(model, dynamic_export, shape):
    """OpenVINO is at least as close to the float64 output as PyTorch's own float32 run (an untrained
    net amplifies float32 rounding, so a fixed tolerance would test the weights, not the export)."""
    torch.manual_seed(1)
    x = torch.rand(shape[0], 3, *shape[1:])
    out = OpenVinoDetector(dynamic_export.path)(x.numpy())["predictions"]
    anchors = sum((shape[1] // s) * (shape[2] // s) for s in (8, 16, 32))
    assert out.shape == (shape[0], anchors, 4 + len(NAMES))
    exact, single = exact_and_single(model, x)
    pytorch_error = np.abs(single - exact).max()
    assert np.abs(out - exact).max() <= 2 * pytorch_error + 1e-4
    assert np.ptp(out[..., 4:]) > 0.1 and np.ptp(out[..., :4]) > 50  # not two constants compared
    assert dynamic_export.differences["1x64x64"] < 1e-3 and dynamic_export.latency_ms > 0


def test_nms_detections_in_ultralytics_layout_match_predict(model, nms_export):
    torch.manual_seed(2)
    x = torch.rand(1, 3, 64, 64)
    detector = OpenVinoDetector(nms_export.path)
    assert detector.convention == "ultralytics" and detector.layout == "nms"
    assert detector.fixed_size == (64, 64) and detector.fixed_batch == 1 and detector.metadata["names"] == NAMES
    out = detector(x.numpy())  # read back in our layout
    reference = model.predict(x, conf=CONF, iou=IOU, max_det=MAX_DET)
    assert out["num_dets"].tolist() == [len(r["scores"]) for r in reference] and out["num_dets"][0] > 0
    assert detection_difference(reference, nms_outputs_to_detections(out)) < DETECTION_TOLERANCE
    # the sidecar ultralytics' AutoBackend reads beside an OpenVINO model
    sidecar = yaml.safe_load((nms_export.path.parent / "metadata.yaml").read_text())
    assert sidecar["names"] == dict(enumerate(NAMES)) and sidecar["imgsz"] == [64, 64] and sidecar["stride"] == 32
    assert sidecar["task"] == "detect" and sidecar["end2end"] is True
    assert json.loads(sidecar["detector"])["precision"] == "fp32"


def test_the_folder_holds_the_pair_and_the_metadata(dynamic_export, nms_export, root):
    folder = dynamic_export.path.parent
    assert folder.name == "m_openvino_model" and sorted(p.name for p in folder.iterdir()) == ["m.bin", "m.xml"]
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary folder left behind
    meta = read_metadata(folder)  # the folder or its .xml
    assert meta == read_metadata(dynamic_export.path)
    assert meta["format"] == "detector-openvino-v1" and meta["precision"] == "fp32"
    assert meta["names"] == NAMES and meta["imgsz"] == 64 and meta["stride"] == 32 and meta["dynamic"] is True
    assert meta["nms"] is False and read_metadata(nms_export.path)["max_det"] == MAX_DET  # ultralytics' layout too
    assert dynamic_export.size_bytes == sum(p.stat().st_size for p in folder.iterdir())
    assert "<names value=" in dynamic_export.path.read_text()  # plain text in the .xml's rt_info


def write_images(folder, count=2):
    """Noise pictures, not square: what the calibrated untrained model was calibrated on (on shapes
    pictures its scores saturate at 1.0, and NMS between tied boxes is arbitrary)."""
    folder.mkdir(exist_ok=True)
    for i in range(count):
        image = np.random.default_rng(i).integers(0, 256, (70 + 30 * i, 120, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"im{i}.png"), image)
    return folder


def test_predict_and_val_through_the_export_agree_with_the_checkpoint(dynamic_export, ckpt, root):
    images = write_images(root / "images")
    found = {}
    for name, source in (("pt", ckpt), ("ov", dynamic_export.path.parent)):
        _, records = run_task("predict", [f"ckpt={source}", f"source={images}", "conf=0.25", "save_images=false",
                                          f"hydra.run.dir={root / ('predict_' + name)}"], tasks.predict)
        found[name] = [{"boxes": torch.tensor([d["box"] for d in r["detections"]]).reshape(-1, 4),
                        "scores": torch.tensor([d["score"] for d in r["detections"]]),
                        "labels": torch.tensor([d["label"] for d in r["detections"]])} for r in records]
    assert sum(len(d["scores"]) for d in found["pt"]) > 0
    assert detection_difference(found["pt"], found["ov"]) < DETECTION_TOLERANCE
    data = [*TINY_DATA, f"data.root={root / 'shapes'}", "diagnostics=false", "val_batches=0"]
    results = {name: run_task("eval", [f"ckpt={source}", *data, f"hydra.run.dir={root / ('val_' + name)}"],
                              tasks.evaluate)
               for name, source in (("pt", ckpt), ("ov", dynamic_export.path))}
    assert len(results["ov"].detections) == len(results["pt"].detections) > 0
    for key in ("AP", "AP50", "AR100"):
        assert results["ov"].metrics[key] == pytest.approx(results["pt"].metrics[key], abs=1e-3)


def test_a_missing_or_broken_pair_is_named(dynamic_export, root):
    good = dynamic_export.path
    with pytest.raises(FileNotFoundError, match="OpenVINO model not found: .*nowhere.xml"):
        load_predictor(root / "nowhere.xml")
    alone = root / "alone"
    alone.mkdir()
    (alone / "m.xml").write_bytes(good.read_bytes())
    with pytest.raises(OpenVinoModelError, match="no weights file m.bin beside it"):
        load_predictor(alone)
    (root / "empty").mkdir()
    with pytest.raises(OpenVinoModelError, match="holds no .xml file"):
        load_predictor(root / "empty")
    corrupt = root / "corrupt"
    corrupt.mkdir()
    (corrupt / "m.xml").write_text("<net><layers>cut short")
    (corrupt / "m.bin").write_bytes(good.with_suffix(".bin").read_bytes())
    with pytest.raises(OpenVinoModelError, match="OpenVINO cannot read"):
        load_predictor(corrupt / "m.xml")
    truncated = root / "truncated"
    truncated.mkdir()
    (truncated / "m.xml").write_bytes(good.read_bytes())
    (truncated / "m.bin").write_bytes(good.with_suffix(".bin").read_bytes()[:1000])
    with pytest.raises(OpenVinoModelError, match="OpenVINO cannot (read|compile)"):
        load_predictor(truncated)


def test_another_input_size_than_exported_is_refused(nms_export, root):
    predictor = load_predictor(nms_export.path.parent)
    assert resolve_imgsz(predictor, None) == 64
    with pytest.raises(ValueError, match="the exported model takes fixed 64x64 input, not imgsz=96"):
        resolve_imgsz(predictor, 96)
    with pytest.raises(ValueError, match="takes fixed 64x64 input"):
        run_task("eval", [f"ckpt={nms_export.path.parent}", "imgsz=96", *TINY_DATA,
                          f"data.root={root / 'shapes'}", f"hydra.run.dir={root / 'val_96'}"], tasks.evaluate)


def test_output_must_be_a_new_or_model_folder(model, root):
    with pytest.raises(OpenVinoModelError, match="format=openvino writes a folder"):
        deploy_and_check(model, root / "model.xml", imgsz=64, latency_runs=0)
    busy = root / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    with pytest.raises(OpenVinoModelError, match="holds other files than an OpenVINO model"):
        deploy_and_check(model, busy, imgsz=64, latency_runs=0)
    assert (busy / "notes.txt").read_text() == "keep me"


def test_without_openvino_the_error_names_the_extra(model, dynamic_export, monkeypatch, root):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    extra = r'needs the openvino package: pip install "detector\[openvino\]"'
    with pytest.raises(MissingExtraError, match=extra):
        load_predictor(dynamic_export.path)
    with pytest.raises(MissingExtraError, match=extra):  # refused before anything is written
        deploy_and_check(model, root / "never_openvino_model", imgsz=64)
    assert not (root / "never_openvino_model").exists()


def test_ultralytics_loads_our_openvino_folder(nms_export, root):
    """ultralytics' AutoBackend on the layout=ultralytics folder (its metadata.yaml, end2end rows):
    the detections of ``detector predict``. It compiles without an f32 hint, so on a CPU with
    bfloat16 units it runs in bf16: boxes within a few px, scores within 0.02."""
    ultralytics = pytest.importorskip("ultralytics", reason="ultralytics is not installed (pip install .[compat])")
    from detector.predict import predict_image

    rgb = np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8)  # no resize: both letterboxes agree
    image_path = root / "square.png"
    cv2.imwrite(str(image_path), rgb[..., ::-1])
    ours = predict_image(load_predictor(nms_export.path.parent), rgb, 64, CONF, IOU)
    result = ultralytics.YOLO(str(nms_export.path.parent), task="detect").predict(
        str(image_path), conf=CONF, iou=IOU, imgsz=64, verbose=False)[0]
    assert result.names == dict(enumerate(NAMES))
    got = {"boxes": result.boxes.xyxy, "scores": result.boxes.conf, "labels": result.boxes.cls.long()}
    assert len(got["scores"]) == len(ours["scores"]) > 0
    assert (got["labels"].sort().values == ours["labels"].sort().values).all()
    assert detection_difference([ours], [got]) < 5
