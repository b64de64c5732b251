"""Benchmarks. Each ``bench/bench_<suite>.py`` exposes ``run(*, quick: bool) -> list[dict]``
returning rows of measured figures, each with a ratio against a baseline timed in the
same process; ``python -m bench.run`` runs every suite and writes ``bench/results.json``."""

import time
from collections.abc import Callable


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of ``repeats`` calls: the least disturbed by other load on the machine."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)
