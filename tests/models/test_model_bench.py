"""`detector bench model|train --models NAMES`: the names are checked by the model registry, and
--models is refused where no chosen benchmark takes it (the benchmarks themselves run in docs/benchmarks.md)."""
import pytest

from benchmarks import cli
from benchmarks.model import canonical


def test_models_option_parses_registry_names():
    args = cli.parser().parse_args(["model", "train", "--models", "yolov8n, yolo11n,s"])
    assert args.models == ["yolov8n", "yolo11n", "s"] and [canonical(m) for m in args.models][-1] == "yolov8s"
    cli.check(args)


def test_unknown_model_name_is_refused_with_the_valid_ones(capsys):
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["model", "--models", "yolo12n"])
    assert "unknown model 'yolo12n'" in capsys.readouterr().err


def test_models_option_refused_for_benchmarks_that_take_none():
    with pytest.raises(SystemExit, match="--models applies to model and train only"):
        cli.check(cli.parser().parse_args(["losses", "--models", "yolo11n"]))
    cli.check(cli.parser().parse_args(["--models", "yolo11n"]))  # all benchmarks: model and train among them
