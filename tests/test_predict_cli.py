"""End-to-end runs of tools/export.py and tools/predict.py on a tiny checkpoint and generated images."""
import json
import re
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from detector.data.synthetic import make_image
from detector.engine.checkpoint import save_checkpoint
from detector.export import detection_difference, read_metadata
from tests.cli_runner import run_cli

NAMES = ["circle", "square", "triangle"]
pytestmark = pytest.mark.e2e


def tiny_checkpoint(path: Path, model) -> Path:
    """A checkpoint of ``model`` (a calibrated untrained n model, tests/conftest.py) trained at 64 px."""
    save_checkpoint({"model": model.state_dict(), "model_args": {"scale": "n", "num_classes": 3, "reg_max": 16},
                     "names": NAMES, "category_ids": [1, 2, 3], "config": {"imgsz": 64}}, path)
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, calibrated_model):
    root = tmp_path_factory.mktemp("predict")
    ckpt = tiny_checkpoint(root / "best.pt", calibrated_model(NAMES))
    images = root / "images"
    images.mkdir()
    sizes = {}
    for i, (low, high) in enumerate(((90, 140), (150, 200))):
        image, _ = make_image(np.random.default_rng(i), low, high)  # RGB, not square
        cv2.imwrite(str(images / f"im{i}.jpg"), image[..., ::-1])
        sizes[f"im{i}.jpg"] = image.shape[:2]
    (images / "broken.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    exports = {}
    for layout, extra in (("raw", []), ("nms", ["nms=true", "dynamic=true", "max_det=300"])):
        result = run_cli("export.py", f"ckpt={ckpt}", f"hydra.run.dir={root / ('export_' + layout)}",
                         f"output={root / (layout + '.onnx')}", "tolerance=0.05", "latency_runs=2", *extra)
        assert result.returncode == 0, result.stderr[-3000:]
        exports[layout] = result.stdout
    return {"root": root, "ckpt": ckpt, "images": images, "sizes": sizes, "exports": exports}


def predict(workspace, name, *args):
    run_dir = workspace["root"] / name
    result = run_cli("predict.py", f"hydra.run.dir={run_dir}", *args)
    return result, run_dir


@pytest.fixture(scope="module")
def checkpoint_run(workspace):
    result, run_dir = predict(workspace, "pred_ckpt", f"ckpt={workspace['ckpt']}", f"source={workspace['images']}")
    assert result.returncode == 0, result.stderr[-3000:]
    return result, run_dir, json.loads((run_dir / "detections.json").read_text())


def as_detections(records):
    return [{"boxes": torch.tensor([d["box"] for d in r["detections"]]).reshape(-1, 4),
             "scores": torch.tensor([d["score"] for d in r["detections"]]),
             "labels": torch.tensor([d["label"] for d in r["detections"]], dtype=torch.long)} for r in records]


@pytest.mark.parametrize("layout", ["raw", "nms"])
def test_export_cli_checks_the_file_and_reports(workspace, layout):
    out = workspace["exports"][layout]
    assert "onnx.checker: ok" in out
    diffs = [float(v) for v in re.findall(r"max abs diff onnxruntime vs pytorch \([^)]*\): (\S+)", out)]
    assert len(diffs) == (2 if layout == "nms" else 1)  # dynamic: also batch 2 at another size
    assert all(d < 0.05 for d in diffs)
    assert re.search(r"onnxruntime CPU latency \(1x3x64x64, median of 2\): [\d.]+ ms", out)
    path = workspace["root"] / f"{layout}.onnx"
    assert f"file: {path}" in out and "MiB" in out
    meta = read_metadata(path)
    assert meta["names"] == NAMES and meta["imgsz"] == 64 and meta["nms"] is (layout == "nms")
    if layout == "nms":
        assert "output boxes" in out and "['batch', 300, 4]" in out
    else:
        assert "output predictions" in out and "[1, 84, 7]" in out  # 8x8 + 4x4 + 2x2 anchors


def test_export_cli_fails_above_the_tolerance(workspace):
    result = run_cli("export.py", f"ckpt={workspace['ckpt']}", f"hydra.run.dir={workspace['root'] / 'strict'}",
                     "tolerance=1e-12", "latency_runs=0")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error: onnxruntime differs from PyTorch by")


def test_predict_cli_writes_pictures_and_json(workspace, checkpoint_run):
    result, run_dir, records = checkpoint_run
    log = result.stdout + result.stderr
    assert "skipped" in log and "broken.jpg" in log  # the corrupt image is named and skipped
    assert [Path(r["file"]).name for r in records] == ["im0.jpg", "im1.jpg"]
    total = 0
    for record in records:
        height, width = workspace["sizes"][Path(record["file"]).name]
        assert (record["height"], record["width"]) == (height, width)
        picture = cv2.imread(str(run_dir / Path(record["file"]).name))
        assert picture.shape == (height, width, 3)
        for det in record["detections"]:
            assert set(det) == {"box", "score", "label", "name"}
            x1, y1, x2, y2 = det["box"]
            assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
            assert 0.25 < det["score"] <= 1 and det["name"] == NAMES[det["label"]]
        scores = [d["score"] for d in record["detections"]]
        assert scores == sorted(scores, reverse=True)
        total += len(scores)
    assert total > 0
    assert not (run_dir / "broken.jpg").exists()


@pytest.mark.parametrize("layout", ["raw", "nms"])
def test_onnx_file_predicts_what_the_checkpoint_predicts(workspace, checkpoint_run, layout):
    _, _, expected = checkpoint_run
    result, run_dir = predict(workspace, f"pred_{layout}", f"ckpt={workspace['root'] / (layout + '.onnx')}",
                              f"source={workspace['images']}")
    assert result.returncode == 0, result.stderr[-3000:]
    records = json.loads((run_dir / "detections.json").read_text())
    assert [r["file"] for r in records] == [r["file"] for r in expected]
    assert [len(r["detections"]) for r in records] == [len(r["detections"]) for r in expected]
    # boxes in original px (an untrained net: float32 noise of ~1e-2 px before clipping)
    assert detection_difference(as_detections(expected), as_detections(records)) < 0.05


@pytest.mark.parametrize("pattern,count", [("im*.jpg", 2), ("im1.jpg", 1)])
def test_glob_and_single_image_sources(workspace, pattern, count):
    result, run_dir = predict(workspace, f"pred_{count}", f"ckpt={workspace['ckpt']}",
                              f"source={workspace['images'] / pattern}", "save_images=false")
    assert result.returncode == 0, result.stderr[-3000:]
    records = json.loads((run_dir / "detections.json").read_text())
    assert len(records) == count and not list(run_dir.glob("*.jpg"))


def other_layout_onnx(path: Path) -> Path:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "other", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("case", ["empty source", "missing source", "missing ckpt", "other onnx", "wrong size"])
def test_bad_input_gives_a_one_line_error(workspace, case):
    root = workspace["root"]
    empty = root / "empty"
    empty.mkdir(exist_ok=True)
    args, message = {
        "empty source": ([f"ckpt={workspace['ckpt']}", f"source={empty}"], "error: no image in folder"),
        "missing source": ([f"ckpt={workspace['ckpt']}", f"source={root / 'nowhere'}"], "error: source not found"),
        "missing ckpt": ([f"ckpt={root / 'missing.pt'}", f"source={workspace['images']}"],
                         "error: checkpoint not found"),
        "other onnx": ([f"ckpt={other_layout_onnx(root / 'other.onnx')}", f"source={workspace['images']}"],
                       "error: "),
        "wrong size": ([f"ckpt={root / 'raw.onnx'}", f"source={workspace['images']}", "imgsz=96"],
                       "error: the exported model takes fixed 64x64 input"),
    }[case]
    result, _ = predict(workspace, "bad_" + case.replace(" ", "_"), *args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(message)
    if case == "other onnx":
        assert "expected input ['images']" in last
