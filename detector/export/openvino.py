"""OpenVINO: our ONNX graph converted to OpenVINO IR (a ``.xml``/``.bin`` pair), saved with its
metadata, and run on the CPU.

The graph is the ONNX export's (detector/export/onnx.py: decoding, and NMS with ``nms=True``,
inside; the same inputs and outputs), read by ``openvino.convert_model``, so both formats are
one graph and one contract. Weights stay float32 (``compress_to_fp16=False``); INT8 models come
from detector/export/quantize.py.

On disk, as ultralytics lays it out: a folder ``<stem>_openvino_model/`` holding ``<stem>.xml``
(the graph and the metadata) and ``<stem>.bin`` (the weights), written to a temporary folder
beside it and renamed into place, so a reader never sees half a pair. ``ckpt=`` takes the folder
or its ``.xml``. The metadata are the ONNX file's (format, names, category_ids, imgsz, stride,
strides, num_classes, dynamic, nms, conf, iou, max_det) plus ``precision`` (fp32 or int8) and,
for INT8, ``calib_images``, stored as strings in the IR's ``rt_info`` under ``detector`` (plain
text in the .xml, read back as JSON and numbers: never pickled).

openvino is an optional extra (``pip install "detector[openvino]"``); without it, the calls
here raise ``MissingExtraError`` naming the extra.
"""
from __future__ import annotations

import functools
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np

from detector.export import layouts
from detector.export.onnx import NMS_OUTPUTS, RAW_OUTPUTS, decode_metadata
from detector.timing import median_ms

FORMAT = "detector-openvino-v1"
RT_SECTION = "detector"  # rt_info section holding the metadata
FOLDER_SUFFIX = "_openvino_model"


class MissingExtraError(ImportError, ValueError):
    """An optional dependency that is not installed; the message names the extra to install.
    (A ValueError too, so the command line reports it as one ``error:`` line.)"""


class OpenVinoModelError(ValueError):
    """A missing, incomplete or unreadable OpenVINO model, or one not written by this project."""


def require(module: str, what: str = "format=openvino"):
    """Import ``module`` (openvino or nncf) or raise MissingExtraError naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f'{what} needs the {module} package: pip install "detector[openvino]"') from None


def shared_core():
    """The process's one ``openvino.Core`` (MissingExtraError without openvino). A Core per model
    crashed long-lived processes later, in unrelated code (this project's test suite: a segmentation
    fault after the OpenVINO tests; ultralytics met it after ~20 model loads): every read and compile
    here goes through this one."""
    return _core(require("openvino"))


@functools.cache
def _core(ov):
    return ov.Core()


def model_folder(output: str | os.PathLike | None, run_dir: str | os.PathLike, stem: str) -> Path:
    """Where a model goes: ``output`` as given, else ``<run_dir>/<stem>_openvino_model``."""
    return Path(output) if output else Path(run_dir) / f"{stem}{FOLDER_SUFFIX}"


def is_openvino_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an OpenVINO model: a ``.xml`` file, a folder, or ``*_openvino_model``."""
    path = Path(path)
    return path.suffix.lower() == ".xml" or path.is_dir() or path.name.endswith(FOLDER_SUFFIX)


def find_xml(path: str | os.PathLike) -> Path:
    """The ``.xml`` of a model given as the file or its folder, with its ``.bin`` beside it.
    Raises FileNotFoundError (nothing there) or OpenVinoModelError (a folder without one .xml, a
    .xml without its .bin)."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.xml"))
        if len(found) != 1:
            what = "no .xml file" if not found else f"{len(found)} .xml files ({', '.join(p.name for p in found)})"
            raise OpenVinoModelError(f"{path} holds {what}; an OpenVINO model folder holds one .xml/.bin pair "
                                     "(written by detector export format=openvino)")
        path = found[0]
    elif not path.is_file():
        raise FileNotFoundError(f"OpenVINO model not found: {path} (give the .xml file or its folder)")
    weights = path.with_suffix(".bin")
    if not weights.is_file():
        raise OpenVinoModelError(f"{path} has no weights file {weights.name} beside it; an OpenVINO model is a "
                                 ".xml/.bin pair: copy both")
    return path


def convert_onnx(path: str | os.PathLike):
    """Our ONNX file -> an ``openvino.Model`` (same inputs, outputs and metadata)."""
    ov = require("openvino")
    return ov.convert_model(str(path))


def set_metadata(model, metadata: dict[str, str]) -> None:
    """Store ``metadata`` (strings) in ``model``'s rt_info under ``detector`` (replacing it)."""
    for key, value in metadata.items():
        model.set_rt_info(str(value), [RT_SECTION, key])


def raw_metadata(model) -> dict[str, str]:
    """The ``detector`` section of ``model``'s rt_info, as strings ({} when absent)."""
    if not model.has_rt_info([RT_SECTION]):
        return {}
    return {key: value.astype(str) for key, value in model.get_rt_info()[RT_SECTION].items()}


def save_model(model, folder: str | os.PathLike, stem: str, metadata: dict[str, str],
               ultralytics: bool = False) -> Path:
    """Write ``<folder>/<stem>.xml`` and ``.bin`` with ``metadata`` (an existing folder is
    replaced), atomically: into a temporary folder beside it, then renamed. Returns the .xml path.
    ``ultralytics``: the graph is in ultralytics' layout (detector.export.layouts) and ``metadata``
    holds ultralytics' keys; they also go to ``metadata.yaml``, the file ultralytics' AutoBackend
    reads beside an OpenVINO model."""
    ov = require("openvino")
    folder = check_output_folder(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    set_metadata(model, metadata)
    tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp")  # mkdir, not mkdtemp: the umask's mode
    tmp.mkdir()
    old = None
    try:
        ov.save_model(model, str(tmp / f"{stem}.xml"), compress_to_fp16=False)
        if ultralytics:
            (tmp / "metadata.yaml").write_text(ultralytics_sidecar(metadata))
        if folder.exists():  # a directory cannot be renamed over a non-empty one: move it aside first
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
            os.replace(folder, old / folder.name)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not folder.exists():
            os.replace(old / folder.name, folder)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return folder / f"{stem}.xml"


def ultralytics_sidecar(metadata: dict[str, str]) -> str:
    """ultralytics' metadata.yaml from its metadata strings (Python literals where they parse, as
    its exporter writes them; plain strings otherwise; ours stays one JSON string)."""
    import ast

    import yaml

    values = {}
    for key, text in metadata.items():
        if key == layouts.OURS_KEY:  # ours, a JSON string (as in the .xml and in ONNX files)
            values[key] = text
            continue
        try:
            values[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            values[key] = text
    return yaml.safe_dump(values, sort_keys=False, allow_unicode=True)


def check_output_folder(folder: str | os.PathLike) -> Path:
    """``folder`` if a model may be written there: a new folder, or an earlier model's (replaced);
    never one holding anything else. Raises OpenVinoModelError."""
    folder = Path(folder)
    if folder.suffix.lower() in (".xml", ".bin", ".onnx"):
        raise OpenVinoModelError(f"output={folder}: format=openvino writes a folder (its .xml and .bin inside); "
                                 f"name the folder, e.g. output={folder.with_suffix('')}{FOLDER_SUFFIX}")
    if folder.exists() and not is_model_folder(folder):  # never move aside a folder that holds anything else
        raise OpenVinoModelError(f"output={folder} exists and holds other files than an OpenVINO model; "
                                 "give a new folder (an earlier model's folder is replaced)")
    return folder


def is_model_folder(folder: Path) -> bool:
    """Whether ``folder`` holds nothing but OpenVINO model files (.xml, .bin, metadata.yaml)."""
    return folder.is_dir() and all(p.is_file() and (p.suffix in (".xml", ".bin") or p.name == "metadata.yaml")
                                   for p in folder.iterdir())


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata of a saved model (folder or .xml), decoded as ``detector.export.onnx.read_metadata``'s."""
    return decode_model_metadata(shared_core().read_model(str(find_xml(path))))


def decode_model_metadata(model) -> dict:
    """Our metadata of an ``openvino.Model``, decoded; in layout=ultralytics, from the JSON of ours
    beside ultralytics' keys (detector.export.layouts)."""
    props = raw_metadata(model)
    if tuple(o.get_any_name() for o in model.outputs) == layouts.ULTRALYTICS_OUTPUTS:
        props = layouts.read_ultralytics_metadata(props)
    meta = decode_metadata(props)
    if "calib_images" in meta:
        meta["calib_images"] = int(meta["calib_images"])
    return meta


class OpenVinoDetector:
    """An OpenVINO CPU model over one of our two layouts, with ``OnnxDetector``'s interface:
    ``layout`` ("raw" or "nms"), ``metadata``, ``fixed_size`` ((H, W) or None), ``fixed_batch``,
    ``path`` and ``detector(images) -> {output name: array}``.

    ``path``: a saved model (folder or .xml); or ``model``: an ``openvino.Model`` in memory (the
    export compares it before saving). Raises FileNotFoundError / OpenVinoModelError.
    """

    def __init__(self, path: str | os.PathLike | None = None, threads: int | None = None, model=None):
        core = shared_core()
        if model is None:
            xml = find_xml(path)
            try:
                model = core.read_model(str(xml))
            except Exception as error:  # not IR, truncated, or a .bin of another model
                raise OpenVinoModelError(f"OpenVINO cannot read {xml}: {first_line(error)}") from None
            path = xml
        self.path = Path(path) if path is not None else None
        inputs = [i.get_any_name() for i in model.inputs]
        outputs = tuple(o.get_any_name() for o in model.outputs)
        if inputs != ["images"] or outputs not in (RAW_OUTPUTS, NMS_OUTPUTS, layouts.ULTRALYTICS_OUTPUTS):
            raise OpenVinoModelError(
                f"{self.path or 'the model'} has inputs {inputs} and outputs {list(outputs)}; expected input "
                f"['images'] and outputs {list(RAW_OUTPUTS)} or {list(NMS_OUTPUTS)} (written by detector export), "
                f"or {list(layouts.ULTRALYTICS_OUTPUTS)} (layout=ultralytics)")
        # layout=ultralytics: its metadata keys, ours under "detector" (detector.export.layouts); outputs
        # converted to our layout's on every call, as OnnxDetector does
        self.convention = "ultralytics" if outputs == layouts.ULTRALYTICS_OUTPUTS else "ours"
        self.metadata = decode_model_metadata(model)
        if self.convention == "ultralytics":
            self.layout = "nms" if self.metadata.get("nms") else "raw"
        else:
            self.layout = "nms" if outputs == NMS_OUTPUTS else "raw"
        shape = model.inputs[0].get_partial_shape()  # [B, 3, H, W], dynamic axes unknown
        sides = [shape[2], shape[3]]
        self.fixed_size = tuple(d.get_length() for d in sides) if all(d.is_static for d in sides) else None
        self.fixed_batch = shape[0].get_length() if shape[0].is_static else None
        # f32: on CPUs with bfloat16 units OpenVINO would run float layers in bf16 by default (pixels off by ~4)
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
                  **({"INFERENCE_NUM_THREADS": int(threads)} if threads else {})}
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as error:  # e.g. a .bin shorter than the graph's weights
            raise OpenVinoModelError(f"OpenVINO cannot compile {self.path or 'the model'}: "
                                     f"{first_line(error)}") from None
        self.request = self.compiled.create_infer_request()
        self.output_names = list(outputs)

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """images float32 [B, 3, H, W] in [0, 1] -> {output name: array} (copies, safe to keep)."""
        self.request.infer({"images": np.ascontiguousarray(images, np.float32)})
        outputs = {name: self.request.get_tensor(name).data.copy() for name in self.output_names}
        if self.convention == "ultralytics":
            return layouts.from_ultralytics(outputs["output0"], end2end=self.layout == "nms")
        return outputs


def first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:300]


def ov_latency_ms(detector: OpenVinoDetector, images: np.ndarray, runs: int = 20, warmup: int = 3) -> float:
    """Median wall time of one inference in milliseconds."""
    return median_ms(lambda: detector(images), runs=runs, warmup=warmup)


def folder_size(path: str | os.PathLike) -> int:
    """Bytes of a model on disk: the .xml and .bin of a folder (or of the .xml given)."""
    xml = find_xml(path)
    return xml.stat().st_size + xml.with_suffix(".bin").stat().st_size
