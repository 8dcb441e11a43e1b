"""Ours against ultralytics' YOLOv8 or YOLO11 on the same data.yaml and budget, scored by one evaluator.

``run_compare`` checks the data.yaml (both readers' rules) and lets ultralytics train one epoch on
four of its images (a missing dependency of ultralytics, a bad ``--ultralytics`` setting or a set it
cannot read then stops the compare before anything long has run), then trains ours
(``detector train data=yolo data.data_yaml=...``) and YOLOv8 (``YOLO("yolov8n.yaml").train``
from its yaml, no weights) one after the other in subprocesses with the same epochs, imgsz,
batch, workers, seed and device, converts YOLOv8's ``best.pt`` with our importer
(``detector convert``) and evaluates both ``best.pt`` with ``detector eval`` (same imgsz, conf,
IoU). ultralytics is never imported here: it runs in its own process, found on the path. Both
trainers read a copy of the data.yaml with every path made absolute (``<out>/data.yaml``), as the
two resolve a relative ``path`` differently.

Training images/s is (train images x epochs) / training seconds as each trainer records them,
per-epoch validation included on both sides. A run whose loss went non-finite is "diverged".
"""
from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from detector.data import data_yaml as dy
from detector.data.data_yaml import DataYamlError

DETECTOR = ("-m", "detector")  # ours runs as `python -m detector <task>`: the installed package, from any folder
SCALES = ("n", "s", "m", "l", "x")
# ultralytics runs in a child process: its import, its globals and its crash stay there
ULTRALYTICS_SCRIPT = "import json, sys\nfrom ultralytics import YOLO\nYOLO(sys.argv[1]).train(**json.loads(sys.argv[2]))"
COLUMNS = ("AP", "AP50", "AP75", "spearman")


@dataclass(frozen=True)
class Budget:
    epochs: int
    imgsz: int
    batch: int
    workers: int
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N, as detector train takes it
    scale: str = "n"  # a scale (n: YOLOv8's) or a model name: yolov8s, yolo11n, ...
    pretrained: str | None = None  # an ultralytics checkpoint both start from (fine-tuning); None: from scratch

    def __post_init__(self):
        for name in ("epochs", "imgsz", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.imgsz % 32:
            raise ValueError(f"imgsz must be a multiple of 32 (the largest stride), got {self.imgsz}")
        from detector.models.registry import resolve

        try:
            resolve(self.scale)
        except (KeyError, ValueError) as error:
            raise ValueError(f"model scale must be one of {', '.join(SCALES)} or a model name: {error}") from None
        if self.pretrained is not None and not Path(self.pretrained).is_file():
            raise ValueError(f"pretrained checkpoint not found: {self.pretrained}")


    @property
    def model_name(self) -> str:
        """yolov8n, yolo11s, ...: ours is model=<this>, ultralytics <this>.yaml."""
        from detector.models.registry import resolve

        architecture, scale = resolve(self.scale)
        return architecture.model_name(scale)

    @property
    def ultralytics_name(self) -> str:
        from detector.models.registry import resolve

        architecture, scale = resolve(self.scale)
        return f"{architecture.title}{scale}"


class PreflightError(RuntimeError):
    """ultralytics could not train a trial epoch here; the message says why and where its log is."""


@dataclass
class Result:
    name: str
    status: str = "ok"  # ok | diverged | failed
    metrics: dict = field(default_factory=dict)
    wall_s: float = math.nan  # the training subprocess, start to exit
    train_s: float = math.nan  # as the trainer records it
    images_per_s: float = math.nan
    note: str = ""


def check_data_yaml(path: str | Path) -> dict:
    """Read an ultralytics data.yaml with our reader (detector.data.data_yaml) plus the rules only
    ultralytics adds (``nc`` must match ``names``; ``path`` a string), or raise DataYamlError
    naming the file and the key. Returns ``{"yaml", "root", "names", "train", "val"}`` (absolute
    entries) and the ``train_images``/``val_images`` counts."""
    file = Path(path).expanduser()
    content = dy.load_mapping(file)
    if content.get("path") is not None and not isinstance(content["path"], str):
        raise DataYamlError(f"data.yaml {file}: key 'path' must be a string, got {content['path']!r}")
    data = dy.read_data_yaml(file)
    nc = content.get("nc")
    if nc is not None and nc != len(data.names):
        raise DataYamlError(f"data.yaml {file}: key 'nc' is {nc} but 'names' has {len(data.names)} entries")
    info = {"yaml": data.file, "root": data.root, "names": list(data.names)}
    for key in ("train", "val"):
        info[key] = list(data.splits[key])
        info[f"{key}_images"] = len(dy.split_images(data, key).images)
    return info


def write_resolved_yaml(info: dict, path: Path) -> Path:
    """The checked data.yaml with every path absolute, for both trainers: a relative ``path`` is
    resolved one way by ultralytics (working directory, then its datasets_dir) and another by us
    (the yaml's folder first); this copy leaves nothing to resolve."""
    content = {"path": str(info["root"]), "train": [str(p) for p in info["train"]],
               "val": [str(p) for p in info["val"]], "names": dict(enumerate(info["names"]))}
    path.write_text(f"# {info['yaml']} with absolute paths (detector compare)\n" + yaml.safe_dump(content, sort_keys=False))
    return path


def ultralytics_available() -> bool:
    return importlib.util.find_spec("ultralytics") is not None


# --- commands ---------------------------------------------------------------------------------

def ours_train_command(data_yaml: Path, budget: Budget, run_dir: Path, extra: list[str] = (),
                       python: str = sys.executable) -> list[str]:
    return [python, *DETECTOR, "train", "data=yolo", f"data.data_yaml={data_yaml}",
            f"model={budget.model_name}", f"epochs={budget.epochs}", f"imgsz={budget.imgsz}",
            f"batch_size={budget.batch}", f"workers={budget.workers}", f"seed={budget.seed}",
            f"device={budget.device}", "progress=false",
            *([f"pretrained={Path(budget.pretrained).resolve()}"] if budget.pretrained else []),
            *extra, f"hydra.run.dir={run_dir}"]


def ultralytics_train_args(data_yaml: Path, budget: Budget, project: Path, extra: dict | None = None) -> dict:
    """Keyword arguments of ultralytics' ``YOLO(...).train``: the same budget, the same start (no
    weights, or ``budget.pretrained``), its run under ``project/train`` (never the working directory)."""
    device = {"auto": None, "cuda": "0"}.get(budget.device, budget.device.removeprefix("cuda:"))
    return {"data": str(data_yaml), "epochs": budget.epochs, "imgsz": budget.imgsz, "batch": budget.batch,
            "workers": budget.workers, "seed": budget.seed, "device": device, "pretrained": bool(budget.pretrained),
            "project": str(project), "name": "train", "exist_ok": True, "plots": False, **(extra or {})}


def ultralytics_train_command(data_yaml: Path, budget: Budget, project: Path, extra: dict | None = None,
                              python: str = sys.executable) -> list[str]:
    args = ultralytics_train_args(data_yaml, budget, project, extra)
    model = str(Path(budget.pretrained).resolve()) if budget.pretrained else f"{budget.model_name}.yaml"
    return [python, "-c", ULTRALYTICS_SCRIPT, model, json.dumps(args)]


def eval_command(ckpt: Path, data_yaml: Path, budget: Budget, run_dir: Path, python: str = sys.executable) -> list[str]:
    return [python, *DETECTOR, "eval", f"ckpt={ckpt}", "data=yolo", f"data.data_yaml={data_yaml}",
            f"imgsz={budget.imgsz}", f"device={budget.device}", f"workers={budget.workers}",
            f"hydra.run.dir={run_dir}"]


def parse_key_values(items: list[str]) -> dict:
    """``["lr0=0.01", "mosaic=0"]`` -> ``{"lr0": 0.01, "mosaic": 0}`` (values read as YAML scalars)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {item!r}")
        out[key] = yaml.safe_load(value) if value else ""
    return out


# --- outcomes ---------------------------------------------------------------------------------

def is_nonfinite(value) -> bool:
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def read_csv_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in csv.DictReader(handle)]


def diverged_rows(rows: list[dict], loss_columns) -> bool:
    """Any epoch whose mean training loss (a column named by ``loss_columns``) is NaN or inf."""
    return any(is_nonfinite(row[c]) for row in rows for c in row if loss_columns(c) and row[c] != "")


def _tail(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no output"


def ours_outcome(run_dir: Path, returncode: int, output: str, train_images: int, epochs: int) -> Result:
    result = Result(name="ours")
    rows = read_csv_rows(run_dir / "results.csv")
    # the trainer skips a non-finite step with a warning and stops after max_nonfinite_steps in a row
    stopped = returncode != 0 and "non-finite losses in a row" in output
    if stopped or diverged_rows(rows, lambda c: c.startswith("loss")):
        result.status, result.note = "diverged", _tail(output)
    elif returncode != 0:
        result.status, result.note = "failed", _tail(output)
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        result.train_s = float(json.loads(summary_path.read_text()).get("train_seconds", math.nan))
        result.images_per_s = train_images * epochs / result.train_s if result.train_s > 0 else math.nan
    return result


def ultralytics_outcome(save_dir: Path, returncode: int, output: str, train_images: int, epochs: int) -> Result:
    result = Result(name="YOLOv8")
    rows = read_csv_rows(save_dir / "results.csv")
    nan_error = "NaN" in output and ("persisted" in output or "Inf" in output)
    if nan_error or diverged_rows(rows, lambda c: c.startswith("train/") and c.endswith("loss")):
        result.status, result.note = "diverged", _tail(output)
    elif returncode != 0:
        result.status, result.note = "failed", _tail(output)
    if rows and rows[-1].get("time"):
        result.train_s = float(rows[-1]["time"])
        done = int(float(rows[-1].get("epoch", epochs)))
        result.images_per_s = train_images * done / result.train_s if result.train_s > 0 else math.nan
    return result


# --- the table ----------------------------------------------------------------------------------

def _cell(result: Result, key: str) -> str:
    if result.status != "ok":
        return result.status
    value = result.metrics.get(key)
    return "n/a" if value is None or is_nonfinite(value) else f"{float(value):.3f}"


def _num(value: float, spec: str) -> str:
    return "n/a" if value != value else format(value, spec)


def format_table(results: list[Result]) -> str:
    """Markdown: a row per model; AP cells read "diverged"/"failed" for such runs (never AP 0);
    and, when the first two both finished, a row of first / second ratios."""
    head = ["model", "AP", "AP50", "AP75", "score-IoU Spearman", "wall time (s)", "train images/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r.name, *(_cell(r, k) for k in COLUMNS), _num(r.wall_s, ".0f"), _num(r.images_per_s, ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    if len(results) >= 2 and all(r.status == "ok" for r in results[:2]):
        a, b = results[:2]
        ratios = [_ratio(a.metrics.get(k), b.metrics.get(k)) for k in COLUMNS]
        ratios += [_ratio(a.wall_s, b.wall_s), _ratio(a.images_per_s, b.images_per_s)]
        lines.append(f"| {a.name} / {b.name} | " + " | ".join(ratios) + " |")
    notes = [f"{r.name} {r.status}: {r.note}" for r in results if r.status != "ok" and r.note]
    return "\n".join(lines + ([""] + notes if notes else []))


def _ratio(a, b) -> str:
    if a is None or b is None or is_nonfinite(a) or is_nonfinite(b) or float(b) == 0:
        return "n/a"
    return f"{float(a) / float(b):.2f}x"


# --- the run --------------------------------------------------------------------------------------

PREFLIGHT = {"epochs": 1, "imgsz": 64, "batch": 2, "workers": 0}  # and the first 4 train / 2 val images


def write_preflight_yaml(info: dict, folder: Path, train: int = 4, val: int = 2) -> Path:
    """A data.yaml over the first ``train`` / ``val`` images of the checked set (image lists in
    text files, labels found beside them as ultralytics finds them for the full set)."""
    folder.mkdir(parents=True, exist_ok=True)
    content = {"path": str(info["root"]), "names": dict(enumerate(info["names"]))}
    data = dy.read_data_yaml(info["yaml"])
    for key, count in (("train", train), ("val", val)):
        images = dy.split_images(data, key).images[:count]
        # absolute, links kept: ultralytics finds a label by the image's own path (images/ -> labels/), and
        # a set written by `detector export-yolo` links its images from the shapes cache
        (folder / f"{key}.txt").write_text("".join(f"{Path(image).absolute()}\n" for image in images))
        content[key] = str(folder / f"{key}.txt")
    path = folder / "data.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def preflight_ultralytics(info: dict, budget: Budget, out: Path, extra: dict | None = None,
                          runner=subprocess.run) -> None:
    """One epoch of YOLOv8 on four of the set's images at 64 px, through the whole of its loop (train,
    save, validate); raise ``PreflightError`` when it fails, before the real runs spend their hours."""
    folder = out / "preflight"
    trial = {**(extra or {}), **PREFLIGHT}
    budget = dataclasses.replace(budget, **PREFLIGHT)
    command = ultralytics_train_command(write_preflight_yaml(info, folder), budget, folder / "ultralytics", trial)
    code, output, _ = _run(command, folder / "ultralytics.log", runner, cwd=folder)
    if code != 0:
        raise PreflightError(f"ultralytics cannot train here: {_tail(output)} (a trial epoch on 4 images of "
                             f"{info['yaml']}; its log: {folder / 'ultralytics.log'}); nothing else was run")


def _run(command: list[str], log_path: Path, runner=subprocess.run, cwd: Path | None = None) -> tuple[int, str, float]:
    start = time.time()
    completed = runner(command, capture_output=True, text=True, cwd=cwd or log_path.parent)
    seconds = time.time() - start
    output = (completed.stdout or "") + (completed.stderr or "")
    log_path.write_text(" ".join(command) + "\n\n" + output)
    return completed.returncode, output, seconds


def _evaluate(result: Result, ckpt: Path, data_yaml: Path, budget: Budget, run_dir: Path, runner) -> None:
    if result.status != "ok":
        return
    if not ckpt.is_file():
        result.status, result.note = "failed", f"no checkpoint at {ckpt}"
        return
    code, output, _ = _run(eval_command(ckpt, data_yaml, budget, run_dir), run_dir.with_suffix(".log"), runner)
    metrics_path = run_dir / "metrics.json"
    if code != 0 or not metrics_path.is_file():
        result.status, result.note = "failed", f"evaluation: {_tail(output)}"
        return
    result.metrics = json.loads(metrics_path.read_text())["metrics"]


def run_compare(data_yaml: str | Path, budget: Budget, out_dir: str | Path, ours_extra: list[str] = (),
                ultralytics_extra: dict | None = None, runner=subprocess.run, log=print) -> list[Result]:
    """Check, train ours, train ultralytics' model, convert, evaluate both; returns [ours, theirs]."""
    info = check_data_yaml(data_yaml)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    resolved = write_resolved_yaml(info, out / "data.yaml")
    check_data_yaml(resolved)  # the copy reads back the same
    images, epochs = info["train_images"], budget.epochs
    log(f"{info['yaml']}: {images} train / {info['val_images']} val images, {len(info['names'])} classes; "
        f"{epochs} epochs at {budget.imgsz} px, batch {budget.batch}, workers {budget.workers}, seed {budget.seed}")
    log(f"a trial epoch of ultralytics' {budget.ultralytics_name} on 4 images ...")
    preflight_ultralytics(info, budget, out, ultralytics_extra, runner)

    log("training ours ...")
    code, output, wall = _run(ours_train_command(resolved, budget, out / "ours", list(ours_extra)),
                              out / "ours_train.log", runner)
    ours = ours_outcome(out / "ours", code, output, images, epochs)
    ours.name, ours.wall_s = f"ours ({budget.scale})", wall  # "ours (n)": the scale as given

    log(f"training {budget.ultralytics_name} (ultralytics) ...")
    command = ultralytics_train_command(resolved, budget, out / "ultralytics", ultralytics_extra)
    code, output, wall = _run(command, out / "ultralytics_train.log", runner, cwd=out)  # anything it drops lands here
    save_dir = out / "ultralytics" / "train"
    theirs = ultralytics_outcome(save_dir, code, output, images, epochs)
    theirs.name, theirs.wall_s = budget.ultralytics_name, wall
    if budget.pretrained:
        start = Path(budget.pretrained).name
        ours.name, theirs.name = f"{ours.name} from {start}", f"{theirs.name} from {start}"

    log("evaluating both with detector eval ...")
    _evaluate(ours, out / "ours" / "checkpoints" / "best.pt", resolved, budget, out / "eval_ours", runner)
    converted = out / f"{budget.model_name}_converted.pt"
    if theirs.status == "ok":
        best = save_dir / "weights" / "best.pt"
        code, output, _ = _run([sys.executable, *DETECTOR, "convert", str(best), str(converted), "--force"],
                               out / "convert.log", runner)
        if code != 0:
            theirs.status, theirs.note = "failed", f"conversion: {_tail(output)}"
    _evaluate(theirs, converted, resolved, budget, out / "eval_yolov8", runner)
    results = [ours, theirs]
    (out / "compare.json").write_text(json.dumps({"data_yaml": str(info["yaml"]), "budget": budget.__dict__,
                                                  "results": [r.__dict__ for r in results]}, indent=2, default=str))
    return results
