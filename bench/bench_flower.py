"""Round time over Flower against the in-process round, same settings, same engine.

For masking, Paillier and CKKS (whose key holder stays with the coordinator), three ways
to run the same private round (DP-SGD with Opacus, the protocol, the ledger block with
validator attestations) through the one round engine, each on a fresh federation created
with identical settings and plan:

* ``in-process`` — :meth:`Federation.run_round` (``bfl-private round``): the engine over
  the loopback transport to the demo's hospitals, acting from their party folders; the
  baseline (ratio 1);
* ``loopback`` — :class:`RoundEngine` over :class:`LoopbackTransport` to hospitals
  exported as SuperNode bundles (:func:`~bfl_private.flower.setup.export_hospitals`),
  loaded as a ClientApp loads them, each round handed the keys made ahead in the last
  (a masking round after the first starts with ``join``): no network and no processes;
* ``flower`` (full mode only) — a real SuperLink and one SuperNode per hospital on
  127.0.0.1, ``flwr run``; the round time is the ServerApp's own measurement, from the
  round's opening to its committed block, so Flower's start-up is excluded (reported
  apart as the ``flwr run`` wall time).

Timings are medians over the rounds after one untimed warm-up round per mode (it also
creates the HE key holder); all modes run in this process's machine one after the other,
so their ratio is comparable even when the machine is shared. Each row's baseline is the
in-process round of the same protocol.

    python -m bench.bench_flower          # 5 hospitals, 2 timed rounds per mode and protocol, with Flower
    python -m bench.bench_flower --quick  # CI: 3 hospitals, 1 timed round, in-process vs loopback
"""
from __future__ import annotations

import dataclasses
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bfl_private.coordinator import Federation
from bfl_private.rounds.hospital import Hospital
from bfl_private.rounds.loopback import LoopbackTransport
from bfl_private.rounds.engine import RoundEngine
from bfl_private.flower.setup import export_hospitals
from bfl_private.settings import FederationSettings

EPSILON = 1.0
PROTOCOLS = ("masking", "paillier", "ckks")
WARM_UP = 1
"""Rounds run first and not timed in every mode (first use of Opacus, caches, processes)."""
ROUND_LINE = re.compile(r"bfl-private round (\d+): (\w+), .* ([0-9.]+) s$")


def _federation(directory: Path, hospitals: int) -> Federation:
    base = FederationSettings()
    return Federation.create(directory, dataclasses.replace(base, n_clients=hospitals), model_seed=0)


def _in_process(directory: Path, protocol: str, hospitals: int, rounds: int) -> list[float]:
    federation = _federation(directory, hospitals)
    try:
        plan = federation.plan(epsilon=EPSILON, rounds=rounds, skip_exhausted=False)
        rng = np.random.default_rng(0)
        return [federation.run_round(plan, protocol=protocol, dropout=0.0, malicious=0, rng=rng).seconds
                for _ in range(rounds)][WARM_UP:]
    finally:
        federation.close()


def _loopback(directory: Path, protocol: str, hospitals: int, rounds: int) -> list[float]:
    federation = _federation(directory / "federation", hospitals)
    try:
        folders = export_hospitals(federation, directory / "hospitals")
        nodes = {i: Hospital.from_node_config({"hospital-dir": str(f)}) for i, f in enumerate(folders.values())}
        plan = federation.plan(epsilon=EPSILON, rounds=rounds, skip_exhausted=False)
        transport = LoopbackTransport(nodes)
        seconds, ahead = [], {}
        for _ in range(rounds):  # as the ServerApp runs them: keys made ahead pass to the next round
            engine = RoundEngine(federation, plan, transport, protocol=protocol, ahead=ahead)
            seconds.append(engine.run().seconds)
            ahead = engine.advertised_ahead
        return seconds[WARM_UP:]
    finally:
        federation.close()


def _flower(directory: Path, protocol: str, hospitals: int, rounds: int) -> tuple[list[float], float]:
    from bfl_private.flower.deployment import LoopbackDeployment

    federation = _federation(directory / "federation", hospitals)
    try:
        folders = export_hospitals(federation, directory / "hospitals")
    finally:
        federation.close()
    nodes = [{"hospital-dir": str(f)} for f in folders.values()]
    with LoopbackDeployment(directory / "flower", nodes) as flower:
        started = time.perf_counter()
        output = flower.run({"federation-dir": str(directory / "federation"), "epsilon": EPSILON,
                             "rounds": rounds, "protocol": protocol, "stage-timeout": 300.0,
                             "train-timeout": 300.0}, timeout=1800)
        wall = time.perf_counter() - started
    by_round: dict[int, float] = {}  # flwr run may echo a ServerApp log line twice
    for line in output.splitlines():
        match = ROUND_LINE.search(line.strip())
        if match:
            if match.group(2) == "aborted":
                raise RuntimeError(f"round {match.group(1)} aborted over Flower:\n{output[-3000:]}")
            by_round[int(match.group(1))] = float(match.group(3))
    if len(by_round) != rounds:
        raise RuntimeError(f"found round times for rounds {sorted(by_round)}, ran {rounds}:\n{output[-3000:]}")
    seconds = [by_round[r] for r in sorted(by_round)][WARM_UP:]
    return seconds, wall


def run(*, quick: bool) -> list[dict]:
    hospitals, timed = (3, 1) if quick else (5, 2)
    rounds = timed + WARM_UP
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-flower-") as tmp:
        for protocol in PROTOCOLS:
            root = Path(tmp) / protocol
            baseline = statistics.median(_in_process(root / "in-process", protocol, hospitals, rounds))
            measured = {"in-process": baseline,
                        "loopback": statistics.median(_loopback(root / "loopback", protocol, hospitals, rounds))}
            extra: dict[str, dict] = {}
            if not quick:
                times, wall = _flower(root / "flower", protocol, hospitals, rounds)
                measured["flower"] = statistics.median(times)
                extra["flower"] = {"flwr_run_wall_s": round(wall, 1)}
            for mode, seconds in measured.items():
                rows.append({
                    "suite": "flower", "mode": mode, "protocol": protocol, "hospitals": hospitals,
                    "timed_rounds": timed, "round_s": round(seconds, 3),
                    "baseline": f"in-process {protocol} round, same settings",
                    "ratio": round(seconds / baseline, 2),
                    **extra.get(mode, {}),
                })
    return rows


def _table(rows: list[dict]) -> str:
    lines = ["| protocol | mode | hospitals | timed rounds | round s (median) | vs in-process | flwr run wall s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['protocol']} | {r['mode']} | {r['hospitals']} | {r['timed_rounds']} | {r['round_s']:.3f} | "
                     f"{r['ratio']:.2f}x | {r.get('flwr_run_wall_s', '')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(_table(run(quick="--quick" in sys.argv[1:])))
