"""Drawing boxes with class names, and grids of images, to check a pipeline by eye."""
from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import Tensor


def draw_detections(image: Tensor, boxes: Tensor, labels: Tensor, names: list[str], scores: Tensor | None = None) -> Tensor:
    """uint8 [3, H, W] with labelled boxes drawn; colours follow the class."""
    captions = [names[int(l)] if int(l) < len(names) else str(int(l)) for l in labels]
    if scores is not None:
        captions = [f"{c} {float(s):.2f}" for c, s in zip(captions, scores)]
    palette = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
               "#bcf60c", "#fabebe", "#008080", "#e6beff"]
    colours = [palette[int(l) % len(palette)] for l in labels]
    if len(boxes) == 0:
        return image
    return torchvision.utils.draw_bounding_boxes(image, boxes.float(), captions, colors=colours, width=2)


def save_grid(images: list[Tensor], targets: list[dict], names: list[str], path: str | Path, columns: int = 4) -> Path:
    drawn = [draw_detections(img, t["boxes"], t["labels"], names, t.get("scores")) for img, t in zip(images, targets)]
    grid = torchvision.utils.make_grid(torch.stack(drawn), nrow=columns, padding=4, pad_value=255)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torchvision.io.write_png(grid, str(path))
    return path
