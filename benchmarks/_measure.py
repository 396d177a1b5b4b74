"""Timing and reporting shared by the per-library benchmark scripts.

Each script runs in a fresh process, calls ``time_calls`` and then
``print_report``, which prints a single JSON line for the driver to parse.
"""

import json
import resource
import statistics
import time


def time_calls(fn, repeats: int) -> dict:
    """Call ``fn`` once to warm up, then ``repeats`` times under a timer.

    ``fn`` must return only when its result is computed (block on it).
    """
    start = time.perf_counter()
    fn()
    warmup_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {
        "median_s": statistics.median(times) if times else None,
        "times": times,
        "warmup_s": warmup_s,
    }


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def print_report(timings: dict, **extra) -> None:
    """Print timings, peak RSS and any extra fields as one JSON line."""
    print(json.dumps({**timings, "peak_rss_mb": peak_rss_mb(), **extra}), flush=True)
