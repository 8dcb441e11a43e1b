"""A checkpoint's config is data, never code: a callable it names that is not the project's own is
refused by every reader (eval, resume, predict, export, pretrained=, the API), and never runs."""
import copy
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

import detector
from detector.engine.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from detector.engine.pretrained import read_pretrained
from detector.engine.run import resume_config
from detector.engine.saved_config import SavedConfigError, allowed_targets, checked_config
from detector.engine.trainer import train
from tests.cli_runner import run_cli

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
# Where the project's configs put a component, and therefore where a crafted file would put its payload.
COMPONENT_NODES = ["model", "data", "loss_cls", "loss_box", "dfl_loss", "assigner", "optim", "sched",
                   "logger.tensorboard", "logger.csv", "logger.mlflow", "logger.wandb"]


def compose_train(overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def tiny_overrides(tmp_path):
    return [f"data.root={tmp_path / 'shapes'}", "data.num_train=4", "data.num_val=2", "data.min_size=64",
            "data.max_size=96", "imgsz=64", "batch_size=4", "workers=0", "progress=false", "close_mosaic=1",
            "warmup.min_iters=1", "epochs=1", "device=cpu", "cache=off"]


@pytest.fixture(scope="module")
def genuine(tmp_path_factory):
    """A last.pt written by the trainer (one epoch of a tiny shapes set): (path, its state)."""
    tmp_path = tmp_path_factory.mktemp("saved_config")
    cfg = compose_train(tiny_overrides(tmp_path))
    train(cfg, tmp_path / "run")
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    return path, torch.load(path, weights_only=True)


def payloads(marker: Path) -> dict:
    """Callables Hydra 1.3.8's block-list lets through: a process start (``touch marker``, run by a private stdlib
    helper) and a file write, each leaving ``marker``."""
    return {"process": {"_target_": "uuid._get_command_stdout", "_args_": ["touch", str(marker)]},
            "file": {"_target_": "numpy.savetxt", "fname": str(marker), "X": [1.0]}}


def crafted(genuine, tmp_path, edit) -> tuple[Path, Path]:
    """A copy of the genuine last.pt whose config ``edit(config, marker)`` changed: (its path, the marker)."""
    _, state = genuine
    state = {k: v for k, v in state.items() if k not in ("format", "train_state")}  # refused before it is read
    state["config"] = copy.deepcopy(state["config"])
    marker = tmp_path / "ran"
    edit(state["config"], marker)
    path = tmp_path / "crafted" / "last.pt"
    save_checkpoint(state, path)
    return path, marker


def test_the_payloads_are_live_when_instantiated(tmp_path):
    """What the readers refuse is real: Hydra's instantiate runs both payloads."""
    for kind, payload in payloads(tmp_path / "ran").items():
        instantiate(OmegaConf.create(payload))
        assert (tmp_path / "ran").exists(), kind
        (tmp_path / "ran").unlink()


def test_the_allow_list_is_the_config_tree():
    allowed = allowed_targets()
    assert allowed["loss_cls"] == {"detector.losses.modules.BCELoss": False, "detector.losses.modules.FocalLoss": False,
                                   "detector.losses.modules.QualityFocalLoss": False,
                                   "detector.losses.modules.VarifocalLoss": False}
    assert allowed["dfl_loss"] == {"detector.losses.modules.DistributionFocalLoss": False}  # a _global_ option
    assert allowed["optim"] == {"torch.optim.AdamW": True, "torch.optim.SGD": True}
    assert set(allowed) == set(COMPONENT_NODES)


def option_overrides():
    for group in ("model", "data", "loss_cls", "loss_box", "dfl", "assigner", "optim", "sched", "experiment"):
        for path in sorted((CONFIGS / group).glob("*.yaml")):
            yield f"{group}={path.stem}"


@pytest.mark.parametrize("option", list(option_overrides()))
def test_every_option_of_every_group_passes_unchanged(option):
    cfg = compose_train([option, "data.root=/data/x"] if "coco" in option else [option])
    saved = OmegaConf.to_container(cfg, resolve=True)
    assert checked_config(copy.deepcopy(saved), "test") == saved


@pytest.mark.parametrize("node", COMPONENT_NODES)
@pytest.mark.parametrize("kind", ["process", "file"])
def test_a_foreign_callable_in_any_group_is_refused_by_every_reader(genuine, tmp_path, node, kind):
    def edit(config, marker):
        config[node] = payloads(marker)[kind]

    path, marker = crafted(genuine, tmp_path, edit)
    target = payloads(marker)[kind]["_target_"]
    readers = {
        "read_checkpoint": lambda: read_checkpoint(path),
        "load_checkpoint (eval, export, predict)": lambda: load_checkpoint(path),
        "resume": lambda: resume_config(OmegaConf.create({"resume": str(path)}), []),
        "pretrained=": lambda: read_pretrained(path),
        "the API": lambda: detector.Detector(path),
    }
    for name, read in readers.items():
        with pytest.raises(SavedConfigError) as error:
            read()
        message = str(error.value)
        assert str(path) in message and f"{node}._target_" in message and target in message, (name, message)
    assert not marker.exists()


@pytest.mark.parametrize("case", ["nested", "root", "interpolation", "partial", "call_key", "object_key", "args"])
def test_other_ways_to_smuggle_a_call_are_refused(genuine, tmp_path, case):
    def edit(config, marker):
        payload = payloads(marker)["process"]
        if case == "nested":  # instantiate recurses into a component's arguments
            config["data"]["transforms"] = payload
        elif case == "root":
            config.update(payload)
        elif case == "interpolation":  # oc.create would build the node after a check of the raw text
            config["loss_cls"]["loss_weight"] = "${oc.create:{_target_: uuid._get_command_stdout, _args_: [touch, x]}}"
        elif case == "partial":
            config["loss_cls"]["_partial_"] = True
        elif case == "call_key":
            config["loss_cls"]["_recursive_"] = False
        elif case == "object_key":
            config["augment"] = {"_args_": [1]}
        elif case == "args":
            config["sched"]["_args_"] = [payload]

    path, marker = crafted(genuine, tmp_path, edit)
    with pytest.raises(SavedConfigError, match=str(path).replace("\\", "\\\\")):
        load_checkpoint(path)
    with pytest.raises(SavedConfigError):
        resume_config(OmegaConf.create({"resume": str(path)}), [])
    assert not marker.exists()


def test_the_genuine_checkpoint_loads_and_resumes(genuine):
    path, state = genuine
    model, config = load_checkpoint(path)
    assert config == state["config"] and model.num_classes == state["model_args"]["num_classes"]
    cfg, run_dir = resume_config(OmegaConf.create({"resume": str(path)}), [])
    assert cfg.loss_cls._target_ == "detector.losses.modules.BCELoss" and run_dir == path.parent.parent.resolve()


@pytest.mark.parametrize("args", [{"num_classes": 10**9}, {"reg_max": 10**6}, {"scale": "zz"},
                                  {"num_classes": "3"}, {"num_classes": 5}])
def test_model_args_are_checked_against_the_weights_before_a_model_is_built(genuine, tmp_path, args):
    _, state = genuine
    state = {k: v for k, v in state.items() if k != "format"}
    state["model_args"] = {**state["model_args"], **args}
    path = tmp_path / "bad_args.pt"
    save_checkpoint(state, path)
    with pytest.raises(CheckpointError, match="model_args"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="model_args"):
        read_pretrained(path)


def test_a_stride_zero_tensor_is_refused(tmp_path):
    huge = torch.zeros(1).expand(10**8)  # 4 bytes of storage viewed as 100 M elements
    save_checkpoint({"model": {"w": huge}}, tmp_path / "expand.pt")
    with pytest.raises(CheckpointError, match="views more elements than its storage"):
        read_checkpoint(tmp_path / "expand.pt")


def test_resume_with_weights_that_do_not_fit_their_config_is_named(genuine, tmp_path):
    _, state = genuine
    state = {k: v for k, v in copy.deepcopy(state).items() if k != "format"}
    state["config"]["model"]["scale"] = "s"  # the weights are an n model's
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    save_checkpoint(state, path)
    cfg, run_dir = resume_config(OmegaConf.create({"resume": str(path)}), [])
    with pytest.raises(CheckpointError, match="do not fit the model"):
        train(cfg, run_dir)


@pytest.mark.e2e
def test_every_command_refuses_the_file_with_one_error_line(genuine, tmp_path):
    def edit(config, marker):
        config["loss_cls"] = payloads(marker)["process"]

    path, marker = crafted(genuine, tmp_path, edit)
    image = next((genuine[0].parents[2] / "shapes").rglob("*.jpg"))
    commands = {"eval.py": [f"ckpt={path}"], "export.py": [f"ckpt={path}"],
                "predict.py": [f"ckpt={path}", f"source={image}"], "train.py": [f"resume={path}"]}
    for tool, args in commands.items():
        result = run_cli(tool, *args, f"hydra.run.dir={tmp_path / tool}")
        stderr = result.stderr
        assert result.returncode == 1, (tool, stderr[-2000:])
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("error: checkpoint") and "loss_cls._target_" in last, (tool, last)
        assert "uuid._get_command_stdout" in last and "Traceback" not in stderr, (tool, stderr[-2000:])
    assert not marker.exists()


@pytest.mark.parametrize("value", [5, [1, 2], "detector.data.yolo.yolo_splits"])
def test_a_component_that_is_not_a_mapping_is_named(value):
    with pytest.raises(SavedConfigError, match="config key data is a"):
        checked_config({"data": value, "epochs": 3}, "checkpoint x.pt")
    plain = {"dfl_loss": None, "model": {"scale": "n", "num_classes": 80, "reg_max": 16}}  # as tools/convert.py writes
    assert checked_config(copy.deepcopy(plain), "x") == plain
