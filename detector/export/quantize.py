"""Post-training INT8 quantization of an exported graph, calibrated on letterboxed training images.

OpenVINO: ``nncf.quantize`` (fast bias correction) on the IR converted from our ONNX graph, with
the preset ``int8_preset`` names: ``mixed`` (the default: symmetric weights, asymmetric activations,
which fit SiLU's negative tail finely) or ``performance`` (symmetric activations too: faster on an
AVX-512 / AMX CPU, and on some models more than 0.01 AP lower; docs/deployment.md). ONNX:
onnxruntime's ``quantize_static`` (QDQ, per-channel weights, unsigned asymmetric activations,
MinMax calibration) on the ONNX file; its symmetric signed activations ran 2.6x slower than float
there, so ONNX has no preset.

What stays float (``FLOAT_PATTERN``): every node outside the convolution stacks, i.e. the box
decoding, not just the DFL softmax and its expectation: the anchors, dist2bbox, the concatenations
of the levels and of boxes with scores, the sigmoid, and NMS when it is in the graph. Those nodes
carry pixel coordinates up to the image size and probabilities near 0 and 1; an 8-bit grid over
them costs whole pixels and flattens the low scores AP ranks by, for no speed (they are a sliver
of the FLOPs). The convolutions of the backbone, the neck and the head's branches, their
activations and the neck's concatenations are quantized. Node names are those the ONNX tracer
gives the modules (``/backbone/...``, ``/neck/...``, ``/head/box_branches.0/...``); the decode
nodes are the rest (``/Softmax``, ``/head/Concat_3``, ``predictions``).

Index convention: N calibration images, each a [1, 3, S, S] float32 array in [0, 1] (S = imgsz).
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

from detector.export.openvino import require

log = logging.getLogger("detector")

# nodes matching this stay float: all but the backbone, the neck and the head's conv branches
FLOAT_PATTERN = r"^(?!/backbone/|/neck/|/head/(box|cls)_branches\.).*"
DEFAULT_SEED = 0
PRESETS = ("mixed", "performance")  # NNCF's QuantizationPreset, by its lower-case name; the first is the default


class CalibrationError(ValueError):
    """A calibration set that cannot be used: no images, or a count out of range."""


def calibration_count(calib_images: int | float, available: int, source: str = "the training split") -> int:
    """How many images calibrate: ``calib_images`` >= 1 is a count (capped at ``available``), a
    value in (0, 1) a fraction of ``available`` (at least one). Raises CalibrationError for 0, a
    negative value, or an empty set."""
    if available <= 0:
        raise CalibrationError(f"int8=true needs calibration images, but {source} has none; "
                               "pass data=... with training images (the calibration set is its train split)")
    value = float(calib_images)
    if value <= 0:
        raise CalibrationError(f"calib_images={calib_images}: int8=true needs at least one calibration image "
                               f"(a count such as 300, or a fraction of the {available} images such as 0.5)")
    if value < 1:
        return max(1, round(value * available))
    if value != int(value):
        raise CalibrationError(f"calib_images={calib_images}: give a whole number of images or a fraction below 1")
    return min(int(value), available)


class CalibrationSet:
    """``count`` images of ``dataset`` (a DetectionDataset; a seeded random choice when it has
    more), letterboxed to ``imgsz`` on demand: item i is a [1, 3, imgsz, imgsz] float32 array.
    Iterable any number of times (NNCF passes over it more than once). Undecodable images are
    skipped (and not counted: ``len`` is what was found usable at first pass, see ``check``)."""

    def __init__(self, dataset, imgsz: int, count: int, seed: int = DEFAULT_SEED):
        order = np.random.default_rng(seed).permutation(len(dataset))
        self.dataset, self.imgsz = dataset, int(imgsz)
        self.indices = sorted(order[:count].tolist())

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, i: int) -> np.ndarray | None:
        from detector.data.base import ImageDecodeError
        from detector.predict import to_input_batch

        try:
            image, _ = self.dataset.load(i)  # HWC uint8 RGB
        except ImageDecodeError as error:
            log.warning("calibration: skipped %s", error)
            return None
        return to_input_batch(image, self.imgsz)[0]  # [1, 3, imgsz, imgsz]

    def __iter__(self):
        for i in self.indices:
            batch = self.load(i)
            if batch is not None:
                yield batch

    def check(self) -> "CalibrationSet":
        """Drop the images that cannot be decoded; CalibrationError when none is left."""
        self.indices = [i for i in self.indices if self.load(i) is not None]
        if not self.indices:
            raise CalibrationError("none of the calibration images could be decoded")
        return self


def float_node_names(names) -> list[str]:
    """The names among ``names`` that stay float (FLOAT_PATTERN)."""
    pattern = re.compile(FLOAT_PATTERN)
    return [name for name in names if pattern.match(name)]


def check_preset(preset: str) -> str:
    """``preset`` if it is one of PRESETS; ValueError naming the option otherwise."""
    if preset not in PRESETS:
        raise ValueError(f"int8_preset={preset} is not a quantization preset; choose {' or '.join(PRESETS)}")
    return preset


def quantize_openvino(model, calibration: CalibrationSet, preset: str = PRESETS[0]):
    """An INT8 copy of the ``openvino.Model`` ``model`` under NNCF's ``preset`` (module docstring)."""
    nncf = require("nncf", "int8=true with format=openvino")
    preset = nncf.QuantizationPreset[check_preset(preset).upper()]
    with _quiet_nncf():
        return nncf.quantize(model, nncf.Dataset(calibration), preset=preset,
                             target_device=nncf.TargetDevice.CPU, subset_size=len(calibration),
                             ignored_scope=nncf.IgnoredScope(patterns=[FLOAT_PATTERN], validate=False))


class _Reader:
    """onnxruntime's CalibrationDataReader over a CalibrationSet."""

    def __init__(self, calibration: CalibrationSet):
        self.calibration, self.items = calibration, iter(calibration)

    def get_next(self):
        batch = next(self.items, None)
        return None if batch is None else {"images": batch}

    def rewind(self):
        self.items = iter(self.calibration)


def quantize_onnx(source: str | os.PathLike, output: str | os.PathLike, calibration: CalibrationSet,
                  metadata: dict[str, str] | None = None) -> Path:
    """An INT8 (QDQ) copy of the ONNX file ``source`` written to ``output`` (see the module
    docstring), with ``metadata`` (default: the source's) and the source's output shapes."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from detector.export.onnx import _finish_proto

    proto = onnx.load(str(source))
    keep_float = float_node_names(node.name for node in proto.graph.node)
    if metadata is None:
        metadata = {p.key: p.value for p in proto.metadata_props}
    shapes = {o.name: [d.dim_value if d.HasField("dim_value") else d.dim_param
                       for d in o.type.tensor_type.shape.dim] for o in proto.graph.output}
    quantize_static(str(source), str(output), _Reader(calibration), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=keep_float)
    _finish_proto(output, metadata, shapes)
    return Path(output)


class _quiet_nncf:
    """NNCF logs progress bars and INFO lines of its own: keep them to warnings."""

    def __enter__(self):
        self.logger = logging.getLogger("nncf")
        self.level = self.logger.level
        self.logger.setLevel(logging.WARNING)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)
