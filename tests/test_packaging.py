"""The installed package: every package listed, the configs inside it, and a wheel that trains,
evaluates and predicts from another folder, with the ``detector`` command."""
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_package_of_the_library():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert sorted(listed) == sorted(find_packages(str(ROOT), include=["detector*"]) + ["detector.configs"])


def test_the_configs_are_the_installed_package_data():
    from detector.engine.compose import config_dir

    assert (config_dir() / "train.yaml").is_file() and (config_dir() / "loss_cls" / "vfl.yaml").is_file()
    assert config_dir().resolve() == (ROOT / "configs").resolve()  # the editable install maps the top-level tree


def test_the_library_reaches_nothing_outside_its_folder():
    """No ``parents[k]`` / ``..`` path out of detector/ (configs come from the package)."""
    offenders = []
    for path in (ROOT / "detector").rglob("*.py"):
        text = path.read_text()
        for needle in ('parents[1]', 'parents[2]', '"../configs"', '"../tools'):
            if needle in text:
                offenders.append(f"{path.relative_to(ROOT)}: {needle}")
    assert not offenders, offenders


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory):
    """The project built as a wheel and installed into a folder of its own (not the editable copy)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # a copy of the checkout's files: setuptools' build/ folder stays out of the checkout
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                            text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: the wheel is built from the checkout's files")
    for name in listed.stdout.splitlines():
        if (ROOT / name).is_file() and not name.startswith("tests/"):
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp / "dist"), str(source)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp / "dist").glob("detector-*.whl"))
    site = tmp / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                                str(wheel)], capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return wheel, site


@pytest.mark.e2e
def test_the_wheel_ships_the_configs_and_no_tests_or_benchmarks(wheel_site):
    wheel, _ = wheel_site
    names = zipfile.ZipFile(wheel).namelist()
    assert "detector/configs/train.yaml" in names and "detector/configs/data/yolo.yaml" in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "detector/benchmarks/", "tools/"))]
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "detector = detector.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


# after `python -m detector train`: the other commands and the API in one interpreter (each start is seconds)
AFTER_TRAINING = """
import contextlib, io, json, sys
import detector
from detector.cli import main

best, images = sys.argv[1], sys.argv[2]
codes = {}
for name, argv in {"help": ["--help"], "val": ["val", f"ckpt={best}", "workers=0", "hydra.run.dir=val"],
                   "predict": ["predict", f"ckpt={best}", f"source={images}", "hydra.run.dir=pred"],
                   "export": ["export", f"ckpt={best}", "latency_runs=0", "hydra.run.dir=exp", "output=exp/m.onnx"]}.items():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        codes[name] = main(argv)
    codes[name + "_says_groups"] = "config groups" in out.getvalue()
codes["api_detections"] = len(detector.Detector(best).predict(images))
print(json.dumps({"file": detector.__file__, **codes}))
"""


@pytest.mark.e2e
def test_the_installed_wheel_trains_evaluates_predicts_and_exports_from_another_folder(wheel_site, tmp_path):
    _, site = wheel_site
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}

    def python(*args):
        return subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True, text=True, timeout=600)

    result = python("-m", "detector", "train", "data.root=shapes", "data.num_train=8", "data.num_val=4",
                    "data.min_size=96", "data.max_size=128", "imgsz=64", "batch_size=4", "workers=0", "progress=false",
                    "epochs=1", "eval.diagnostics=false", "hydra.run.dir=run")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    best = work / "run" / "checkpoints" / "best.pt"
    assert best.is_file() and json.loads(result.stdout.strip().splitlines()[-1])["run_dir"]
    assert f"detector val ckpt={best}" in result.stdout  # the run says what to do next
    images = next((work / "shapes").rglob("val/images"))
    result = python("-c", AFTER_TRAINING, "run/checkpoints/best.pt", str(images))
    assert result.returncode == 0, result.stderr[-3000:]
    done = json.loads(result.stdout.strip().splitlines()[-1])
    assert done["file"].startswith(str(site)), done  # the wheel's copy, not the checkout's
    assert done["help"] == 0 and done["help_says_groups"]
    assert done["val"] == done["predict"] == done["export"] == 0, result.stderr[-3000:]
    assert (work / "val" / "metrics.json").is_file() and (work / "pred" / "detections.json").is_file()
    assert (work / "exp" / "m.onnx").is_file() and done["api_detections"] > 0
