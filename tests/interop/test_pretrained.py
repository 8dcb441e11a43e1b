"""pretrained= and freeze=: which tensors load, which are re-initialised, which layers freeze."""
import math
import re

import pytest
import torch

from detector import build_model
from detector.engine.checkpoint import CheckpointError, save_checkpoint
from detector.engine.optim import param_groups
from detector.engine.pretrained import freeze_layers, freeze_prefixes, load_pretrained
from detector.interop import load_ultralytics


@pytest.fixture(scope="module")
def imported(ul_checkpoint):
    return load_ultralytics(ul_checkpoint)[0]


def test_same_class_count_loads_every_tensor(ul_checkpoint, imported):
    model, messages = build_model("n", 80), []
    counts = load_pretrained(model, ul_checkpoint, log=messages.append)
    assert counts == {"loaded": 354, "reinitialised": 0, "skipped": 0, "not_in_checkpoint": 0}
    assert messages == [f"pretrained {ul_checkpoint}: loaded 354, re-initialised 0, skipped 0 tensors"]
    for name, value in imported.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


def test_new_class_count_reinitialises_the_class_branch_with_the_prior_bias(ul_checkpoint, imported):
    torch.manual_seed(0)
    model, messages = build_model("n", 3), []
    counts = load_pretrained(model, ul_checkpoint, log=messages.append)
    # n's class branch is max(64, min(C, 100)) wide: 80 at 80 classes, 64 at 3, so all of it is new:
    # 3 levels x (2 Conv x (weight + 4 BN tensors + num_batches_tracked) + final weight + bias) = 42
    assert counts == {"loaded": 312, "reinitialised": 42, "skipped": 0, "not_in_checkpoint": 0}
    assert "loaded 312, re-initialised 42, skipped 0 tensors (checkpoint has 80 classes, the model 3" in messages[0]
    state, source = model.state_dict(), imported.state_dict()
    for name, value in state.items():
        if name.startswith("head.cls_branches."):
            continue
        assert torch.equal(value, source[name]), name
    for level, stride in enumerate((8, 16, 32)):
        bias = model.head.cls_branches[level][2].bias
        assert torch.allclose(bias, torch.full((3,), math.log(5 / 3 / (640 / stride) ** 2)))
        assert torch.allclose(model.head.box_branches[level][2].bias, imported.head.box_branches[level][2].bias)


def test_s_keeps_the_class_branch_body_when_only_the_count_changes(tmp_path):
    """At scale s the class branch is 128 wide for any count up to 128: only the final conv is new."""
    torch.manual_seed(1)
    source = build_model("s", 80)
    save_checkpoint({"model": source.state_dict(), "model_args": {"scale": "s", "num_classes": 80, "reg_max": 16}},
                    tmp_path / "s80.pt")
    model = build_model("s", 5)
    counts = load_pretrained(model, tmp_path / "s80.pt", log=lambda message: None)
    assert counts["reinitialised"] == 6 and counts["skipped"] == 0  # 3 levels x (weight, bias)
    assert torch.equal(model.head.cls_branches[1][0].conv.weight, source.head.cls_branches[1][0].conv.weight)


def test_our_converted_checkpoint_loads_like_the_ultralytics_file(tmp_path, ul_checkpoint, imported):
    save_checkpoint({"model": imported.state_dict(), "model_args": {"scale": "n", "num_classes": 80, "reg_max": 16}},
                    tmp_path / "ours.pt")
    model = build_model("n", 3)
    counts = load_pretrained(model, tmp_path / "ours.pt", log=lambda message: None)
    assert (counts["loaded"], counts["reinitialised"]) == (312, 42)


def test_a_scale_that_contradicts_the_checkpoint_names_the_right_one(ul_checkpoint):
    with pytest.raises(CheckpointError, match="checkpoint is scale n, the model is scale s; use model=n"):
        load_pretrained(build_model("s", 80), ul_checkpoint)


def test_a_missing_pretrained_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=re.escape(f"pretrained={tmp_path / 'nope.pt'}: file not found")):
        load_pretrained(build_model("n", 3), tmp_path / "nope.pt")


def test_freeze_follows_ultralytics_layer_indices():
    model = build_model("n", 3)
    names = [n for n, _ in model.named_parameters()]
    assert freeze_layers(model, 0) == 0
    assert all(p.requires_grad for p in model.parameters())
    frozen = freeze_layers(model, 10)  # model.0 .. model.9: the whole backbone, SPPF included
    assert frozen == sum(n.startswith("backbone.") for n in names) > 0
    assert all(p.requires_grad == (not n.startswith("backbone.")) for n, p in model.named_parameters())
    assert freeze_prefixes(2) == ["backbone.stem.", "backbone.stage1.0."]
    assert freeze_prefixes(13) == freeze_prefixes(12)[:] + ["neck.top_down4."]
    assert freeze_prefixes([22]) == ["head."]
    everything = build_model("n", 3)
    assert freeze_layers(everything, 23) == len(names)
    with pytest.raises(ValueError, match="freeze=-1"):
        freeze_prefixes(-1)


def test_the_optimizer_skips_frozen_parameters():
    model = build_model("n", 3)
    freeze_layers(model, 22)  # all but the head
    groups = param_groups(model, weight_decay=5e-4)
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert in_groups == {id(p) for p in model.head.parameters()}


def test_a_new_class_count_keeps_the_checkpoints_class_branch_width(ul_checkpoint, imported):
    """ultralytics 8.4: the hidden layers of the class branch transfer, only its last conv is new."""
    from detector.engine.pretrained import read_pretrained, source_cls_width

    source = read_pretrained(ul_checkpoint)
    assert source_cls_width(source, "n", 3) == 80 and source_cls_width(source, "n", 80) is None
    assert source_cls_width(source, "s", 3) is None  # another scale: nothing of the branch can transfer
    model = build_model("n", 3, cls_width=80)
    counts = load_pretrained(model, ul_checkpoint, log=lambda message: None, source=source)
    # 3 levels x 2 hidden Conv x (weight + 4 BN tensors + num_batches_tracked) load; 3 x (weight + bias) are new
    assert counts == {"loaded": 348, "reinitialised": 6, "skipped": 0, "not_in_checkpoint": 0}
    state, theirs = model.state_dict(), imported.state_dict()
    assert torch.equal(state["head.cls_branches.1.1.conv.weight"], theirs["head.cls_branches.1.1.conv.weight"])
    assert torch.allclose(state["head.cls_branches.0.2.bias"], torch.full((3,), math.log(5 / 3 / 80 ** 2)))


def test_classifier_rows_are_copied_by_class_name(ul_checkpoint, imported):
    model, messages = build_model("n", 3, cls_width=80), []
    counts = load_pretrained(model, ul_checkpoint, log=messages.append, names=["Dog ", "person", "class7"])
    assert counts["remapped"] == 2 and "copied by name for 2 of 3 classes: Dog , person" in messages[0]
    state, theirs = model.state_dict(), imported.state_dict()
    for level in range(3):
        weight, bias = f"head.cls_branches.{level}.2.weight", f"head.cls_branches.{level}.2.bias"
        assert torch.equal(state[weight][0], theirs[weight][16]) and torch.equal(state[bias][1], theirs[bias][0])
        assert torch.equal(state[bias][2], torch.tensor(math.log(5 / 3 / (640 / (8 * 2 ** level)) ** 2)))
    default = build_model("n", 3)  # default width 64: rows cannot be copied into another width
    assert "remapped" not in load_pretrained(default, ul_checkpoint, log=lambda m: None, names=["dog", "person", "x"])


def test_a_file_ultralytics_fine_tuned_to_another_class_count_imports(ul_checkpoint, crafted, tmp_path):
    """ultralytics 8.4 keeps the 80-wide class branch when it fine-tunes this 80-class n model to 1 class."""
    from detector.engine.checkpoint import load_checkpoint
    from detector.interop.unpickler import restricted_load

    checkpoint = restricted_load(ul_checkpoint)
    head = checkpoint["model"].state["_modules"]["model"].state["_modules"]["22"]
    head.state["nc"] = 1
    for level in range(3):
        conv = head.state["_modules"]["cv3"].state["_modules"][str(level)].state["_modules"]["2"]
        conv.state["_parameters"] = {name: tensor[:1].clone() for name, tensor in conv.state["_parameters"].items()}
    checkpoint.pop("ema", None)
    path = crafted.resave(checkpoint, tmp_path / "fine_tuned.pt")
    model, config = load_checkpoint(path)
    assert model.num_classes == 1 and model.head.cls_width == 80 and config["model"]["cls_width"] == 80
    imported = load_ultralytics(ul_checkpoint)[0].state_dict()
    assert torch.equal(model.state_dict()["head.cls_branches.2.1.conv.weight"],
                       imported["head.cls_branches.2.1.conv.weight"].float())
