"""Task-aligned assignment: the plain dense formulation, and a speed/memory benchmark against it.

Index convention: B images, M ground truths per image (padded), A anchor points, C classes.

``dense_task_aligned_assign`` is the readable B x M x A form of the rules in
``detector/assigners/tal.py`` (the YOLOv8 layout: a [B, M, A, 4] distance tensor for the inside
test, then [B, M, A] overlaps, scores, metric and masks). The tests check that
``TaskAlignedAssigner`` returns exactly what it returns; the benchmark compares the two.

Benchmark method: each (implementation, M) case runs in a fresh ``python`` subprocess, so that
allocator caches of one case do not hide another's. The child builds the inputs, runs one small
warm-up, returns freed heap pages to the kernel (glibc ``malloc_trim``) so that the call cannot
reuse them unseen, then resets the kernel's peak-RSS counter (``echo 5 > /proc/self/clear_refs``), reads
VmRSS, runs one assignment and reads VmHWM: peak_MB = VmHWM - VmRSS before the call, i.e. the
extra resident memory the call needed at its peak (the AssignResult it returns included). Time is
the median of a few further calls. Inputs: 640x640 images, strides 8/16/32 (A=8400), C=80; GT
boxes log-uniform in size (8..320 px side, aspect 1:2..2:1), per-image counts uniform in
[M/2, M] (padded to M, as a real batch is); predictions are boxes jittered around the anchors
(0.5..5 strides each side) and uniform scores in [0, 0.5).
"""
from __future__ import annotations

import ctypes
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch
from torch import Tensor

from detector.assigners.base import AssignResult
from detector.assigners.tal import TaskAlignedAssigner
from detector.boxes import aligned_iou, make_anchors


def dense_task_aligned_assign(
    pred_scores: Tensor, pred_bboxes: Tensor, anchor_points: Tensor, gt_labels: Tensor,
    gt_bboxes: Tensor, gt_mask: Tensor, num_classes: int, topk: int = 10, alpha: float = 0.5,
    beta: float = 6.0, eps: float = 1e-9,
) -> AssignResult:
    """Reference task-aligned assignment with dense B x M x A tensors (see the module docstring)."""
    batch, num_anchors, _ = pred_scores.shape
    num_gt = gt_bboxes.shape[1]
    device = pred_scores.device
    labels = torch.full((batch, num_anchors), num_classes, dtype=torch.long, device=device)
    bboxes = torch.zeros((batch, num_anchors, 4), dtype=gt_bboxes.dtype, device=device)
    scores = torch.zeros_like(pred_scores)
    if num_gt == 0:
        return AssignResult(labels, bboxes, scores, torch.zeros_like(labels, dtype=torch.bool),
                            torch.zeros_like(labels))

    # Candidates: anchor centres strictly inside a real GT.
    lt, rb = gt_bboxes[:, :, None, :2], gt_bboxes[:, :, None, 2:]  # [B, M, 1, 2]
    deltas = torch.cat((anchor_points - lt, rb - anchor_points), dim=-1)  # [B, M, A, 4]
    candidate = (deltas.amin(dim=-1) > eps) & gt_mask[:, :, None]  # [B, M, A]
    del deltas

    # Overlap and class score of each candidate pair; 0 elsewhere.
    b, m, a = candidate.nonzero(as_tuple=True)
    overlaps = torch.zeros(candidate.shape, device=device)  # [B, M, A]
    overlaps[b, m, a] = aligned_iou(gt_bboxes[b, m].float(), pred_bboxes[b, a].float(), kind="ciou").clamp(min=0)
    class_scores = torch.zeros(candidate.shape, device=device)  # [B, M, A]
    class_scores[b, m, a] = pred_scores[b, a, gt_labels[b, m]].float()
    metric = class_scores.pow(alpha) * overlaps.pow(beta)  # [B, M, A]

    # Top-k over all anchors; a top-k anchor counts only if it is a candidate.
    top = metric.topk(min(topk, num_anchors), dim=-1).indices  # [B, M, k]
    in_topk = torch.zeros_like(candidate).scatter_(-1, top, True)
    positive = in_topk & candidate  # [B, M, A]

    # Several claimants: the highest overlap wins (argmax returns the first, i.e. lowest GT).
    winner = torch.where(positive, overlaps, -1.0).argmax(dim=1)  # [B, A]
    positive &= torch.arange(num_gt, device=device)[None, :, None] == winner[:, None, :]
    fg_mask = positive.any(dim=1)  # [B, A]
    gt_index = torch.where(fg_mask, winner, 0)

    # Normalise per GT over its final positives.
    metric = metric * positive
    max_metric = metric.amax(dim=-1, keepdim=True)  # [B, M, 1]
    max_overlap = (overlaps * positive).amax(dim=-1, keepdim=True)
    quality = (metric * max_overlap / (max_metric + eps)).amax(dim=1)  # [B, A]

    image = torch.arange(batch, device=device)[:, None]
    assigned_labels = torch.where(fg_mask, gt_labels[image, gt_index], 0)  # [B, A]; padded rows may hold -1
    labels = torch.where(fg_mask, assigned_labels, num_classes)
    bboxes = torch.where(fg_mask[..., None], gt_bboxes[image, gt_index], 0.0)
    scores = torch.nn.functional.one_hot(assigned_labels, num_classes).to(scores.dtype)
    scores = scores * (quality * fg_mask)[..., None].to(scores.dtype)  # [B, A, C]
    return AssignResult(labels, bboxes, scores, fg_mask, gt_index)


def make_inputs(batch: int, num_gt: int, num_classes: int = 80, imgsz: int = 640, seed: int = 0) -> dict:
    """Random but realistic assigner inputs (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    sizes = [(imgsz // s, imgsz // s) for s in (8, 16, 32)]
    anchor_points, strides = make_anchors(sizes, [8, 16, 32])
    num_anchors = anchor_points.shape[0]

    counts = torch.randint(num_gt // 2, num_gt + 1, (batch,), generator=gen)
    counts[0] = num_gt
    gt_mask = torch.arange(num_gt)[None] < counts[:, None]  # [B, M]
    side = torch.exp(torch.empty(batch, num_gt).uniform_(math.log(8), math.log(320), generator=gen))
    aspect = torch.exp(torch.empty(batch, num_gt).uniform_(math.log(0.5), math.log(2), generator=gen))
    w, h = side * aspect.sqrt(), side / aspect.sqrt()
    cx, cy = (torch.rand(2, batch, num_gt, generator=gen) * imgsz).unbind(0)
    gt_bboxes = torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1).clamp(0, imgsz)
    gt_labels = torch.randint(0, num_classes, (batch, num_gt), generator=gen)

    dist = strides[:, None] * (0.5 + 4.5 * torch.rand(batch, num_anchors, 4, generator=gen))  # px
    pred_bboxes = torch.cat((anchor_points - dist[..., :2], anchor_points + dist[..., 2:]), dim=-1)
    pred_scores = 0.5 * torch.rand(batch, num_anchors, num_classes, generator=gen)
    return dict(pred_scores=pred_scores, pred_bboxes=pred_bboxes, anchor_points=anchor_points,
                gt_labels=gt_labels, gt_bboxes=gt_bboxes, gt_mask=gt_mask, strides=strides)


def _assign(impl: str, inputs: dict, num_classes: int) -> AssignResult:
    if impl == "ours":
        return TaskAlignedAssigner(num_classes=num_classes)(**inputs)
    args = {key: value for key, value in inputs.items() if key != "strides"}
    return dense_task_aligned_assign(**args, num_classes=num_classes)


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"benchmarks/assigner.py: {field} not in /proc/self/status")


def _child(impl: str, batch: int, num_gt: int, repeats: int, threads: int) -> dict:
    """One case, run inside a fresh subprocess."""
    torch.set_num_threads(threads)
    num_classes = 80
    _assign(impl, make_inputs(1, 2, num_classes, seed=1), num_classes)  # warm-up: lazy inits
    inputs = make_inputs(batch, num_gt, num_classes)
    # Hand freed-but-resident heap pages back first, or the call would reuse them unseen.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _proc_status_kb("VmRSS")
    result = _assign(impl, inputs, num_classes)
    peak_mb = (_proc_status_kb("VmHWM") - before) / 1024
    del result
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _assign(impl, inputs, num_classes)
        times.append((time.perf_counter() - start) * 1e3)
    return {"ms": statistics.median(times), "peak_mb": peak_mb}


def _run_child(impl: str, batch: int, num_gt: int, repeats: int, threads: int) -> dict:
    code = ("import json, sys; from detector.benchmarks.assigner import _child; "
            f"print(json.dumps(_child({impl!r}, {batch}, {num_gt}, {repeats}, {threads})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": f"rc={done.returncode}: {done.stderr.strip().splitlines()[-1:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _mem_available_mb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("inf")


def run(quick: bool = False) -> list[dict]:
    """One TAL assignment at A=8400, C=80: ours (chunked) vs the dense reference.

    The dense case is skipped when its estimated peak (bytes per B*M*A entry measured on the
    previous M, times B*M*A) exceeds ``ASSIGNER_BENCH_DENSE_BUDGET_MB`` (default 6000) or half
    the memory available now. Children run on ``ASSIGNER_BENCH_THREADS`` intra-op threads
    (default 1: on a shared 2-core machine two OpenMP threads wait on each other's time slices and
    the timings swing by 10x).
    """
    threads = int(os.environ.get("ASSIGNER_BENCH_THREADS", 1))
    batch = 2 if quick else 16
    gt_counts = (10, 50) if quick else (10, 50, 200, 1000)
    repeats = 2 if quick else 5
    budget_mb = min(float(os.environ.get("ASSIGNER_BENCH_DENSE_BUDGET_MB", 6000)), _mem_available_mb() / 2)
    num_anchors = 8400
    bytes_per_entry = 48.0  # a guess until the first dense case is measured
    rows = []
    for num_gt in gt_counts:
        ours = _run_child("ours", batch, num_gt, repeats, threads)
        entries = batch * num_gt * num_anchors
        estimate_mb = bytes_per_entry * entries / 2**20
        if estimate_mb > budget_mb:
            dense = {"ms": f"OOM/skipped (est. {estimate_mb / 1024:.1f} GB)", "peak_mb": f"est. {estimate_mb:.0f}"}
        else:
            dense = _run_child("dense", batch, num_gt, max(1, repeats // 2) if num_gt >= 1000 else repeats, threads)
            if "peak_mb" in dense:
                bytes_per_entry = max(dense["peak_mb"] * 2**20 / entries, 1.0)
        rows.append({"B": batch, "M": num_gt, "A": num_anchors, "threads": threads,
                     "ours_ms": ours.get("ms", ours.get("error")), "dense_ms": dense.get("ms", dense.get("error")),
                     "ours_peak_MB": ours.get("peak_mb", ""), "dense_peak_MB": dense.get("peak_mb", "")})
    return rows
