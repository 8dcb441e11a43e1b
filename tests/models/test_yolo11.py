"""YOLO11 beside YOLOv8 through the model registry: names, scales, blocks, parameter counts (ours as
hard numbers; against ultralytics' yaml where ultralytics is importable), the head with every loss and
assigner, fusion and ONNX export."""
import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from detector import build_model
from detector.engine import build
from detector.models import HeadOutput
from detector.models.layers import Bottleneck
from detector.models.registry import architectures, get_architecture, model_names, resolve
from detector.models.summary import model_summary
from detector.models.yolo11 import C2PSA, Attention, C3k, C3k2

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# Ours at 80 classes. ultralytics' summary counts 16 more at every scale: its DFL conv, a frozen 0..15
# ramp our decode computes without weights (its "gradients" figure equals ours).
YOLO11_PARAMS = {"n": 2_624_064, "s": 9_458_736, "m": 20_114_672, "l": 25_372_144, "x": 56_966_160}
DFL_RAMP = 16
# layers 16, 19, 22 (yaml 256, 512, 1024: times the width, capped at max_channels first)
NECK_WIDTHS = {"n": (64, 128, 256), "s": (128, 256, 512), "m": (256, 512, 512), "l": (256, 512, 512),
               "x": (384, 768, 768)}


def calibrated(model):
    """BN statistics from random batches and tamed last layers, so outputs vary as a trained net's do."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.rand(2, 3, 64, 96))
        for box, cls in zip(model.head.box_branches, model.head.cls_branches):
            box[-1].weight.mul_(0.5)
            box[-1].bias.copy_((-0.5 * torch.arange(model.reg_max, dtype=torch.float32)).repeat(4))
            cls[-1].weight.mul_(0.1)
            cls[-1].bias.fill_(-1.5)
    return model.eval()


@pytest.fixture(scope="module")
def yolo11n():
    torch.manual_seed(0)
    return calibrated(build_model("yolo11n", num_classes=3))


# ----------------------------------------------------------------------------------- registry
def test_names_resolve_to_architecture_and_scale():
    assert [a for a in architectures()] == ["yolov8", "yolo11"]
    assert model_names() == [f"{a}{s}" for a in ("yolov8", "yolo11") for s in "nsmlx"]
    assert resolve("n") == (get_architecture("yolov8"), "n")  # a bare scale is YOLOv8
    assert resolve("yolov8x") == (get_architecture("yolov8"), "x")
    assert resolve("yolo11m") == (get_architecture("yolo11"), "m")
    assert resolve("s", arch="yolo11") == (get_architecture("yolo11"), "s")
    with pytest.raises(ValueError, match="'yolo11n' is a YOLO11 name, but arch='yolov8'"):
        resolve("yolo11n", arch="yolov8")
    with pytest.raises(ValueError, match="unknown architecture 'yolo12'; valid: yolov8, yolo11"):
        build_model("n", arch="yolo12")
    with pytest.raises(ValueError, match="unknown model 'yolo12n'.*yolo11x"):
        build_model("yolo12n")


def test_build_model_records_the_architecture():
    v8, named, v11 = build_model("n", 5), build_model("yolov8n", 5), build_model("yolo11n", num_classes=5)
    assert (v8.arch, v8.scale, v8.name) == (named.arch, named.scale, named.name) == ("yolov8", "n", "yolov8n")
    assert {k: v.shape for k, v in v8.state_dict().items()} == {k: v.shape for k, v in named.state_dict().items()}
    assert (v11.arch, v11.scale, v11.name) == ("yolo11", "n", "yolo11n")
    assert build_model("n", 5, arch="yolo11").name == "yolo11n"


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml")))
def test_every_model_config_names_its_model(option):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={option}"])
    arch, scale = resolve(cfg.model.scale, cfg.model.get("arch"))
    expected = option if option.startswith("yolo") else f"yolov8{option}"
    assert arch.model_name(scale) == expected
    if scale == "n":  # the others build in test_parameter_counts
        assert instantiate(cfg.model, num_classes=80).name == expected


# ----------------------------------------------------------------------------------- architecture
@pytest.mark.parametrize("scale", list(YOLO11_PARAMS))
def test_parameter_counts(scale):
    model = build_model(f"yolo11{scale}", num_classes=80)
    assert sum(p.numel() for p in model.parameters()) == YOLO11_PARAMS[scale]
    assert model.head.depthwise_cls and model.neck.out_channels == NECK_WIDTHS[scale]


@pytest.mark.parametrize("scale", list(YOLO11_PARAMS))
def test_parameter_counts_and_tensors_equal_ultralytics_yaml(scale):
    pytest.importorskip("ultralytics", reason="ultralytics is not installed (optional: pip install .[compat])")
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    from detector.interop.ultralytics import to_our_name

    theirs = YOLO(f"yolo11{scale}.yaml").model
    assert sum(p.numel() for p in theirs.parameters()) == YOLO11_PARAMS[scale] + DFL_RAMP
    ours = {k: v.shape for k, v in build_model(f"yolo11{scale}").state_dict().items()}
    mapped = {to_our_name(k, get_architecture("yolo11")): v.shape for k, v in theirs.state_dict().items()}
    assert mapped.pop(None) == (1, 16, 1, 1)  # the DFL ramp, the one tensor without a counterpart
    assert mapped == ours


def test_flops_of_n_at_640():
    """yolo11.yaml's 6.6 GFLOPs (ultralytics' own counter gives 6.67 here, 0.12 above ours, as for YOLOv8n)."""
    summary = model_summary(build_model("yolo11n"), imgsz=640)
    assert summary["gflops"] == pytest.approx(6.6, abs=0.15) and summary["name"] == "yolo11n"


def test_c3k_blocks_where_ultralytics_parser_puts_them():
    """yolo11.yaml asks for C3k at layers 6, 8 and 22; the parser forces them everywhere at m/l/x."""
    def c3k_layers(model):
        return sorted(name for name, m in model.named_modules() if isinstance(m, C3k2) and isinstance(m.m[0], C3k))

    assert c3k_layers(build_model("yolo11n")) == ["backbone.stage3.1", "backbone.stage4.1", "neck.bottom_up5"]
    everywhere = [name for name, m in build_model("yolo11m").named_modules() if isinstance(m, C3k2)]
    assert c3k_layers(build_model("yolo11m")) == sorted(everywhere) and len(everywhere) == 8
    n = build_model("yolo11n")
    early = n.backbone.stage1[1]  # layer 2: C3k2(c3k=False, e=0.25), bottlenecks at half width
    assert early.hidden == 16 and isinstance(early.m[0], Bottleneck) and early.m[0].cv1.conv.out_channels == 8
    assert len(build_model("yolo11l").backbone.stage1[1].m) == 2 and len(early.m) == 1  # depth 1.0 vs 0.5


def test_attention_widths_and_heads():
    psa = build_model("yolo11n").backbone.stage4[3]
    assert isinstance(psa, C2PSA) and len(psa.m) == 1 and psa.hidden == 128
    attention = psa.m[0].attn
    assert (attention.num_heads, attention.head_dim, attention.key_dim) == (2, 64, 32)  # one head per 64 channels
    assert attention.qkv.conv.out_channels == 128 + 2 * 2 * 32
    assert attention.pe.conv.groups == 128  # depthwise positional term
    wide = build_model("yolo11x").backbone.stage4[3]
    assert len(wide.m) == 2 and wide.m[0].attn.num_heads == 384 // 64


def test_attention_equals_per_head_softmax_attention():
    torch.manual_seed(0)
    attention = Attention(128, num_heads=2).eval()
    x = torch.randn(2, 128, 3, 5)
    with torch.no_grad():
        out = attention(x)
        qkv = attention.qkv(x).flatten(2)  # [B, h * (2 kd + hd), N], per head [q | k | v]
        heads = []
        for q, k, v in (part.split((32, 32, 64), 1) for part in qkv.chunk(2, 1)):
            weights = torch.softmax(torch.einsum("bdq,bdk->bqk", q, k) / 32 ** 0.5, dim=-1)  # [B, N, N]
            heads.append(torch.einsum("bdk,bqk->bdq", v, weights))  # [B, hd, N]
        values = torch.cat([part.split((32, 32, 64), 1)[2] for part in qkv.chunk(2, 1)], 1).view_as(x)
        expected = attention.proj(torch.cat(heads, 1).view_as(x) + attention.pe(values))
    assert torch.allclose(out, expected, atol=1e-5)


# ----------------------------------------------------------------------------------- head, losses, export
def test_head_output_works_with_every_loss_and_assigner(yolo11n):
    images = torch.rand(2, 3, 64, 64)
    boxes = torch.tensor([[[4.0, 6.0, 40.0, 30.0], [20.0, 20.0, 60.0, 62.0]], [[10.0, 10.0, 30.0, 50.0], [0, 0, 0, 0]]])
    labels, mask = torch.tensor([[0, 2], [1, 0]]), torch.tensor([[True, True], [True, False]])
    model = copy.deepcopy(yolo11n).train()
    out = model(images)
    assert isinstance(out, HeadOutput) and out.cls_logits.shape == (2, 84, 3) and out.box_dist.shape == (2, 84, 4, 16)
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        configs = [compose(config_name="train", overrides=["model=yolo11n", f"loss_cls={c}", f"assigner={a}",
                                                           f"loss_box={b}"])  # each option of each group once
                   for c, a, b in (("bce", "tal", "ciou"), ("focal", "atss", "giou"), ("qfl", "simota", "diou"),
                                   ("vfl", "tal", "iou"))]
    for cfg in configs:
        leaf = HeadOutput(out.cls_logits.detach().requires_grad_(), out.box_dist.detach().requires_grad_(),
                          out.anchor_points, out.strides)
        criterion = build.build_criterion(cfg, 3)
        losses = criterion(leaf, labels, boxes, mask)
        assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_box"] > 0, cfg.assigner
        losses["loss"].backward()
        assert torch.isfinite(leaf.cls_logits.grad).all() and leaf.box_dist.grad.abs().sum() > 0
    criterion(model(images), labels, boxes, mask)["loss"].backward()  # and through the whole net
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(grads) == len(list(model.parameters())) and all(torch.isfinite(g).all() for g in grads)


def test_dfl_off_builds_a_yolo11_head_without_bins():
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["model=yolo11n", "dfl=off"])
    model = instantiate(cfg.model, num_classes=2).train()
    assert model.arch == "yolo11" and model(torch.rand(1, 3, 64, 64)).box_dist.shape == (1, 84, 4, 1)


def test_fused_equals_unfused(yolo11n):
    """Folding BN into the convs (grouped ones and those without activation included) is exact: in float64
    the outputs agree to rounding."""
    model = copy.deepcopy(yolo11n).double()
    images = torch.rand(2, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        expected = model(images)
        fused = model.fuse()
        got = fused(images)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert (got - expected).abs().max() < 1e-8 and expected[..., 4:].std() > 1e-3


def test_onnx_export_traces_the_attention_at_any_size(yolo11n, tmp_path):
    """Exported at 64x64 with dynamic axes, run at 96x128: the attention's H * W is not baked into the graph.
    onnxruntime is within float32 rounding of the exact (float64) output: at most twice PyTorch's own
    float32 error, or 1e-4 of the outputs' magnitude (pixels up to the image size; 1 for the scores),
    whichever is larger, for the boxes and the scores each."""
    pytest.importorskip("onnxruntime")
    from detector.export import OnnxDetector, export_onnx

    detector = OnnxDetector(export_onnx(yolo11n, tmp_path / "yolo11n.onnx", imgsz=64, dynamic=True))
    generator = torch.Generator().manual_seed(0)  # the same images whatever ran before on this worker
    for shape in ((1, 3, 64, 64), (2, 3, 96, 128)):
        images = torch.rand(*shape, generator=generator)
        with torch.no_grad():
            single = yolo11n(images).numpy()
            exact = copy.deepcopy(yolo11n).double()(images.double()).numpy()
        got = detector(images.numpy())["predictions"]
        assert got.shape == single.shape == (shape[0], sum(shape[2] * shape[3] // s ** 2 for s in (8, 16, 32)), 7)
        for part in (np.s_[..., :4], np.s_[..., 4:]):
            bound = max(2 * np.abs(single[part] - exact[part]).max(), 1e-4 * max(np.abs(exact[part]).max(), 1.0))
            assert np.abs(got[part] - exact[part]).max() <= bound, part
