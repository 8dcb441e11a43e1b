"""The Python API (detector.Detector): the same Hydra configs and the same results as tools/*.py."""
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser

import detector
from detector.engine.overrides import OverrideError
from detector.api import format_value, log_to, override_key, to_overrides
from detector.data.base import read_image
from detector.data.synthetic import make_image
from detector.engine.checkpoint import load_checkpoint, save_checkpoint
from detector.engine.exporting import ExportError
from detector.models import DetectionModel as DetectorModule
from detector.predict import SourceError, load_predictor, predict_image
from tests.cli_runner import run_cli

ROOT = Path(__file__).resolve().parents[1]
ULTRALYTICS_PT = ROOT / "tests" / "fixtures" / "yolov8n_coco128_ultralytics.pt"
COCO_KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


def tiny(tmp_path, run_dir):
    """Keywords for a run of a handful of steps on a tiny shapes set (as tests/test_train_cli.py)."""
    return {"data.root": str(tmp_path / "shapes"), "data.num_train": 8, "data.num_val": 4, "data.min_size": 96,
            "data.max_size": 128, "imgsz": 64, "batch_size": 4, "workers": 0, "progress": False,
            "close_mosaic": 1, "warmup.min_iters": 2, "device": "cpu", "hydra.run.dir": str(run_dir)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Detector("n") after one epoch: (detector, summary, data root, run folder)."""
    tmp_path = tmp_path_factory.mktemp("api")
    d = detector.Detector("n")
    summary = d.train(overrides=["loss_cls=vfl"], epochs=1, **tiny(tmp_path, tmp_path / "run"))
    return d, summary, tmp_path, tmp_path / "run"


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, calibrated_model):
    """A checkpoint whose detections mean something (tests/conftest.py) and a 2:3 PNG image."""
    root = tmp_path_factory.mktemp("api_predict")
    names = ["circle", "square", "triangle"]
    ckpt = root / "calibrated.pt"
    save_checkpoint({"model": calibrated_model(names).state_dict(), "names": names, "category_ids": [1, 2, 3],
                     "model_args": {"scale": "n", "num_classes": 3, "reg_max": 16}, "config": {"imgsz": 64}}, ckpt)
    image, _ = make_image(np.random.default_rng(3), 100, 100)  # RGB [100, 100, 3]
    image = np.ascontiguousarray(np.concatenate([image, image[:, :50]], 1))  # [100, 150, 3], not square
    cv2.imwrite(str(root / "im.png"), image[..., ::-1])  # lossless: the file reads back as this array
    return ckpt, root / "im.png", image


# ------------------------------------------------------------------------------ kwargs and errors
def test_keywords_become_hydra_overrides_that_read_back_as_given():
    given = {"epochs": 3, "amp": False, "resume": None, "lr": 1e-05, "data.data_yaml": "/data/my set/data.yaml",
             "names": ["a", "b c"], "tag": "1", "note": "it's", "sweep": "a,b"}
    overrides = to_overrides(given, "loss_cls=vfl")
    assert overrides[:6] == ["loss_cls=vfl", "epochs=3", "amp=false", "resume=null", "lr=1e-05",
                             "data.data_yaml=/data/my set/data.yaml"]
    parser = OverridesParser.create()
    for override, (key, value) in zip(overrides[1:], given.items()):
        parsed = parser.parse_override(override)
        assert parsed.key_or_group == key and parsed.value() == value and not parsed.is_sweep_override()
    assert format_value("1") == "'1'" and format_value("yolo") == "yolo"
    assert override_key("+data.root=x") == "data" and override_key("~model") == "model"


def test_an_unknown_option_is_refused_with_the_valid_ones_before_anything_runs(tmp_path):
    d = detector.Detector("n")
    with pytest.raises(OverrideError, match="loss_cls=qfll: no such option; loss_cls is one of bce, focal, qfl, vfl"):
        d.train(loss_cls="qfll", out_dir=str(tmp_path))
    with pytest.raises(OverrideError, match="epochz=1: no key epochz in eval.s config"):
        d.evaluate(epochz=1, out_dir=str(tmp_path))
    assert not any(tmp_path.iterdir())  # nothing was run
    with pytest.raises(ValueError, match="ckpt and source are not options"):
        d.predict(np.zeros((8, 8, 3), np.uint8), ckpt="x.pt")


def test_a_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"checkpoint not found: {tmp_path / 'nope.pt'}"):
        detector.Detector(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="model scale: n, s, m, l, x"):
        detector.Detector("q")
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    with pytest.raises(ValueError, match=f"{tmp_path / 'model.onnx'} is an exported ONNX file"):
        detector.Detector(tmp_path / "model.onnx")
    with pytest.raises(TypeError, match="checkpoint path or a scale"):
        detector.Detector(3)


def test_a_scale_name_gives_a_fresh_model():
    d = detector.Detector("s", num_classes=3)
    assert isinstance(d.model, DetectorModule) and d.model.scale == "s" and d.model.num_classes == 3
    assert d.ckpt_path is None and d.config == {} and d.names == []
    with pytest.raises(ValueError, match=r"HWC RGB uint8 \[H, W, 3\]; got shape \(3, 8, 8\) dtype float32"):
        d.predict(np.zeros((3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="the export formats are 'onnx' and 'openvino'"):
        d.export(format="tflite")


def test_repeated_calls_never_stack_log_handlers(tmp_path, monkeypatch, capsys):
    logger = logging.getLogger("detector")
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # nothing configured: the API prints
    monkeypatch.setattr(logger, "handlers", [])
    for _ in range(2):
        with log_to(tmp_path, "x"):
            logger.info("hello from the api")
    assert capsys.readouterr().out.count("hello from the api") == 2
    assert (tmp_path / "x.log").read_text().count("hello from the api") == 2
    assert len(logger.handlers) == 1 and not isinstance(logger.handlers[0], logging.FileHandler)


# ------------------------------------------------------------------------------ the four tasks
@pytest.mark.e2e
def test_train_composes_the_cli_config_and_holds_best_pt(trained):
    d, summary, _, run_dir = trained
    assert d.run_dir == run_dir and d.ckpt_path == run_dir / "checkpoints" / "best.pt"
    assert summary["run_dir"] == str(run_dir) and summary["epochs"] == 1
    overrides = (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert "- model=n\n- loss_cls=vfl\n- epochs=1\n" in overrides and "hydra.run.dir" not in overrides
    config = load_checkpoint(d.ckpt_path)[1]
    assert config["loss_cls"]["_target_"].endswith("VarifocalLoss") and config["imgsz"] == 64
    assert config["data"]["num_train"] == 8 and "hydra" not in config
    assert "epoch 1/1" in (run_dir / "train.log").read_text()
    saved = load_checkpoint(d.ckpt_path)[0].state_dict()
    assert all(torch.equal(saved[k], v) for k, v in d.model.state_dict().items())
    assert d.names == ["circle", "square", "triangle", "star", "cross", "diamond"]


@pytest.mark.e2e
def test_train_from_a_checkpoint_starts_from_its_weights(trained):
    d, _, tmp_path, run_dir = trained
    start = d.ckpt_path
    again = detector.Detector(start)
    again.train(epochs=1, **tiny(tmp_path, tmp_path / "finetune"))
    assert f"- pretrained={start}\n" in (tmp_path / "finetune" / ".hydra" / "overrides.yaml").read_text()
    assert f"pretrained {start}: loaded " in (tmp_path / "finetune" / "train.log").read_text()
    assert again.ckpt_path == tmp_path / "finetune" / "checkpoints" / "best.pt"


@pytest.mark.e2e
@pytest.mark.skipif(not ULTRALYTICS_PT.is_file(), reason="tests/fixtures holds no ultralytics checkpoint")
def test_an_ultralytics_checkpoint_predicts_and_fine_tunes(tmp_path):
    d = detector.Detector(ULTRALYTICS_PT)
    assert d.model.num_classes == 80 and d.names[:2] == ["person", "bicycle"] and d.config["imgsz"] == 160
    image, _ = make_image(np.random.default_rng(0), 100, 140)
    result = d.predict(image, conf=0.001)[0]
    assert all(name == d.names[label] for name, label in zip(result["names"], result["labels"].tolist()))
    d.train(epochs=1, **tiny(tmp_path, tmp_path / "run"))  # 80 COCO classes -> the 6 shapes
    log_text = (tmp_path / "run" / "train.log").read_text()
    assert f"pretrained {ULTRALYTICS_PT}: loaded " in log_text and d.model.num_classes == 6


@pytest.mark.e2e
def test_predict_gives_the_tools_detections_in_original_pixels(calibrated, tmp_path):
    ckpt, image_path, image = calibrated
    d = detector.Detector(ckpt)
    from_file = d.predict(image_path, conf=0.25)[0]
    from_array = d.predict([image, image], conf=0.25) + d(image, conf=0.25)
    reference = predict_image(load_predictor(ckpt), read_image(image_path), imgsz=64, conf=0.25)
    assert len(reference["boxes"]) > 0 and from_file["file"] == str(image_path)
    for result in (from_file, *from_array):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(result[key], reference[key]), key
    boxes = from_file["boxes"]  # clipped to the 150 x 100 original, and beyond the 64 px letterbox
    assert boxes[:, 0::2].max() <= 150 and boxes[:, 1::2].max() <= 100 and boxes[:, 2].max() > 64
    cli = run_cli("predict.py", f"ckpt={ckpt}", f"source={image_path}", "conf=0.25", "device=cpu",
                  f"hydra.run.dir={tmp_path / 'cli'}")
    assert cli.returncode == 0, cli.stderr[-3000:]
    records = json.loads((tmp_path / "cli" / "detections.json").read_text())[0]["detections"]
    np.testing.assert_allclose([r["box"] for r in records], boxes.numpy(), atol=0.011)  # rounded to 0.01 px
    assert [r["name"] for r in records] == from_file["names"]
    d.predict(image_path, conf=0.25, save=True, **{"hydra.run.dir": str(tmp_path / "api")})
    saved = json.loads((tmp_path / "api" / "detections.json").read_text())[0]["detections"]
    assert [r["box"] for r in saved] == [[round(v, 2) for v in box] for box in boxes.tolist()]
    assert (tmp_path / "api" / "im.jpg").is_file() and (tmp_path / "api" / "predict.log").is_file()


@pytest.mark.e2e
def test_evaluate_equals_the_eval_tool(trained, tmp_path):
    d, _, _, _ = trained
    metrics = d.evaluate(device="cpu", workers=0, **{"hydra.run.dir": str(tmp_path / "api")})
    assert list(metrics)[:12] == COCO_KEYS and {"spearman", "pearson"} <= set(metrics)
    cli = run_cli("eval.py", f"ckpt={d.ckpt_path}", "device=cpu", "workers=0", f"hydra.run.dir={tmp_path / 'cli'}")
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert json.loads((tmp_path / "cli" / "metrics.json").read_text())["metrics"] == pytest.approx(metrics, abs=1e-4)
    saved = json.loads((tmp_path / "api" / "metrics.json").read_text())["metrics"]
    assert saved == metrics and len(json.loads((tmp_path / "api" / "detections.json").read_text())) > 0
    assert d.run_dir == tmp_path / "api" and "ckpt=" in (tmp_path / "api" / ".hydra" / "overrides.yaml").read_text()


@pytest.mark.e2e
def test_evaluate_with_rect_uses_rectangular_batches(trained, tmp_path, monkeypatch):
    import detector.engine.build as build

    made = []

    class Recording(build.RectValDataset):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(build, "RectValDataset", Recording)
    d, _, _, _ = trained
    square = d.evaluate(device="cpu", workers=0, **{"hydra.run.dir": str(tmp_path / "square")})
    assert not made
    rect = d.evaluate(device="cpu", workers=0, rect=True, **{"hydra.run.dir": str(tmp_path / "rect")})
    assert len(made) == 1 and list(rect)[:12] == COCO_KEYS
    assert rect["AP"] == pytest.approx(square["AP"], abs=0.05)  # same model; only the padding differs


@pytest.mark.e2e
def test_export_writes_a_file_that_passes_parity(trained, tmp_path, caplog):
    d, _, _, _ = trained
    with caplog.at_level(logging.INFO, logger="detector"):
        path = d.export(nms=True, dynamic=True, latency_runs=0, **{"hydra.run.dir": str(tmp_path / "run")})
    assert path == tmp_path / "run" / "best.onnx" and path.stat().st_size > 1e6
    assert "onnx.checker: ok" in caplog.text and "(detections, 2x32x64)" in caplog.text
    assert load_predictor(path).session.layout == "nms"
    with pytest.raises(ExportError, match="onnxruntime differs from PyTorch by .* > tolerance -1"):
        d.export(tolerance=-1, latency_runs=0, output=str(tmp_path / "strict.onnx"),
                 **{"hydra.run.dir": str(tmp_path / "strict")})


@pytest.mark.e2e
def test_unreadable_files_are_skipped_and_named(calibrated, tmp_path, caplog):
    ckpt, image_path, image = calibrated
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(image_path.read_bytes())
    (folder / "b_broken.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    d = detector.Detector(ckpt)
    with caplog.at_level(logging.WARNING, logger="detector"):
        results = d.predict([folder, image], conf=0.25)
    assert [r.get("file") for r in results] == [str(folder / "a.png"), None]
    assert torch.equal(results[0]["boxes"], results[1]["boxes"])
    assert f"skipped {folder / 'b_broken.jpg'}: not a readable image" in caplog.text
    with pytest.raises(SourceError, match="none of the 1 files could be read"):
        d.predict(folder / "b_broken.jpg")
