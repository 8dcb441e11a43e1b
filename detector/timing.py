"""Wall-clock timing of a call: the one loop behind every latency figure (benchmarks, export)."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def median_ms(call: Callable[[], object], runs: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``call()`` in milliseconds over ``runs`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)
