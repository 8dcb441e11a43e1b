"""check_overrides: each rule with its exact one-line message, every option of every group passes,
and a caller's own Hydra is left as it was."""
import importlib.resources
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from detector.engine.overrides import OverrideError, check_overrides

CONFIGS = Path(str(importlib.resources.files("detector.configs")))
LOSS_CLS = "loss_cls is one of bce, focal, qfl, vfl"
TASK_GROUPS = {"train": ["model", "data", "loss_cls", "loss_box", "dfl", "assigner", "optim", "sched", "experiment"],
               "eval": ["data"]}


def refused(task, overrides, config_dir=CONFIGS):
    """The message of the OverrideError, checked to be one line."""
    with pytest.raises(OverrideError) as info:
        check_overrides(task, overrides, config_dir)
    message = str(info.value)
    assert "\n" not in message
    return message


def options(group):
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def leaf_keys(node, prefix=""):
    """The dotted keys of the leaves of a mapping: {"a": {"b": 1}} -> ["a.b"]."""
    keys = []
    for name, value in node.items():
        key = f"{prefix}{name}"
        keys += leaf_keys(value, f"{key}.") if isinstance(value, dict) else [key]
    return keys


# ------------------------------------------------------------------------------ unknown keys
def test_misspelt_key_suggests_the_nearest():
    assert refused("train", ["epoch=1"]) == "epoch=1: no key epoch in train's config; did you mean epochs?"
    assert refused("train", ["warmup.epoch=1"]) == \
        "warmup.epoch=1: no key warmup.epoch in train's config; did you mean warmup.epochs?"


def test_nested_key_suggests_its_sibling():
    # the optimiser's key is lr (YOLOv8's lr0 is spelt lr here)
    assert refused("train", ["optim.lr0=0.01"]) == \
        "optim.lr0=0.01: no key optim.lr0 in train's config; did you mean optim.lr?"
    assert refused("train", ["lr=0.01"]) == \
        "lr=0.01: no key lr in train's config; did you mean optim.lr or sched.lrf?"
    assert refused("train", ["optm.lr=1"]) == \
        "optm.lr=1: no key optm.lr in train's config; did you mean optim.lr or optim?"
    check_overrides("train", ["optim.lr=0.01"], CONFIGS)


def test_nothing_near_says_so():
    assert refused("train", ["foo.bar=1"]) == \
        "foo.bar=1: no key foo.bar in train's config; check the spelling (--cfg job lists the keys)"
    assert refused("predict", ["data.root=x"]) == \
        "data.root=x: no key data.root in predict's config; check the spelling (--cfg job lists the keys)"


def test_plus_on_a_new_key_is_still_checked():
    assert refused("train", ["+epoch=1"]) == "+epoch=1: no key epoch in train's config; did you mean epochs?"
    assert refused("train", ["++epoch=1"]) == "++epoch=1: no key epoch in train's config; did you mean epochs?"


def test_plus_on_an_existing_key_says_drop_it():
    assert refused("train", ["+epochs=3"]) == "+epochs=3: epochs is already in train's config; drop the + (epochs=3)"
    check_overrides("train", ["++epochs=3"], CONFIGS)


def test_delete_needs_an_existing_key():
    assert refused("train", ["~pretrainde"]) == \
        "~pretrainde: no key pretrainde in train's config to delete; did you mean pretrained?"
    check_overrides("train", ["~pretrained", "~augment.shear"], CONFIGS)


def test_empty_key():
    assert refused("train", ["=3"]) == "=3: no key before the =; write key=value"


def test_parse_error_names_the_override():
    assert refused("train", ["x=[1,2"]) == (
        "x=[1,2: Hydra cannot parse it (no viable alternative at input '[1,2'); write key=value, +key=value, "
        "++key=value or ~key, and quote a value that holds special characters")
    assert refused("train", ["epochs=3", "a=b=c"]).startswith("a=b=c: Hydra cannot parse it (mismatched input '='")


# -------------------------------------------------------------------- keys of another option
def test_key_of_another_option_names_the_choice():
    assert refused("train", ["data.data_yaml=my.yaml"]) == "data.data_yaml=my.yaml: data.data_yaml needs data=yolo"
    assert refused("train", ["+data.data_yaml=my.yaml"]) == "+data.data_yaml=my.yaml: data.data_yaml needs data=yolo"
    assert refused("eval", ["ckpt=a.pt", "data.names=[a,b]"]) == "data.names=[a,b]: data.names needs data=yolo"
    assert refused("train", ["+loss_cls.gamma=1"]) == \
        "+loss_cls.gamma=1: loss_cls.gamma needs loss_cls=focal or loss_cls=vfl"
    check_overrides("train", ["data=yolo", "data.data_yaml=x.yaml"], CONFIGS)


def test_own_package_is_preferred_to_a_global_option():
    # experiment=shapes_ablation also sets data.num_train, on top of whatever data set is chosen
    assert refused("train", ["data=coco", "data.num_train=5"]) == "data.num_train=5: data.num_train needs data=shapes"


def test_global_package_keys_sit_at_the_top():
    assert refused("train", ["dfl=off", "dfl_loss.loss_weight=2"]) == \
        "dfl_loss.loss_weight=2: dfl_loss.loss_weight needs dfl=on"
    check_overrides("train", ["dfl=on", "dfl_loss.loss_weight=2"], CONFIGS)


def test_package_headers_of_a_config_tree(tmp_path):
    (tmp_path / "net").mkdir()
    (tmp_path / "app.yaml").write_text("defaults:\n  - _self_\n  - net: small\nsteps: 1\n")
    (tmp_path / "net" / "small.yaml").write_text("depth: 1\n")
    (tmp_path / "net" / "big.yaml").write_text("# a comment first\n# @package _global_\nbig_only: 1\n")
    (tmp_path / "net" / "wide.yaml").write_text("# @package net.inner\nwidth: 3\n")
    assert refused("app", ["big_only=2"], str(tmp_path)) == "big_only=2: big_only needs net=big"
    assert refused("app", ["net.inner.width=2"], tmp_path) == "net.inner.width=2: net.inner.width needs net=wide"
    check_overrides("app", ["net=wide", "net.inner.width=2", "steps=3"], tmp_path)
    assert refused("app", ["net=tall"], tmp_path) == "net=tall: no such option; net is one of big, small, wide"



def test_composition_error_names_the_choice(tmp_path):
    for folder in ("net", "head"):
        (tmp_path / folder).mkdir()
    (tmp_path / "app.yaml").write_text("defaults:\n  - _self_\n  - net: small\n  - head: a\nsteps: 1\n")
    (tmp_path / "net" / "small.yaml").write_text("depth: 1\n")
    (tmp_path / "net" / "bad.yaml").write_text("defaults:\n  - override /head: nope\ndepth: 2\n")
    (tmp_path / "head" / "a.yaml").write_text("k: 1\n")
    assert refused("app", ["head=a", "net=bad", "steps=2"], tmp_path).startswith(
        "net=bad: Hydra cannot compose app's config with it (In 'net/bad': ")

# ----------------------------------------------------------------- arguments of a component
def test_constructor_argument_not_in_the_config_is_accepted_with_plus():
    check_overrides("train", ["+optim.eps=1e-7"], CONFIGS)  # torch.optim.AdamW(eps=...)
    check_overrides("train", ["assigner=atss", "++assigner.eps=1e-8"], CONFIGS)  # ATSSAssigner(eps=...)
    assert refused("train", ["optim.eps=1e-7"]) == (
        "optim.eps=1e-7: optim.eps is an argument of torch.optim.AdamW that train's config does not set; "
        "add it with +optim.eps=1e-7")


def test_argument_the_component_does_not_take_is_refused():
    assert refused("train", ["optim=sgd", "+optim.eps=1e-7"]) == \
        "+optim.eps=1e-7: no key optim.eps in train's config; optim has lr, momentum, nesterov, weight_decay"


def test_required_argument_is_the_codes():
    assert refused("train", ["+assigner.num_classes=3"]) == (
        "+assigner.num_classes=3: num_classes is a required argument of detector.assigners.TaskAlignedAssigner "
        "that the code fills in; leave it out")


# ------------------------------------------------------------------------- group choices
def test_unknown_option_lists_the_options():
    assert refused("train", ["loss_cls=vf"]) == f"loss_cls=vf: no such option; {LOSS_CLS}"
    assert refused("train", ["experiment=shapes"]) == \
        "experiment=shapes: no such option; experiment is one of shapes_ablation, shapes_ablation_1k, yolov8_coco"


def test_sweep_of_choices_checks_every_value():
    assert refused("train", ["loss_cls=qfl,vf"]) == f"loss_cls=qfl,vf: no such option vf; {LOSS_CLS}"
    assert refused("train", ["loss_cls=qf,vf"]) == f"loss_cls=qf,vf: no such options qf, vf; {LOSS_CLS}"
    assert refused("train", ["loss_cls=glob(z*)"]) == f"loss_cls=glob(z*): no option matches; {LOSS_CLS}"
    assert refused("train", ["loss_cls=interval(0,1)"]) == \
        f"loss_cls=interval(0,1): a loss_cls choice is an option name, not an interval; {LOSS_CLS}"
    sweeps = ["loss_cls=qfl,vfl,focal,bce", "loss_cls=glob(*)", "experiment=shapes_ablation,yolov8_coco", "seed=0,1"]
    check_overrides("train", sweeps, CONFIGS)


def test_sweep_of_values_checks_the_key_only():
    check_overrides("train", ["seed=0,1,2", "epochs=range(1,4)", "optim.lr=interval(0.001,0.01)"], CONFIGS)
    assert refused("train", ["seeds=0,1"]) == \
        "seeds=0,1: no key seeds in train's config; did you mean seed or sched?"


def test_group_the_task_does_not_have():
    assert refused("predict", ["data=yolo"]) == \
        "data=yolo: predict's config has no data group; predict takes no group choice"
    assert refused("predict", ["+data=yolo"]) == \
        "+data=yolo: predict's config has no data group; predict takes no group choice"
    assert refused("eval", ["model=s"]) == "model=s: eval's config has no model group; its groups are data"


def test_plus_on_a_chosen_group_and_null_choice():
    assert refused("train", ["+experiment=shapes_ablation"]) == (
        "+experiment=shapes_ablation: experiment is already a group of train's config; "
        "drop the + (experiment=shapes_ablation)")
    assert refused("train", ["experiment=null"]) == (
        "experiment=null: Hydra cannot choose null for a group on the command line; "
        "write ~experiment to drop the choice")
    check_overrides("train", ["~experiment"], CONFIGS)


# ------------------------------------------------------------------------ accepted overrides
@pytest.mark.parametrize("task, overrides", [
    ("train", ["epochs=3", "optim.lr=0.01", "model=s", "loss_cls=vfl", "hydra.run.dir=x", "hydra/launcher=basic"]),
    ("train", ["experiment=shapes_ablation", "loss_cls=qfl,vfl,focal,bce", "seed=0,1", "warmup.min_iters=10"]),
    ("train", ["experiment=yolov8_coco", "data.root=/data/coco"]),  # the experiment chooses data=coco
    ("train", ["experiment=yolov8_coco", "data=yolo", "data.data_yaml=x.yaml"]),  # the command line wins
    ("train", ["data=yolo", "data.data_yaml=x.yaml", "data.val_split=test", "~augment.shear", "++ema.tau=100"]),
    ("eval", ["ckpt=a.pt", "data=yolo", "data.data_yaml=x.yaml", "batch_size=2", "hydra.run.dir=x"]),
    ("predict", ["ckpt=a.pt", "source=images/", "conf=0.5", "imgsz=640", "hydra.run.dir=x"]),
    ("export", ["ckpt=a.pt", "nms=true", "dynamic=true", "opset=18", "hydra.run.dir=x"]),
])
def test_good_overrides_pass(task, overrides):
    check_overrides(task, overrides, CONFIGS)


@pytest.mark.parametrize("task, group", [(task, group) for task, groups in TASK_GROUPS.items() for group in groups])
def test_every_option_of_every_group_passes_with_its_own_keys(task, group):
    """Each option, with each key its file sets (at the top for a _global_ file)."""
    for option in options(group):
        path = CONFIGS / group / f"{option}.yaml"
        content = OmegaConf.to_container(OmegaConf.load(path))
        content.pop("defaults", None)
        prefix = "" if "# @package _global_" in path.read_text() else f"{group}."
        check_overrides(task, [f"{group}={option}"] + [f"{key}=1" for key in leaf_keys(content, prefix)], CONFIGS)


def test_unknown_task():
    assert issubclass(OverrideError, ValueError)
    with pytest.raises(ValueError, match="unknown task 'trian'"):
        check_overrides("trian", [], CONFIGS)


# ------------------------------------------------------------------------------ Hydra state
def test_inside_an_initialized_hydra_the_callers_is_put_back(tmp_path):
    (tmp_path / "app.yaml").write_text("x: 1\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        # a choice combination no other test composes, so that these calls compose
        check_overrides("train", ["loss_box=iou", "assigner=simota", "sched=cosine", "model=x", "epochs=2"], CONFIGS)
        assert refused("train", ["model=x", "sched=cosine", "epoch=1"]).startswith("epoch=1: no key epoch")
        assert compose(config_name="app").x == 1
    assert not GlobalHydra.instance().is_initialized()


def test_without_hydra_none_is_left_initialized():
    check_overrides("train", ["loss_box=diou", "optim=sgd", "model=l", "optim.momentum=0.9"], CONFIGS)
    assert not GlobalHydra.instance().is_initialized()


def test_a_key_of_an_option_left_out_of_a_list_choice_names_the_option():
    """logger=[...] is a list choice (Hydra leaves it out of the choices): its keys still say what they need."""
    assert refused("train", ["logger=[tensorboard,wandb]", "logger.mlflow.experiment=x"]) == \
        "logger.mlflow.experiment=x: logger.mlflow.experiment needs logger=mlflow"
    check_overrides("train", ["logger=[tensorboard,mlflow]", "logger.mlflow.experiment=x"], CONFIGS)
