"""Timing: rates and latencies measured with a monotonic clock, repeated and interleaved so that a busy
neighbour on a shared machine slows every contender alike instead of whichever ran at the wrong moment."""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np


def interleaved_rates(
    runs: dict[str, Callable[[], object]], items: int | dict[str, int], repeats: int = 3
) -> dict[str, float]:
    """Items per second for each run (`items` per call, or a count per run): round r calls every run once, in
    order; the median round counts."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - started)
    counts = items if isinstance(items, dict) else dict.fromkeys(runs, items)
    return {name: counts[name] / float(np.median(values)) for name, values in seconds.items()}


def rate(run: Callable[[], object], items: int, repeats: int = 3) -> float:
    return interleaved_rates({"run": run}, items, repeats)["run"]


def latencies(call: Callable[[object], object], inputs: Sequence[object]) -> np.ndarray:
    """Seconds taken by `call(x)` for each input, in input order."""
    taken = np.empty(len(inputs))
    for i, x in enumerate(inputs):
        started = time.perf_counter()
        call(x)
        taken[i] = time.perf_counter() - started
    return taken


def per_call_microseconds(calls: dict[str, Callable[[object], object]], inputs: Sequence[object], repeats: int = 5):
    """Median microseconds per call of each function over `inputs`, rounds interleaved as in `interleaved_rates`."""
    runs = {name: (lambda f=f: [f(x) for x in inputs]) for name, f in calls.items()}
    return {name: 1e6 / r for name, r in interleaved_rates(runs, len(inputs), repeats).items()}
