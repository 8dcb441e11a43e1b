"""The ``detector`` command: one entry point for every task (``python -m detector`` and
``tools/*.py`` are the same command).

    detector train [OVERRIDES]                 train (Hydra overrides: model=s epochs=50 loss_cls=vfl ...)
    detector train -m loss_cls=qfl,vfl         a sweep, one run folder per arm
    detector val ckpt=best.pt [OVERRIDES]      COCO evaluation (alias: eval)
    detector predict ckpt=best.pt source=photos/
    detector export ckpt=best.pt [nms=true]    ONNX (or format=openvino, int8=true), checked against PyTorch
    detector show-data [OVERRIDES] [count=16]  a grid of augmented training images
    detector convert yolov8n.pt yolov8n_det.pt an ultralytics checkpoint to ours
    detector export-yolo OUT [OVERRIDES]       a data set in ultralytics' YOLO layout
    detector compare data.yaml --epochs 60     ours against ultralytics' YOLOv8, same budget
    detector ablate runs/multirun/<date>       a sweep's table with Welch tests
    detector bench [NAMES] [--quick]           benchmarks (from a source checkout)

Overrides are checked before anything runs (``epoch=3`` -> did you mean epochs?); ``--cfg job``
prints the composed config and runs nothing; ``detector <command> --help`` lists its options.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

# Hydra commands: (entry config, what it does)
HYDRA_COMMANDS = {
    "train": ("train", "train a detector"),
    "val": ("eval", "evaluate a checkpoint with the COCO metric"),
    "eval": ("eval", "evaluate a checkpoint with the COCO metric (alias of val)"),
    "predict": ("predict", "detect objects in images with a checkpoint or an exported ONNX file"),
    "export": ("export", "export a checkpoint to ONNX or OpenVINO (INT8 too) and check it"),
    "show-data": ("train", "write a grid of augmented training images with their boxes"),
}
# argparse commands: module of detector.cli (``parser()`` and ``run(args)``), what it does
ARGPARSE_COMMANDS = {
    "convert": ("detector.cli.convert", "convert an ultralytics YOLOv8 checkpoint to ours"),
    "export-yolo": ("detector.cli.export_yolo", "write a data set in ultralytics' YOLO layout"),
    "compare": ("detector.cli.compare", "train ours and ultralytics' YOLOv8 on the same data and budget"),
    "ablate": ("detector.cli.ablate", "collect a sweep into a table with Welch tests"),
    "bench": ("benchmarks.cli", "speed and memory benchmarks (a source checkout's benchmarks/ folder)"),
}
# Hydra's own flags: those that take a value, and those that do not
HYDRA_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                     "--config-dir", "-cd", "--info", "-i", "--experimental-rerun", "--shell-completion", "-sc"}
HYDRA_FLAGS = {"-m", "--multirun", "--resolve", "--run", "-r", "--hydra-help", "--version"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(overview())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command in HYDRA_COMMANDS:
        return run_hydra_command(command, rest)
    if command in ARGPARSE_COMMANDS:
        module = command_module(command)
        args = parse(module, rest)
        return int(module.run(args) or 0)
    print(f"error: no command {command!r}; the commands are {', '.join([*HYDRA_COMMANDS, *ARGPARSE_COMMANDS])} "
          "(detector --help)", file=sys.stderr)
    return 2


def check_command(argv: list[str]) -> None:
    """Check a command as ``main`` would read it, running nothing: a Hydra command's overrides are
    checked and its config composed; an argparse command's arguments are parsed. Raises
    OverrideError (a ValueError) or SystemExit."""
    from detector.engine.compose import compose_task

    command, rest = argv[0], list(argv[1:])
    if command in HYDRA_COMMANDS:
        config_name, overrides, flags = split_hydra_arguments(command, rest)
        overrides, _ = own_keys(command, overrides)
        check_hydra_overrides(config_name, overrides)
        compose_task(config_name, first_job(overrides) if "-m" in flags or "--multirun" in flags else overrides)
        return
    if command not in ARGPARSE_COMMANDS:
        raise SystemExit(f"error: no command {command!r}")
    module = command_module(command)
    args = parse(module, rest)
    if hasattr(module, "check"):
        module.check(args)


# ------------------------------------------------------------------------------------ Hydra commands
def split_hydra_arguments(command: str, argv: list[str]) -> tuple[str, list[str], list[str]]:
    """(entry config, overrides, Hydra's flags with their values) of a Hydra command's arguments."""
    overrides, flags = [], []
    items = iter(argv)
    for item in items:
        flag = item.split("=", 1)[0]
        if flag in HYDRA_VALUE_FLAGS:
            flags.append(item)
            if "=" not in item:
                value = next(items, None)
                if value is not None:
                    flags.append(value)
        elif item in HYDRA_FLAGS:
            flags.append(item)
        elif item.startswith("-"):
            raise SystemExit(f"error: detector {command}: unknown flag {item} (detector {command} --help)")
        else:
            overrides.append(item)
    return HYDRA_COMMANDS[command][0], overrides, flags


def check_hydra_overrides(config_name: str, overrides: list[str]) -> None:
    from detector.engine.compose import config_dir
    from detector.engine.overrides import check_overrides

    check_overrides(config_name, overrides, config_dir())


def own_keys(command: str, overrides: list[str]) -> tuple[list[str], int]:
    """(the config overrides, show-data's ``count=N``, its own key: images in the grid, 16 by default)."""
    if command != "show-data":
        return overrides, 16
    mine = [o for o in overrides if o.lstrip("+").startswith("count=")]
    value = mine[-1].split("=", 1)[1] if mine else "16"
    if not value.isdigit() or int(value) < 1:
        from detector.engine.overrides import OverrideError

        raise OverrideError(f"{mine[-1]}: count is the number of images in the grid, a whole number >= 1")
    return [o for o in overrides if o not in mine], int(value)


def first_job(overrides: list[str]) -> list[str]:
    """The overrides of a sweep's first run (``loss_cls=qfl,vfl`` -> ``loss_cls=qfl``)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return list(BasicSweeper.split_arguments(parsed, None)[0][0])


def run_hydra_command(command: str, argv: list[str]) -> int:
    import hydra

    from detector.engine.compose import config_dir, setup_console_logging
    from detector.engine.overrides import OverrideError

    if "-h" in argv or "--help" in argv:
        print(command_help(command))
        return 0
    config_name, overrides, flags = split_hydra_arguments(command, argv)
    try:
        overrides, count = own_keys(command, overrides)
        check_hydra_overrides(config_name, overrides)
    except OverrideError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    task = {"train": train_command, "show-data": lambda cfg: show_data(cfg, count)}.get(
        command, {"eval": eval_command, "predict": predict_command, "export": export_command}.get(config_name))
    setup_console_logging()
    app = hydra.main(config_path=str(config_dir()), config_name=config_name, version_base="1.3")(task)
    saved = sys.argv
    sys.argv = [f"detector {command}", *flags, *overrides, f"hydra.job.name={config_name}"]
    try:
        app()
    finally:
        sys.argv = saved
    return 0


def _exit_on(*errors):
    """Run a task function; a user-facing error becomes one ``error:`` line and exit status 1."""
    def decorate(function):
        def run(cfg):
            try:
                return function(cfg)
            except errors as error:
                sys.exit(f"error: {error}")
        run.__name__ = run.__qualname__ = function.__name__
        run.__module__ = function.__module__
        return run
    return decorate


def _user_errors() -> tuple[type[BaseException], ...]:
    from detector.engine.checkpoint import CheckpointError
    from detector.engine.trainer import NonFiniteLossError

    return CheckpointError, NonFiniteLossError, ValueError, FileNotFoundError


def train_command(cfg) -> None:
    from detector.engine import tasks
    from detector.engine.compose import run_dir_of_job

    try:
        summary = _exit_on(*_user_errors())(tasks.train)(cfg)
    except KeyboardInterrupt:  # the trainer has written last.pt by now
        last = Path(cfg.resume).resolve() if cfg.resume else run_dir_of_job() / "checkpoints" / "last.pt"
        print(f"interrupted; continue with: detector train resume={last}", file=sys.stderr)
        sys.exit(130)
    print(json.dumps({"run_dir": str(summary["run_dir"]), "best_AP": summary["best_AP"], **summary["final"]},
                     default=float))


def eval_command(cfg) -> None:
    from detector.engine import tasks

    _exit_on(*_user_errors())(tasks.evaluate)(cfg)


def predict_command(cfg) -> None:
    from detector.engine import tasks

    _exit_on(*_user_errors())(tasks.predict)(cfg)


def export_command(cfg) -> None:
    from detector.engine import tasks

    _exit_on(*_user_errors())(tasks.export)(cfg)


def show_data(cfg, count: int = 16) -> None:
    from hydra.utils import instantiate

    from detector.data.pipeline import TrainDataset
    from detector.data.visualize import save_grid
    from detector.engine.compose import run_dir_of_job

    splits = instantiate(cfg.data)
    train = TrainDataset(splits.train, imgsz=cfg.imgsz, seed=cfg.seed, **cfg.augment)
    count = min(int(count), len(train))
    items = train.__getitems__(list(range(count)))  # one batch, fetched as a DataLoader worker does
    path = save_grid([image for image, _ in items], [target for _, target in items], list(splits.names),
                     f"{run_dir_of_job()}/train_batch.png")
    print(f"wrote {path}")


# ------------------------------------------------------------------------------------ argparse commands
def command_module(command: str):
    name = ARGPARSE_COMMANDS[command][0]
    if name.startswith("benchmarks."):
        add_checkout_to_path(command)
    return importlib.import_module(name)


def add_checkout_to_path(command: str) -> Path:
    """The source checkout holding ``benchmarks/`` (the working folder or one above it), put on sys.path."""
    for folder in (Path.cwd(), *Path.cwd().parents):
        if (folder / "benchmarks" / "cli.py").is_file() and (folder / "configs").is_dir():
            if str(folder) not in sys.path:
                sys.path.insert(0, str(folder))
            return folder
    raise SystemExit(f"error: detector {command} runs the benchmarks of a source checkout (its benchmarks/ folder, "
                     "not installed with the package); run it inside a clone of the repository")


def parse(module, argv: list[str]) -> argparse.Namespace:
    parser = module.parser()
    return parser.parse_intermixed_args(argv) if getattr(module, "INTERMIXED", False) else parser.parse_args(argv)


# ------------------------------------------------------------------------------------ help
def config_groups() -> dict[str, list[str]]:
    """{group: [options]} of the installed config tree."""
    from detector.engine.compose import config_dir

    root = config_dir()
    return {folder.name: sorted(p.stem for p in folder.glob("*.yaml"))
            for folder in sorted(root.iterdir()) if folder.is_dir() and any(folder.glob("*.yaml"))}


def overview() -> str:
    lines = ["detector: train, evaluate, predict and export anchor-free YOLOv8/GFL-style detectors", "", "usage: detector <command> [arguments]", "", "commands:"]
    for name, (_, what) in HYDRA_COMMANDS.items():
        lines.append(f"  {name:<12} {what}")
    for name, (_, what) in ARGPARSE_COMMANDS.items():
        lines.append(f"  {name:<12} {what}")
    lines += ["", "config groups (group=option on train, show-data and export-yolo):"]
    lines += [f"  {group:<10} {', '.join(options)}" for group, options in config_groups().items()]
    lines += ["", "detector <command> --help lists a command's keys; docs: README.md and docs/"]
    return "\n".join(lines)


def command_help(command: str) -> str:
    """A Hydra command's groups and keys with their defaults (from the composed config)."""
    from omegaconf import OmegaConf

    from detector.engine.compose import compose_task

    config_name, what = HYDRA_COMMANDS[command]
    cfg = compose_task(config_name, [])
    choices = dict(cfg.hydra.runtime.choices)
    lines = [f"usage: detector {command} [group=option ...] [key=value ...] [-m] [--cfg job]", "", what, ""]
    groups = config_groups()
    used = [g for g in groups if g in choices]
    if used:
        lines.append("config groups (default in brackets):")
        lines += [f"  {g:<10} " + ", ".join(f"[{o}]" if o == choices[g] else o for o in groups[g]) for g in used]
        lines.append("")
    lines.append("keys (defaults; nested keys as section.key=value):")
    # unresolved: interpolations as written, a required key as ??? (ckpt=??? of val, predict, export)
    task_cfg = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=False)
    for key, value in task_cfg.items():
        if key in used:
            continue
        if isinstance(value, dict):
            lines.append(f"  {key}.{{{', '.join(str(k) for k in value.keys())}}}")
        else:
            lines.append(f"  {key}={OmegaConf.to_yaml({key: value}).split(':', 1)[1].strip()}")
    if command == "show-data":
        lines.append("  count=16 (images in the grid)")
    lines += ["", f"detector {command} ... --cfg job prints the composed config without running"]
    return "\n".join(lines)
