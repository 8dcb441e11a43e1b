"""The model registry: which architectures this project builds, and what each one is.

An architecture is one module (``yolov8.py``, ``yolo11.py``) holding its blocks, how its backbone and
neck are built, its scales (depth, width, max_channels), the layer list of ultralytics' yaml (class
names in layer order), the map from ultralytics' layer indices to our module paths, and where its
backbone ends; plus its config files (``configs/model/<name><scale>.yaml``). Everything else
(the importer, ``pretrained=``, ``freeze=K``, checkpoint checks) asks this registry.

Model names: ``<arch><scale>`` ("yolov8n", "yolo11x"); a bare scale ("n" ... "x") means YOLOv8.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

from torch import nn

DEFAULT_ARCH = "yolov8"  # a bare scale, and a checkpoint whose model_args has no "arch", mean YOLOv8


@dataclass(frozen=True)
class Scale:
    """ultralytics' compound scaling: a yaml's repeats times ``depth``, its widths capped at
    ``max_channels`` then times ``width``."""

    depth: float
    width: float
    max_channels: int

    def channels(self, c: int) -> int:
        """ultralytics' rule: cap, multiply, round up to a multiple of 8."""
        return int(math.ceil(min(c, self.max_channels) * self.width / 8) * 8)

    def repeats(self, n: int) -> int:
        return max(round(n * self.depth), 1)


@dataclass(frozen=True)
class Architecture:
    """One detection architecture, as ultralytics lays it out.

    build_features: scale name -> (backbone, neck); the backbone returns the stride 8/16/32 maps and
                    the neck has ``out_channels``, the head's input widths.
    depthwise_cls:  the head's class branch is YOLO11's (depthwise 3x3 + pointwise 1x1, twice)
                    rather than YOLOv8's two 3x3 convs.
    layers:         ultralytics' layer classes in yaml order, the last one the Detect head.
    layer_prefixes: ultralytics layer index -> our module path (layers without weights omitted).
    backbone_layers: ultralytics' layers 0 .. backbone_layers - 1 are the backbone (``freeze=`` that).
    probe_repeats:  the yaml's repeats of layer 2, whose block count (with the stem width) tells the
                    scales of an imported file apart.
    """

    name: str
    title: str
    scales: Mapping[str, Scale]
    build_features: Callable[[str], tuple[nn.Module, nn.Module]]
    depthwise_cls: bool
    layers: tuple[str, ...]
    layer_prefixes: Mapping[int, str]
    backbone_layers: int
    probe_repeats: int

    @property
    def head_index(self) -> int:
        return len(self.layers) - 1

    def model_name(self, scale: str) -> str:
        return f"{self.name}{scale}"


def architectures() -> dict[str, Architecture]:
    """Every architecture this project builds, by name (the one list of them)."""
    from detector.models import yolo11, yolov8

    return {arch.name: arch for arch in (yolov8.ARCHITECTURE, yolo11.ARCHITECTURE)}


def get_architecture(name: str | None) -> Architecture:
    """The architecture called ``name`` (None: YOLOv8); a ValueError listing the valid ones otherwise."""
    known = architectures()
    name = DEFAULT_ARCH if name is None else name
    if not isinstance(name, str) or name not in known:
        raise ValueError(f"unknown architecture {name!r}; valid: {', '.join(known)}")
    return known[name]


def model_names() -> list[str]:
    """All model names: yolov8n ... yolov8x, yolo11n ... yolo11x."""
    return [arch.model_name(scale) for arch in architectures().values() for scale in arch.scales]


def resolve(model: str, arch: str | None = None) -> tuple[Architecture, str]:
    """(architecture, scale) of a model name ("yolo11n"), or of a scale ("n") with ``arch`` (None: YOLOv8).

    A full name with a different ``arch`` beside it is refused rather than one of the two silently winning.
    """
    known = architectures()
    if isinstance(model, str):
        for name, candidate in known.items():
            if model.startswith(name) and model[len(name):] in candidate.scales:
                if arch is not None and arch != name:
                    raise ValueError(f"model {model!r} is a {candidate.title} name, but arch={arch!r} was given")
                return candidate, model[len(name):]
    architecture = get_architecture(arch)
    if model not in architecture.scales:
        raise ValueError(f"unknown model {model!r} for {architecture.title}; valid: "
                         f"{', '.join(architecture.scales)} (with arch={architecture.name!r}) or one of "
                         f"{', '.join(model_names())}")
    return architecture, model
