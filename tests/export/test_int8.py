"""INT8 export: the report (AP of the float and the INT8 model on val, latency of both, calibration
count), the files and metadata, the box decoding left float, outputs close to the float model's
(OpenVINO with NNCF, ONNX with onnxruntime), and the bad inputs (no calibration images, nncf
missing). A tiny untrained model on a tiny synthetic set: the structure, not the AP goal."""
import json
import re
import sys
from importlib.util import find_spec

import numpy as np
import pytest
import torch

if find_spec("openvino") is None or find_spec("nncf") is None:  # find_spec: may run elsewhere (conftest.py)
    pytest.skip('the INT8 tests need the openvino extra: pip install -e ".[openvino]"', allow_module_level=True)

from detector.data.synthetic import NAMES  # noqa: E402
from detector.engine import tasks  # noqa: E402
from detector.engine.checkpoint import save_checkpoint  # noqa: E402
from detector.engine.compose import run_task  # noqa: E402
from detector.engine.deploy import deploy_and_check  # noqa: E402
from detector.export.onnx import OnnxDetector  # noqa: E402
from detector.export.openvino import MissingExtraError, OpenVinoDetector, read_metadata, shared_core  # noqa: E402
from detector.export.quantize import FLOAT_PATTERN, CalibrationError, CalibrationSet, calibration_count  # noqa: E402
from tests.cli_runner import run_cli  # noqa: E402

pytestmark = pytest.mark.openvino  # run in a process of their own (tests/conftest.py)

METRICS = ("AP", "AP50", "AP75", "AR100", "ECE")


@pytest.fixture(scope="module")
def model(calibrated_model):
    return calibrated_model(names=NAMES)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("int8")


@pytest.fixture(scope="module")
def data(root):
    return ["data=shapes", f"data.root={root / 'shapes'}", "data.num_train=6", "data.num_val=3", "data.min_size=64",
            "data.max_size=96"]


@pytest.fixture(scope="module")
def ckpt(model, root):
    path = root / "best.pt"
    save_checkpoint({"model": model.state_dict(), "model_args": {"scale": "n", "num_classes": len(NAMES),
                                                                 "reg_max": 16},
                     "names": NAMES, "category_ids": list(range(1, len(NAMES) + 1)), "config": {"imgsz": 64}}, path)
    return path


@pytest.fixture(scope="module")
def report(ckpt, data, root):
    return run_task("export", [f"ckpt={ckpt}", "format=openvino", "int8=true", "calib_images=4", *data,
                               "latency_runs=3", f"hydra.run.dir={root / 'export'}"], tasks.export)


@pytest.fixture(scope="module")
def train_images(root, data):
    """The tiny set's training images letterboxed to 64: [6, 1, 3, 64, 64], what calibration drew from."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from detector.predict import to_input_batch

    splits = instantiate(OmegaConf.create({"_target_": "detector.data.synthetic.shapes_splits",
                                           "root": str(root / "shapes"), "num_train": 6, "num_val": 3,
                                           "min_size": 64, "max_size": 96}))
    return splits.train, np.stack([to_input_batch(splits.train.load(i)[0], 64)[0] for i in range(len(splits.train))])


def assert_close_ish(model, session, images: np.ndarray) -> None:
    """INT8 against the float model on images like the calibration's. An untrained net quantizes
    poorly (its activations are noise), so the bounds are loose: near, not equal (the AP goal is
    measured on a trained model, docs/deployment.md)."""
    errors, box_errors = [], []
    for x in images:  # [1, 3, 64, 64]
        with torch.no_grad():
            reference = model(torch.from_numpy(x)).numpy()[0]  # [A, 4 + C]
        out = session(x)["predictions"][0]
        errors.append(np.abs(out[:, 4:] - reference[:, 4:]).mean())
        box_errors.append(np.median(np.abs(out[:, :4] - reference[:, :4])))
    assert np.mean(errors) < 0.12 and np.median(box_errors) < 5  # scores in [0, 1]; px on boxes of 20-130 px


def test_the_report_holds_ap_before_and_after_and_both_latencies(report, root):
    assert report.path == root / "export" / "best_int8_openvino_model" / "best.xml"
    assert report.format == "openvino" and report.precision == "int8" and report.calib_images == 4
    for metrics in (report.metrics_float, report.metrics_int8):
        assert set(METRICS) <= set(metrics) and all(np.isfinite(metrics[key]) for key in METRICS)
    for name in ("fp32", "int8"):  # written by val's evaluator, one folder each
        saved = json.loads((root / "export" / f"val_{name}" / "metrics.json").read_text())
        assert saved["metrics"]["AP"] == pytest.approx((report.metrics_float if name == "fp32" else report.metrics_int8)["AP"])
    assert report.latency_ms > 0 and report.float_latency_ms > 0
    meta = read_metadata(report.path.parent)
    assert meta["precision"] == "int8" and meta["calib_images"] == 4 and meta["names"] == NAMES
    assert report.size_bytes < 0.4 * 4 * sum(p.numel() for p in torch.load(root / "best.pt")["model"].values())
    log = (root / "export" / "export.log").read_text()
    assert re.search(r"val AP float [\d.]+, int8 [\d.]+ \([+-][\d.]+\).*calibrated on 4 images", log)
    assert re.search(r"latency float [\d.]+ ms, int8 [\d.]+ ms: [\d.]+x", log)


def test_the_box_decoding_stays_float(report):
    ops = shared_core().read_model(str(report.path)).get_ordered_ops()
    quantized = [op for op in ops if op.get_type_name() == "FakeQuantize"]
    assert len(quantized) > 50  # the convolutions are quantized ...
    fed = {target.get_node().get_friendly_name() for op in quantized for target in op.output(0).get_target_inputs()}
    decode = [name for name in fed if re.match(FLOAT_PATTERN, name)]
    assert not decode, f"decode nodes fed by FakeQuantize: {decode[:5]}"  # ... the decoding is not
    names = {op.get_friendly_name(): op.get_type_name() for op in ops}
    assert names["/Softmax"] == "Softmax" and names["predictions"] == "Concat"


def activation_ranges(xml) -> list[tuple[float, float, int]]:
    """(input low, input high, levels) of every FakeQuantize on an activation (not on a weight)."""
    ranges = []
    for op in shared_core().read_model(str(xml)).get_ordered_ops():
        if op.get_type_name() == "FakeQuantize" and op.input_value(0).get_node().get_type_name() != "Constant":
            low, high = (op.input_value(i).get_node().get_data() for i in (1, 2))
            ranges.append((float(low.min()), float(high.max()), int(op.get_attributes()["levels"])))
    return ranges


def is_symmetric(low: float, high: float, levels: int) -> bool:
    """Unsigned from zero, or signed with low = -high * 128 / 127 (256 levels), as NNCF writes them."""
    return low == 0 or abs(-low / high - (levels / 2) / (levels / 2 - 1)) < 1e-3


def test_the_default_preset_is_asymmetric_and_performance_is_symmetric(model, report, root, train_images):
    ranges = activation_ranges(report.path)  # mixed, the default: SiLU's outputs low near -0.28, not -high
    assert len(ranges) > 50 and sum(not is_symmetric(*r) for r in ranges) > len(ranges) // 2
    assert read_metadata(report.path.parent)["int8_preset"] == "mixed"
    dataset, images = train_images
    fast = deploy_and_check(model, root / "fast_openvino_model", fmt="openvino", stem="fast", imgsz=64,
                            latency_runs=0, calibration=CalibrationSet(dataset, 64, 4).check(),
                            int8_preset="performance")
    ranges = activation_ranges(fast.path)
    assert len(ranges) > 50 and all(is_symmetric(*r) for r in ranges)
    assert read_metadata(fast.path.parent)["int8_preset"] == "performance"
    assert_close_ish(model, OpenVinoDetector(fast.path), images)


def test_int8_outputs_are_close_to_the_float_model(model, report, train_images):
    assert_close_ish(model, OpenVinoDetector(report.path), train_images[1])


def test_onnx_int8_with_onnxruntime(model, root, train_images):
    import onnx

    dataset, images = train_images
    onnx_report = deploy_and_check(model, root / "q.onnx", fmt="onnx", imgsz=64, latency_runs=0,
                                   calibration=CalibrationSet(dataset, 64, 4).check())
    session = OnnxDetector(onnx_report.path)
    assert session.metadata["precision"] == "int8" and session.metadata["names"] == NAMES
    graph = onnx.load(str(onnx_report.path)).graph
    assert sum(node.op_type == "QuantizeLinear" for node in graph.node) > 50
    producers = {out: node for node in graph.node for out in node.output}
    softmax = next(node for node in graph.node if node.name == "/Softmax")
    assert producers[softmax.input[0]].op_type != "DequantizeLinear"  # the DFL decode reads float
    assert_close_ish(model, session, images)


def test_calibration_count_takes_a_count_or_a_fraction():
    assert calibration_count(300, 10) == 10 and calibration_count(4, 10) == 4
    assert calibration_count(0.5, 8) == 4 and calibration_count(0.01, 8) == 1
    for bad, words in ((0, "at least one calibration image"), (-2, "at least one"), (1.5, "whole number")):
        with pytest.raises(CalibrationError, match=words):
            calibration_count(bad, 10)
    with pytest.raises(CalibrationError, match="has none"):
        calibration_count(300, 0)


def test_no_calibration_images_is_one_error_line(ckpt, data, root):
    result = run_cli("export", f"ckpt={ckpt}", "format=openvino", "int8=true", "calib_images=0", *data,
                     f"hydra.run.dir={root / 'zero'}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: calib_images=0: int8=true needs at least one calibration image")
    assert not list((root / "zero").glob("*openvino_model"))
    result = run_cli("export", f"ckpt={ckpt}", "format=openvino", "int8=true", *data[:2], "data.num_train=0",
                     *data[3:], f"hydra.run.dir={root / 'empty'}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: int8=true calibrates on the train split of the data set, which cannot be used: ")
    assert "no valid image found" in last


def test_without_nncf_the_error_names_the_extra(ckpt, data, root, monkeypatch):
    monkeypatch.setitem(sys.modules, "nncf", None)
    with pytest.raises(MissingExtraError, match=r'int8=true with format=openvino needs the nncf package: '
                                                r'pip install "detector\[openvino\]"'):
        run_task("export", [f"ckpt={ckpt}", "format=openvino", "int8=true", *data,
                            f"hydra.run.dir={root / 'no_nncf'}"], tasks.export)
