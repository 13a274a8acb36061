"""Small helpers shared by the benchmark jobs (no MPI here)."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def summarize(samples: list[float]) -> dict:
    """Median and p99 of timings in seconds, reported in microseconds."""
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return {"median_us": statistics.median(ordered) * 1e6, "p99_us": p99 * 1e6, "n": len(ordered)}


def timed(fn: Callable[[], object], reps: int, warmup: int = 0) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples
