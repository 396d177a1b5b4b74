"""Timing for the empirical-NTK benchmarks: like _measure.time_calls, but a call that takes
longer than SLOW_S in its warm-up is timed once only (the slowest peers take minutes)."""

import statistics
import time

SLOW_S = 20.0


def timed(fn, repeats: int) -> dict:
    """Warm up with one call, then time ``repeats`` calls (one if the warm-up was slow)."""
    start = time.perf_counter()
    fn()
    warmup_s = time.perf_counter() - start
    times = []
    for _ in range(repeats if warmup_s < SLOW_S else min(repeats, 1)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times) if times else None, "times": times, "warmup_s": warmup_s}
