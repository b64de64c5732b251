"""Benchmarks. Each ``bench/bench_<suite>.py`` exposes ``run(*, quick: bool) -> list[dict]``
returning rows of measured figures, each with a ratio against a baseline timed in the
same process; ``python -m bench.run`` runs every suite and writes ``bench/results.json``."""
