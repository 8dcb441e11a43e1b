"""Evaluation pictures: precision-recall curves, predicted score against IoU, and the diagnostics'
confusion matrices, confidence curves, reliability diagram and val batches."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.colors import Normalize, PowerNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from detector.eval.consistency import correlations  # noqa: E402


def figure_pr_curves(precision: np.ndarray, names: list[str]):
    """PR at IoU 0.5 per class (thin) and the mean over classes at IoU 0.5 and 0.5:0.95 (thick)."""
    fig, ax = plt.subplots(figsize=(6, 5))
    recall = np.linspace(0, 1, 101)
    p50 = precision[0, :, :, 0, -1]  # [R, K]
    for k in range(p50.shape[1]):
        if (p50[:, k] > -1).any():
            ax.plot(recall, np.clip(p50[:, k], 0, 1), lw=0.8, alpha=0.6, label=names[k] if k < len(names) and p50.shape[1] <= 10 else None)
    masked = np.where(precision[:, :, :, 0, -1] > -1, precision[:, :, :, 0, -1], np.nan)
    with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore")
        ax.plot(recall, np.nan_to_num(np.nanmean(masked[0], axis=1)), "k", lw=2.5, label="all classes @0.5")
        ax.plot(recall, np.nan_to_num(np.nanmean(masked, axis=(0, 2))), "k--", lw=2, label="all classes @0.5:0.95")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="precision-recall")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def figure_score_vs_iou(scores: np.ndarray, ious: np.ndarray, max_points: int = 20000):
    c = correlations(np.asarray(scores), np.asarray(ious))
    fig, ax = plt.subplots(figsize=(5, 5))
    if len(scores):
        index = np.random.default_rng(0).permutation(len(scores))[:max_points]
        ax.hexbin(np.asarray(ious)[index], np.asarray(scores)[index], gridsize=40, bins="log", cmap="viridis", mincnt=1)
    ax.set(xlabel="IoU with best same-class GT", ylabel="predicted score", xlim=(0, 1), ylim=(0, 1),
           title=f"score vs IoU: spearman {c['spearman']:.3f}, pearson {c['pearson']:.3f}")
    fig.tight_layout()
    return fig


def save(fig, path) -> None:
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- diagnostics (detector/eval/diagnostics.py) ---
# Figures are made without pyplot (nothing has to close them; TensorBoard's add_figure renders them
# itself), with fixed margins rather than a layout engine and a LineCollection for the per-class
# curves: each picture then renders in about a third of the time, which keeps an eval's diagnostics
# to a small share of its run time.

MANY_CLASSES = 20  # above: no legend per class, no numbers in the confusion matrix cells


def diagnostic_figures(diagnostics) -> dict:
    """name -> Figure of a Diagnostics: the confusion matrices, the P, R and F1 curves against the
    confidence, the PR curve and the reliability diagram."""
    d = diagnostics
    curves = {name: figure_confidence_curve(d.curves.conf, values, d.curves.num_gt, d.names, d.index, label)
              for name, values, label in (("P_curve", d.curves.precision, "precision"),
                                          ("R_curve", d.curves.recall, "recall"), ("F1_curve", d.curves.f1, "F1"))}
    return {"confusion_matrix": figure_confusion(d.confusion, d.names, d.confusion_conf, d.confusion_iou),
            "confusion_matrix_normalized": figure_confusion(d.confusion, d.names, d.confusion_conf,
                                                            d.confusion_iou, normalised=True),
            **curves, "PR_curve": figure_pr_curve(d.precision, d.names),
            "reliability": figure_reliability(d.calibration)}


def _axes(fig: Figure, left=0.12, bottom=0.11, right=0.96, top=0.92):
    fig.subplots_adjust(left=left, bottom=bottom, right=right, top=top)
    return fig.add_subplot()


def figure_confusion(counts: np.ndarray, names: list[str], conf: float, iou: float, normalised: bool = False) -> Figure:
    """Rows the true class, columns the predicted one, the last of each background; normalised:
    each true class's row sums to 1 (recall on the diagonal). Class names are plain texts, not tick
    labels: 160 matplotlib ticks take twice as long to make and draw."""
    from detector.eval.diagnostics import normalise

    labels = [*names, "background"]
    n = len(labels)
    values = normalise(counts, "true") if normalised else counts
    few = n <= MANY_CLASSES + 1
    size = 7.0 if few else min(6 + 0.06 * n, 14)  # inches
    font = min(8.0, 0.75 * 0.8 * size * 72 / n)  # points: 3/4 of a row
    margin = (0.25 + font / 72 * 0.6 * max(len(str(label)) for label in labels)) / size  # the longest name
    fig = Figure(figsize=(size * 1.1, size))
    ax = _axes(fig, left=margin + 0.03, bottom=margin + 0.03, right=0.9, top=0.95)
    # counts: a square-root colour scale, or the background row (usually the largest) washes out the rest
    norm = Normalize(0, 1) if normalised else PowerNorm(0.5, vmin=0, vmax=max(int(values.max()), 1))
    image = ax.imshow(values, cmap="Blues", norm=norm)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    ax.set_xticks([])
    ax.set_yticks([])
    for i, label in enumerate(labels):
        ax.text(i, n - 0.5 + 0.3, label, rotation=90, ha="center", va="top", fontsize=font)
        ax.text(-0.5 - 0.3, i, label, ha="right", va="center", fontsize=font)
    if few:
        high = values.max() if values.size else 0
        for (row, column), value in np.ndenumerate(values):
            if value:
                ax.text(column, row, f"{value:.2f}" if normalised else str(int(value)), ha="center", va="center",
                        fontsize=7, color="white" if value > 0.6 * high else "black")
    fig.text(0.01, 0.5, "true", rotation=90, va="center", fontsize=9)
    fig.text(0.5, 0.005, "predicted", ha="center", va="bottom", fontsize=9)
    ax.set_title(("confusion matrix, rows normalised" if normalised else "confusion matrix")
                 + f" (score > {conf:g}, IoU > {iou:g})", fontsize=10)
    return fig


def _class_lines(ax, x: np.ndarray, values: np.ndarray, names: list[str], legend_values=None) -> None:
    """A thin line per class of ``values`` [K, N]: coloured and named when there are few classes,
    else grey in one LineCollection (80 Line2D objects take several times as long to draw)."""
    if len(values) <= MANY_CLASSES:
        for k, row in enumerate(values):
            name = names[k] if k < len(names) else str(k)
            ax.plot(x, row, lw=0.8, alpha=0.7,
                    label=name if legend_values is None else f"{name} {legend_values[k]:.3f}")
    elif len(values):
        segments = np.stack([np.broadcast_to(x, values.shape), values], axis=-1)  # [K, N, 2]
        ax.add_collection(LineCollection(segments, colors="grey", linewidths=0.6, alpha=0.35))


def figure_confidence_curve(conf: np.ndarray, values: np.ndarray, num_gt: np.ndarray, names: list[str], index: int,
                            ylabel: str) -> Figure:
    """``values`` [K, T] against the threshold ``conf`` [T]: a thin line per class, and the mean over
    the classes with GT thick, its value at the F1-optimal threshold ``conf[index]`` in the legend."""
    fig = Figure(figsize=(6, 5))
    ax = _axes(fig)
    step = max(len(conf) // 250, 1)  # the curves are steps: 250 points draw them as well as 1000
    _class_lines(ax, conf[::step], values[:, ::step], names)
    has_gt = num_gt > 0
    if has_gt.any():
        mean = values[has_gt].mean(0)
        ax.plot(conf[::step], mean[::step], color="tab:blue", lw=2.5,
                label=f"all classes {mean[index]:.2f} at {conf[index]:.3f}")
        ax.legend(fontsize=7, loc="lower left" if ylabel != "precision" else "lower right")
    ax.set(xlabel="confidence", ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.02), title=f"{ylabel}-confidence curve")
    return fig


def figure_pr_curve(precision: np.ndarray, names: list[str]) -> Figure:
    """Precision against recall at IoU 0.5 (COCOeval's 101 recall points) per class, and the mean
    over the classes with GT, AP50 in the legend."""
    fig = Figure(figsize=(6, 5))
    ax = _axes(fig)
    recall = np.linspace(0, 1, 101)
    p50 = precision[0, :, :, 0, -1]  # [R, K] IoU 0.5, all areas, 100 detections
    valid = (p50 > -1).all(0)
    _class_lines(ax, recall, p50[:, valid].T, [n for n, v in zip(names, valid) if v], p50[:, valid].mean(0))
    if valid.any():
        mean = p50[:, valid].mean(1)
        ax.plot(recall, mean, color="tab:blue", lw=2.5, label=f"all classes {mean.mean():.3f} AP50")
        ax.legend(fontsize=7, loc="lower left")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="precision-recall at IoU 0.5")
    return fig


def figure_reliability(calibration) -> Figure:
    """Mean IoU of each score bin (bars, its detection count above) against the diagonal a
    calibrated score would follow, and the bin's mean score (dots)."""
    c = calibration
    fig = Figure(figsize=(5.5, 5))
    ax = _axes(fig, left=0.13)
    centres, width = (c.edges[:-1] + c.edges[1:]) / 2, np.diff(c.edges)
    filled = c.count > 0
    ax.bar(centres[filled], c.mean_iou[filled], width=width[filled], edgecolor="k", color="tab:blue", alpha=0.7,
           label="mean IoU of the bin")
    ax.plot(c.mean_score[filled], c.mean_score[filled], "o", color="tab:red", ms=4, label="mean score of the bin")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    for x, y, n in zip(centres[filled], c.mean_iou[filled], c.count[filled]):
        ax.text(x, min(y, 0.93) + 0.01, str(int(n)), ha="center", va="bottom", fontsize=6)
    ax.set(xlabel="predicted score", ylabel="IoU with best same-class GT", xlim=(0, 1), ylim=(0, 1))
    ax.set_title(f"score calibration: ECE {c.ece:.4f} ({int(c.count.sum())} detections)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    return fig


def draw_val_batches(dataset, detections: list[dict], out_dir, *, batches: int = 3, batch_size: int = 4,
                     conf: float = 0.25, tile: int = 320, max_drawn: int = 100) -> dict:
    """val_batch{i}.jpg in ``out_dir`` for the first ``batches`` x ``batch_size`` images of
    ``dataset`` (ours: ``raw_item``, ``names``, ``category_ids``) that can be read: ground truth
    left, the ``detections`` (COCO result dicts, original pixels) with score > ``conf`` right (the
    ``max_drawn`` best of an image), each image fitted into a ``tile`` x ``tile`` square. Returns
    name -> Figure of each picture."""
    import torch
    from PIL import Image, ImageDraw

    from detector.data.visualize import draw_detections

    names, label_of = list(dataset.names), {int(c): k for k, c in enumerate(dataset.category_ids)}
    items = []
    for i in range(len(dataset)):
        if len(items) == batches * batch_size:
            break
        try:
            items.append(dataset.raw_item(i) if hasattr(dataset, "raw_item") else dataset[i])
        except Exception:  # noqa: BLE001 - an unreadable image is left out of the pictures (the eval said so)
            continue
    wanted = {int(target["image_id"]) for _, target in items}
    by_image: dict[int, list[dict]] = {}
    for det in detections:
        if det["image_id"] in wanted and det["score"] > conf and int(det["category_id"]) in label_of:
            by_image.setdefault(int(det["image_id"]), []).append(det)
    figures = {}
    for b in range(0, len(items), batch_size):
        truth, predicted = [], []
        for image, target in items[b:b + batch_size]:
            dets = sorted(by_image.get(int(target["image_id"]), []), key=lambda d: -d["score"])[:max_drawn]
            boxes = torch.tensor([d["bbox"] for d in dets], dtype=torch.float32).reshape(-1, 4)
            boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
            canvas, scale = _fit(image, tile)
            truth.append(draw_detections(canvas, target["boxes"].float() * scale, target["labels"], names))
            predicted.append(draw_detections(canvas, boxes * scale,
                                             torch.tensor([label_of[int(d["category_id"])] for d in dets]), names,
                                             torch.tensor([d["score"] for d in dets])))
        header, gap = 22, 8
        left, right = _mosaic(truth, tile), _mosaic(predicted, tile)
        picture = np.full((left.shape[0] + header, 2 * left.shape[1] + gap, 3), 255, np.uint8)
        picture[header:, :left.shape[1]] = left
        picture[header:, left.shape[1] + gap:] = right
        image = Image.fromarray(picture)
        draw = ImageDraw.Draw(image)
        draw.text((4, 5), "ground truth", fill=(0, 0, 0))
        draw.text((left.shape[1] + gap + 4, 5), f"predictions (score > {conf:g})", fill=(0, 0, 0))
        name = f"val_batch{b // batch_size}"
        image.save(Path(out_dir) / f"{name}.jpg", quality=90)
        fig = Figure(figsize=(picture.shape[1] / 100, picture.shape[0] / 100), dpi=100)
        ax = fig.add_axes((0, 0, 1, 1))
        ax.imshow(np.asarray(image))
        ax.axis("off")
        figures[name] = fig
    return figures


def _fit(image, size: int):
    """(uint8 [3, size, size]: ``image`` [3, H, W] scaled to fit, top-left, grey padding; the scale)."""
    import torch
    from PIL import Image

    height, width = image.shape[1:]
    scale = size / max(height, width, 1)
    new = (max(round(width * scale), 1), max(round(height * scale), 1))
    resized = Image.fromarray(image.permute(1, 2, 0).numpy()).resize(new, Image.BILINEAR, reducing_gap=2.0)
    canvas = torch.full((3, size, size), 114, dtype=torch.uint8)
    canvas[:, :new[1], :new[0]] = torch.from_numpy(np.array(resized)).permute(2, 0, 1)
    return canvas, scale


def _mosaic(tiles: list, size: int) -> np.ndarray:
    """HWC uint8 grid of [3, size, size] tiles, as square as it goes (2 x 2 for 4)."""
    columns = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    grid = np.full((rows * size, columns * size, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[r * size:(r + 1) * size, c * size:(c + 1) * size] = t.permute(1, 2, 0).numpy()
    return grid
