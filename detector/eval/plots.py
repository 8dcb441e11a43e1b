"""Evaluation pictures: precision-recall curves and predicted score against IoU."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

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
