"""Task-aligned assignment: speed and memory of ``TaskAlignedAssigner`` against the dense reference.

Index convention: B images, M ground truths per image (padded), A anchor points, C classes.

The dense reference (the readable B x M x A form, YOLOv8's layout) and the inputs live in
``tests/reference/assigner.py``: the tests check that ``TaskAlignedAssigner`` returns exactly what
it returns; this benchmark compares the two.

Method: each (implementation, M) case runs in a fresh ``python`` subprocess, so that
allocator caches of one case do not hide another's. The child builds the inputs, runs one small
warm-up, returns freed heap pages to the kernel (glibc ``malloc_trim``) so that the call cannot
reuse them unseen, then resets the kernel's peak-RSS counter (``echo 5 > /proc/self/clear_refs``), reads
VmRSS, runs one assignment and reads VmHWM: peak_MB = VmHWM - VmRSS before the call, i.e. the
extra resident memory the call needed at its peak (the AssignResult it returns included). Time is
the median of a few further calls. Inputs (``make_inputs``): 640x640 images, strides 8/16/32
(A=8400), C=80, realistic GT boxes and predictions.
"""
from __future__ import annotations

import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from detector.assigners.base import AssignResult
from detector.assigners.tal import TaskAlignedAssigner
from tests.reference.assigner import dense_task_aligned_assign, make_inputs

ROOT = Path(__file__).resolve().parents[1]  # the checkout: the child imports benchmarks and tests from it


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
    code = ("import json, sys; from benchmarks.assigner import _child; "
            f"print(json.dumps(_child({impl!r}, {batch}, {num_gt}, {repeats}, {threads})))")
    # python -c puts the working directory first on sys.path: the checkout, wherever bench runs from
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
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
