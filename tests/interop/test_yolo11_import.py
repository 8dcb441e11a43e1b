"""YOLO11 detection checkpoints: imported by the safe reader with ultralytics' numbers (the committed
fixture, and live files where ultralytics is importable), other families refused by name, our
checkpoints recording the architecture, pretrained= and freeze= in YOLO11's layer order."""
import math
import os
import re
from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest
import torch

from detector import build_model, load_checkpoint
from detector.engine.checkpoint import CheckpointError, checked_model_args, save_checkpoint
from detector.engine.pretrained import (freeze_layers, freeze_prefixes, load_pretrained, read_pretrained,
                                       source_cls_width)
from detector.interop import load_ultralytics
from detector.interop import ultralytics as interop
from detector.interop.unpickler import restricted_load

from tests.reference.yolov8 import ultralytics_xyxy

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CHECKPOINT = FIXTURES / "yolo11n_ultralytics.pt"  # see tests/fixtures/make_yolo11_fixture.py
EXPECTED = FIXTURES / "yolo11n_ultralytics_expected.npz"
ARGS_N80 = {"arch": "yolo11", "scale": "n", "num_classes": 80, "reg_max": 16, "cls_width": None}


@pytest.fixture(scope="module")
def imported():
    return load_ultralytics(CHECKPOINT)


@pytest.fixture(scope="module")
def expected() -> dict:
    with np.load(EXPECTED) as data:
        return {k: data[k] for k in data.files}


def run(model, image: np.ndarray, dtype) -> torch.Tensor:
    with torch.no_grad():
        return deepcopy(model).to(dtype)(torch.from_numpy(image).to(dtype) / 255)


# ----------------------------------------------------------------------------------- the committed file
def test_report_says_what_was_read(imported):
    model, report = imported
    assert report["model_args"] == ARGS_N80 and report["weights"] == "ema" and report["imgsz"] == 128
    assert (report["mapped"], report["total"]) == (498, 499) and report["unmapped"] == ["model.23.dfl.conv.weight"]
    assert (model.arch, model.scale, model.names[7]) == ("yolo11", "n", "thing7") and not model.training


def test_raw_output_equals_ultralytics(imported, expected):
    """float64: the same function to rounding; float32: no further from it than ultralytics' own float32."""
    reference = torch.from_numpy(expected["predictions"])  # [1, A, 4 + 80]: ultralytics, float64
    exact = run(imported[0], expected["image"], torch.float64)
    assert exact.shape == reference.shape == (1, 12 * 16 + 6 * 8 + 3 * 4, 84)
    assert (exact - reference).abs().max() < 1e-9
    single = run(imported[0], expected["image"], torch.float32).double()
    assert (single - reference).abs().max() <= 2 * float(expected["float32_error"]) + 1e-4
    assert (single - reference)[..., 4:].abs().max() < 1e-4 and reference[..., 4:].std() > 1e-2


def test_load_checkpoint_and_a_converted_checkpoint_record_yolo11(imported, tmp_path):
    model, config = load_checkpoint(CHECKPOINT)
    assert model.name == "yolo11n" and config["model"]["arch"] == "yolo11"
    path = tmp_path / "converted.pt"
    save_checkpoint({"model": model.state_dict(), "model_args": imported[1]["model_args"], "names": model.names}, path)
    again, _ = load_checkpoint(path)
    image = np.random.default_rng(1).integers(0, 256, (1, 3, 64, 96), dtype=np.uint8)
    assert again.name == "yolo11n" and torch.equal(run(again, image, torch.float32), run(model, image, torch.float32))


def test_model_args_without_arch_mean_yolov8_and_a_wrong_arch_is_refused(imported, tmp_path):
    v8 = build_model("n", 2).state_dict()
    old = {"model_args": {"scale": "n", "num_classes": 2}, "model": v8}  # written before YOLO11 was added
    assert checked_model_args(old, "old.pt")["arch"] == "yolov8"
    v11 = imported[0].state_dict()
    assert checked_model_args({"model_args": ARGS_N80, "model": v11}, "v11.pt") == ARGS_N80
    with pytest.raises(CheckpointError, match="model_args.arch is 'yolo12'; valid: yolov8, yolo11"):
        checked_model_args({"model_args": {**ARGS_N80, "arch": "yolo12"}, "model": v11}, "bad.pt")
    with pytest.raises(CheckpointError, match="model_args.cls_width=64 does not fit"):
        checked_model_args({"model_args": {**ARGS_N80, "cls_width": 64}, "model": v11}, "bad.pt")  # it is 80 wide
    save_checkpoint({"model": v11, "model_args": {**ARGS_N80, "arch": "yolov8"}}, tmp_path / "lying.pt")
    with pytest.raises(CheckpointError, match="do not fit the model"):
        load_checkpoint(tmp_path / "lying.pt")


# ----------------------------------------------------------------------------------- refused by name
@pytest.mark.parametrize("replacements, what", [
    ({b"block\nC2PSA\n": b"block\nA2C2f\n"}, "a YOLO12 model (A2C2f blocks)"),
    ({b"head\nDetect\n": b"head\nv10Detect\n"}, "a YOLOv10 model (v10Detect head)"),
    ({b"block\nSPPF\n": b"block\nSPPELAN\n"}, "a YOLO11 model (C3k2 blocks) in a layout other than yolo11.yaml's"),
    ({b"\nDetectionModel\n": b"\nSegmentationModel\n"}, "a segmentation model"),
])
def test_other_families_are_refused_by_name(tmp_path, rewrite_pickle, monkeypatch, replacements, what):
    path = rewrite_pickle(CHECKPOINT, tmp_path / "other.pt", replacements)
    monkeypatch.setattr(interop.Record, "tensors", lambda *a: pytest.fail("tensors read before the check"))
    with pytest.raises(CheckpointError) as error:
        load_ultralytics(path)
    message = str(error.value)
    assert message.startswith(f"{path} is {what}") and "this project builds YOLOv8 detection models" in message
    assert "and YOLO11 ones" in message


def test_an_end_to_end_head_on_yolo11_layers_is_yolo26(monkeypatch):
    checkpoint = restricted_load(CHECKPOINT)
    head = checkpoint["ema"].state["_modules"]["model"].state["_modules"]["23"]
    head.state["_modules"]["one2one_cv2"] = head.state["_modules"]["cv2"]
    monkeypatch.setattr(interop, "restricted_load", lambda path: checkpoint)
    with pytest.raises(CheckpointError, match=re.escape("is a YOLO26 model (YOLO11's layer list with an "
                                                        "end-to-end, NMS-free Detect head)")):
        load_ultralytics(CHECKPOINT)


def test_yolo11_names_map_to_our_modules():
    arch = interop.get_architecture("yolo11")
    assert interop.to_our_name("model.10.m.0.attn.pe.conv.weight", arch) == "backbone.stage4.3.m.0.attn.pe.conv.weight"
    assert interop.to_our_name("model.22.m.0.m.1.cv2.bn.bias", arch) == "neck.bottom_up5.m.0.m.1.cv2.bn.bias"
    assert interop.to_our_name("model.23.cv3.1.0.0.conv.weight", arch) == "head.cls_branches.1.0.0.conv.weight"
    assert interop.to_our_name("model.23.dfl.conv.weight", arch) is None
    assert interop.to_our_name("model.12.anything", arch) is None  # Concat has no weights
    assert interop.to_our_name("model.22.cv2.0.2.bias") == "head.box_branches.0.2.bias"  # no arch: YOLOv8's


# ----------------------------------------------------------------------------------- pretrained=, freeze=
def test_a_new_class_count_keeps_the_class_branch_body_and_copies_rows_by_name(imported):
    source = read_pretrained(CHECKPOINT)
    assert source[1]["arch"] == "yolo11"
    assert source_cls_width(source, "n", 3, arch="yolo11") == source_cls_width(source, "yolo11n", 3) == 80
    assert source_cls_width(source, "n", 3) is None and source_cls_width(source, "yolo11n", 80) is None
    model, messages = build_model("yolo11n", 3, cls_width=80), []
    counts = load_pretrained(model, CHECKPOINT, log=messages.append, names=["thing5", "cat", "thing7"], source=source)
    assert counts == {"loaded": 492, "reinitialised": 6, "skipped": 0, "not_in_checkpoint": 0, "remapped": 2}
    state, theirs = model.state_dict(), imported[0].state_dict()
    assert torch.equal(state["head.cls_branches.2.1.1.conv.weight"], theirs["head.cls_branches.2.1.1.conv.weight"])
    assert torch.equal(state["head.cls_branches.0.2.weight"][2], theirs["head.cls_branches.0.2.weight"][7])
    assert torch.allclose(state["head.cls_branches.0.2.bias"][1], torch.tensor(math.log(5 / 3 / 80 ** 2)))
    default = build_model("yolo11n", 3)  # 64 wide: only each level's first depthwise conv (on P3..P5) fits
    assert load_pretrained(default, CHECKPOINT, log=lambda m: None, source=source)["reinitialised"] == 60


def test_another_architecture_is_refused_naming_the_right_model(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint is yolo11n, the model is yolov8n; use model=yolo11n"):
        load_pretrained(build_model("n", 80), CHECKPOINT)
    save_checkpoint({"model": build_model("s", 2).state_dict(), "model_args": {"scale": "s", "num_classes": 2}},
                    tmp_path / "v8s.pt")
    with pytest.raises(CheckpointError, match="checkpoint is yolov8s, the model is yolo11s; use model=s"):
        load_pretrained(build_model("yolo11s", 2), tmp_path / "v8s.pt")
    with pytest.raises(CheckpointError, match="checkpoint is scale n, the model is scale s; use model=yolo11n"):
        load_pretrained(build_model("yolo11s", 80), CHECKPOINT)


def test_freeze_follows_yolo11_layer_indices():
    model = build_model("yolo11n", 3)
    assert freeze_prefixes(11, "yolo11")[-2:] == ["backbone.stage4.2.", "backbone.stage4.3."]  # SPPF, C2PSA
    assert freeze_prefixes(14, "yolo11") == freeze_prefixes(11, "yolo11") + ["neck.top_down4."]
    assert freeze_prefixes([23], "yolo11") == ["head."] and freeze_prefixes(10) == freeze_prefixes(10, "yolov8")
    frozen = freeze_layers(model, 11)  # model.0 .. model.10: YOLO11's whole backbone
    names = [n for n, _ in model.named_parameters()]
    assert frozen == sum(n.startswith("backbone.") for n in names) > 0
    assert all(p.requires_grad == (not n.startswith("backbone.")) for n, p in model.named_parameters())
    assert freeze_layers(build_model("yolo11n", 3), 23) == sum(not n.startswith("head.") for n in names)


# ----------------------------------------------------------------------------------- against ultralytics itself
def save_like_trainer(model, path, ultralytics):
    ema = deepcopy(model).half()
    torch.save({"epoch": 0, "model": None, "ema": ema, "train_args": {"imgsz": 224}, "date": "today",
                "version": ultralytics.__version__}, path)
    return path


def calibrated(model):
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.rand(2, 3, 160, 160))
        for box, cls in zip(model.model[-1].cv2, model.model[-1].cv3):  # boxes of tens to hundreds of px
            box[-1].weight.mul_(0.1)
            box[-1].bias.copy_((-1.0 * torch.arange(16, dtype=torch.float32)).repeat(4))
            cls[-1].weight.mul_(0.1)
            cls[-1].bias.fill_(-1.5)
    return model.eval()


@pytest.mark.parametrize("scale", ["n", "s"])
def test_raw_output_equals_live_ultralytics(tmp_path, ultralytics, scale):
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO
    from ultralytics.nn.tasks import load_checkpoint as ultralytics_load

    torch.manual_seed(0)
    path = save_like_trainer(calibrated(YOLO(f"yolo11{scale}.yaml").model), tmp_path / f"yolo11{scale}.pt", ultralytics)
    reference = ultralytics_load(str(path))[0].float().eval()
    ours, report = load_ultralytics(path)
    assert report["model_args"] == {**ARGS_N80, "scale": scale}
    images = torch.rand(2, 3, 160, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = ultralytics_xyxy(reference(images)[0]), ours(images)
        exact = ultralytics_xyxy(reference.double()(images.double())[0])
        got_exact = ours.double()(images.double())
    assert got.shape == expected.shape == (2, 735, 84)
    # float32: the nets agree to the last bit up to the box decode, whose sums run in another order: a few
    # ulps of the largest coordinate (6e-5 px per ulp at 256-512 px; on one thread 1.0e-4 was seen);
    # ultralytics' own float32 is 100x further than that from its float64
    ulp = torch.finfo(torch.float32).eps * expected[..., :4].abs().max()
    assert (got - expected)[..., :4].abs().max() <= 8 * ulp and (got - expected)[..., 4:].abs().max() < 1e-6
    assert (got_exact - exact).abs().max() < 1e-9
    assert expected[..., 4:].std() > 1e-2


@pytest.mark.parametrize("config, what", [
    ("yolo26n.yaml", "a YOLO26 model"), ("yolo12n.yaml", "a YOLO12 model (A2C2f blocks)"),
    ("yolov10n.yaml", "a YOLOv10 model (v10Detect head)"), ("yolo11n-seg.yaml", "a segmentation model"),
])
def test_real_files_of_other_families_are_refused(tmp_path, ultralytics, config, what):
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    path = save_like_trainer(YOLO(config).model, tmp_path / config.replace(".yaml", ".pt"), ultralytics)
    with pytest.raises(CheckpointError, match=re.escape(f"is {what}")):
        load_ultralytics(path)
