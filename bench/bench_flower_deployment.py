"""One real Flower deployment, three apps: Flower's FedAvg, Flower's SecAgg+, our masking round.

Issue 19, item 3: is our private round over Flower at most as slow as Flower's own SecAgg+
round, on the same deployment? One :class:`LoopbackDeployment` on 127.0.0.1 (one
``flower-superlink``, N = 5 ``flower-supernode`` processes, insecure, started with
``--disable-runtime-dependency-installation``) stays up while three Flower apps are
submitted to it one after the other with ``flwr run --stream``, at the same N and
D (our model's dimension, read off the new federation's genesis model: 30 features + bias
on the bundled breast-cancer data, D = 31):

1. ``fedavg`` (``bench/flower_apps/fedavg``): Flower 1.42's standard Message-API
   ``flwr.serverapp.strategy.FedAvg`` through its own ``Strategy.start`` loop, evaluation
   off; each ClientApp's train handler returns a fixed D-vector (no training). One
   exchange per round.
2. ``flower-secagg+`` (``bench/flower_apps/secaggplus``): Flower's ``SecAggPlusWorkflow``
   (num_shares 5 = every node, reconstruction_threshold 3, every other knob at Flower's
   default) inside ``DefaultWorkflow`` on the legacy ``LegacyContext`` path of Flower's
   secure-aggregation example, ``secaggplus_mod`` on a ``ClientApp`` whose ``NumPyClient``
   returns a fixed D-vector (no training). Four exchanges per round (setup, share keys,
   collect masked vectors, unmask).
3. ``ours`` (``flower_app``, run config ``protocol = "masking"``): the ServerApp of
   ``bfl_private.flower`` on a federation made by ``Federation.create`` and exported with
   ``export_hospitals`` (each SuperNode's ``hospital-dir``; the baselines ignore it): the
   whole private round, each hospital training with DP-SGD (Opacus) in the stage that
   opens the round, and the ledger block with validator attestations. Unlike the
   baselines, this round trains. The warm-up round has five exchanges (advertise, share,
   mask, acknowledge, unmask); every timed round four (join, mask, acknowledge, unmask),
   on the keys each hospital made and advertised ahead in the last round's ``unmask``.

Both baselines are Flower's code as shipped; their server apps only read
``time.perf_counter`` around the strategy's hooks / the workflow's stage methods and log
``bench-flower round R: stage S in X s`` and ``bench-flower round R: total X s``. Ours logs
``bfl-private round R: stage S answered by a of b in X s`` per exchange and
``bfl-private round R: <status>, ... X s`` per round (the engine's own clock, opening to
committed block). The bench reads those lines off each ``flwr run``'s output.

Each app runs 1 + R rounds in ONE ``flwr run`` (R = 10 in full mode): the first is an
untimed warm-up (first imports, first ClientApp processes, node registration), then R
timed rounds, so the figure is per round, not per process start. Per app: round wall time
(mean, sd, min over the timed rounds), exchanges per round, each stage's mean seconds and
share of the mean round (``other`` = round minus its stages: the server's own work
between exchanges), and the ``flwr run`` wall time (start-up, FAB install and the
warm-up included; reported apart, never in the round figure), and the machine's 1-minute
load average when that run started and ended (the apps run one after the other, so other
work on a shared machine can weigh on one app more than another: read a ratio with its
load figures). ratio = app round / Flower SecAgg+ round (the issue's target: ours <= 1).

What the deployment shares between all three apps: Flower's defaults, except that
:class:`LoopbackDeployment` sets ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` to
``SUPEREXEC_POLL_SECONDS`` (0.25 s) for every process (SuperExecs launch a ClientApp
process sooner after a message arrives: the same for all apps). What differs by design:
Flower's ``Grid.send_and_receive`` (both baselines) pulls replies every 3 s; our
ServerApp pulls every 0.2 s (``bfl_private.flower.server_app.POLL_SECONDS``).

Fresh seeds per run (the clients' vectors, the federation's data split and initial
model), recorded in the rows. Full mode only: the quick (CI) mode returns no rows, since
one deployment takes minutes (warm-up and one timed round per app already exceed 60 s).

    python -m bench.run --only flower_deployment         # full: R = 10, ~15 min, writes bench/results.json
    python -m bench.bench_flower_deployment --rounds 3   # a check: prints the table
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
APPS_DIR = BENCH_DIR / "flower_apps"
PLOT_DIR = BENCH_DIR / "results"
NODES = 5
TIMED_ROUNDS = 10
WARM_UP = 1
EPSILON = 1.0
NUM_SHARES = NODES  # Flower's neighbourhood counts the node itself: every node shares with every node
RECONSTRUCTION_THRESHOLD = 3
APPS = ("fedavg", "flower-secagg+", "ours")

BASELINE_STAGE = re.compile(r"bench-flower round (\d+): stage (\S+) in ([0-9.]+) s")
BASELINE_TOTAL = re.compile(r"bench-flower round (\d+): total ([0-9.]+) s")
OUR_STAGE = re.compile(r"bfl-private round (\d+): stage (\w+) answered by (\d+) of (\d+) in ([0-9.]+) s")
OUR_ROUND = re.compile(r"bfl-private round (\d+): (\w+), .* ([0-9.]+) s$")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class DeploymentBenchError(RuntimeError):
    """A run whose output lacks a round or stage figure, or whose round did not complete."""


@dataclasses.dataclass
class AppRun:
    """One ``flwr run``: each round's total and its stages' seconds, in round order."""

    app: str
    rounds: list[float]
    stages: list[dict[str, float]]
    wall: float
    load: tuple[float, float] = (0.0, 0.0)
    """1-minute load average when its ``flwr run`` started and ended (other work on the machine)."""


def _lines(output: str) -> list[str]:
    return [ANSI.sub("", line).strip() for line in output.splitlines()]


def parse_baseline(app: str, output: str, rounds: int, wall: float) -> AppRun:
    """Round totals and stage seconds of a baseline app's ``bench-flower`` lines (a
    line ``flwr run`` echoes twice counts once: keyed by round and stage)."""
    totals: dict[int, float] = {}
    stages: dict[int, dict[str, float]] = {}
    for line in _lines(output):
        if match := BASELINE_STAGE.search(line):
            stages.setdefault(int(match.group(1)), {})[match.group(2)] = float(match.group(3))
        elif match := BASELINE_TOTAL.search(line):
            totals[int(match.group(1))] = float(match.group(2))
    if sorted(totals) != list(range(1, rounds + 1)):
        raise DeploymentBenchError(f"{app}: round totals for rounds {sorted(totals)}, ran {rounds}:\n{output[-3000:]}")
    if "Secure aggregation halted" in output:
        raise DeploymentBenchError(f"{app}: Flower's SecAgg+ workflow halted:\n{output[-3000:]}")
    return AppRun(app, [totals[r] for r in sorted(totals)], [stages.get(r, {}) for r in sorted(totals)], wall)


def parse_ours(output: str, rounds: int, wall: float) -> AppRun:
    """Round seconds and stage exchange seconds of our ServerApp's lines; every stage
    must be answered by every hospital and no round may abort (else the figure is void)."""
    totals: dict[int, float] = {}
    stages: dict[int, dict[str, float]] = {}
    for line in _lines(output):
        if match := OUR_STAGE.search(line):
            if match.group(3) != match.group(4):
                raise DeploymentBenchError(f"ours: {line}: a hospital missed a stage:\n{output[-3000:]}")
            stages.setdefault(int(match.group(1)), {})[match.group(2)] = float(match.group(5))
        elif match := OUR_ROUND.search(line):
            if match.group(2) == "aborted":
                raise DeploymentBenchError(f"ours: round {match.group(1)} aborted:\n{output[-3000:]}")
            totals[int(match.group(1))] = float(match.group(3))
    if len(totals) != rounds:
        raise DeploymentBenchError(f"ours: round times for rounds {sorted(totals)}, ran {rounds}:\n{output[-3000:]}")
    return AppRun("ours", [totals[r] for r in sorted(totals)], [stages.get(r, {}) for r in sorted(totals)], wall)


def summarise(run: AppRun) -> dict[str, Any]:
    """Round mean/sd/min over the timed rounds, exchanges per round, stage means and shares."""
    rounds, stage_rows = run.rounds[WARM_UP:], run.stages[WARM_UP:]
    if not rounds:
        raise DeploymentBenchError(f"{run.app}: no timed rounds")
    names = list(dict.fromkeys(name for row in stage_rows for name in row))  # first-seen order
    counts = {len(row) for row in stage_rows}
    if len(counts) != 1:
        raise DeploymentBenchError(f"{run.app}: rounds with different stage counts {sorted(counts)}")
    mean = statistics.fmean(rounds)
    stages: dict[str, dict[str, float]] = {}
    staged = 0.0
    for name in names:
        seconds = statistics.fmean(row.get(name, 0.0) for row in stage_rows)
        staged += seconds
        stages[name] = {"mean_s": round(seconds, 3), "share": round(seconds / mean, 3)}
    other = mean - staged  # unrounded: each round's clock encloses its stages' clocks
    stages["other"] = {"mean_s": round(other, 3), "share": round(other / mean, 3)}
    return {"round_s": round(mean, 3), "round_sd_s": round(statistics.stdev(rounds), 3) if len(rounds) > 1 else 0.0,
            "round_min_s": round(min(rounds), 3), "round_max_s": round(max(rounds), 3),
            "exchanges": counts.pop(), "stages": stages, "rounds_s": [round(r, 3) for r in rounds],
            "warm_up_round_s": [round(r, 3) for r in run.rounds[:WARM_UP]],
            "flwr_run_wall_s": round(run.wall, 1), "load_average": [round(x, 2) for x in run.load],
            "outside_rounds_s": round(run.wall - sum(run.rounds), 1)}


def _federation(directory: Path, seeds: Mapping[str, int]) -> tuple[list[dict[str, str]], int]:
    """A new federation of NODES hospitals and its SuperNode bundles; (node configs, D)."""
    from bfl_private.coordinator import Federation
    from bfl_private.flower.setup import export_hospitals
    from bfl_private.settings import FederationSettings

    settings = dataclasses.replace(FederationSettings(), n_clients=NODES, data_seed=seeds["data"])
    federation = Federation.create(directory / "federation", settings, model_seed=seeds["model"])
    try:
        dim = int(federation.current_model().size)
        folders = export_hospitals(federation, directory / "hospitals")
    finally:
        federation.close()
    return [{"hospital-dir": str(folder)} for folder in folders.values()], dim


def measure(directory: Path, timed: int) -> tuple[dict[str, AppRun], dict[str, int], int]:
    """Start one deployment and time the three apps on it, one after the other."""
    from bfl_private.flower.deployment import LoopbackDeployment

    seeds = {"vectors": secrets.randbits(31), "data": secrets.randbits(31), "model": secrets.randbits(31)}
    node_configs, dim = _federation(directory, seeds)
    rounds = WARM_UP + timed
    common = {"num-server-rounds": rounds, "dim": dim, "nodes": NODES, "seed": seeds["vectors"]}
    timeout = 120.0 * rounds + 300.0  # a hung run fails the suite instead of the whole bench
    runs: dict[str, AppRun] = {}
    with LoopbackDeployment(directory / "flower", node_configs) as flower:
        for app in APPS:
            print(f"bench_flower_deployment: {app}, {rounds} rounds ...", file=sys.stderr, flush=True)
            load = os.getloadavg()[0]
            started = time.perf_counter()
            if app == "fedavg":
                output = flower.run(common, app_dir=APPS_DIR / "fedavg", timeout=timeout)
            elif app == "flower-secagg+":
                output = flower.run({**common, "num-shares": NUM_SHARES,
                                     "reconstruction-threshold": RECONSTRUCTION_THRESHOLD},
                                    app_dir=APPS_DIR / "secaggplus", timeout=timeout)
            else:
                output = flower.run({"federation-dir": str(directory / "federation"), "epsilon": EPSILON,
                                     "rounds": rounds, "protocol": "masking", "stage-timeout": 300.0,
                                     "train-timeout": 300.0}, timeout=timeout)
            wall = time.perf_counter() - started
            (directory / f"{app}.log").write_text(output)
            runs[app] = (parse_ours(output, rounds, wall) if app == "ours"
                         else parse_baseline(app, output, rounds, wall))
            runs[app].load = (load, os.getloadavg()[0])
            print(f"bench_flower_deployment: {app}: rounds {[round(r, 2) for r in runs[app].rounds]}, "
                  f"flwr run {wall:.1f} s", file=sys.stderr, flush=True)
    return runs, seeds, dim


def _flwr_version() -> str:
    import flwr

    return str(flwr.__version__)


def rows_of(runs: Mapping[str, AppRun], seeds: Mapping[str, int], dim: int, timed: int) -> list[dict[str, Any]]:
    summaries = {app: summarise(run) for app, run in runs.items()}
    baseline = summaries["flower-secagg+"]["round_s"]
    what = {
        "fedavg": "Flower FedAvg (Message API, Strategy.start), no training",
        "flower-secagg+": (f"Flower SecAgg+ (SecAggPlusWorkflow + secaggplus_mod, {NUM_SHARES} shares, "
                           f"threshold {RECONSTRUCTION_THRESHOLD}), no training"),
        "ours": "ours: masking round (DP-SGD in join, ledger block, validators)",
    }
    rows = []
    for app, summary in summaries.items():
        rows.append({
            "suite": "flower_deployment", "case": f"{what[app]}, N={NODES}, D={dim}", "app": app,
            "nodes": NODES, "d": dim, "timed_rounds": timed, **summary,
            "baseline": f"Flower {_flwr_version()} SecAgg+ round, same deployment",
            "baseline_round_s": baseline, "ratio": round(summary["round_s"] / baseline, 3),
            "seeds": dict(seeds),
        })
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """A stacked bar per app: its stages' mean seconds (``other``: the rest of the round)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7.2, 4.4))
    colours = plt.get_cmap("tab20")
    palette: dict[str, Any] = {}
    labels = [r["app"] for r in rows]
    for x, row in enumerate(rows):
        bottom = 0.0
        for name, stage in row["stages"].items():
            colour = "lightgrey" if name == "other" else palette.setdefault(name, colours(len(palette) % 20))
            axis.bar(x, stage["mean_s"], bottom=bottom, color=colour, edgecolor="white", width=0.6)
            if stage["mean_s"] >= 0.04 * max(r["round_s"] for r in rows):
                axis.text(x, bottom + stage["mean_s"] / 2, f"{name} {stage['mean_s']:.1f} s", ha="center",
                          va="center", fontsize=7)
            bottom += stage["mean_s"]
        axis.errorbar(x, row["round_s"], yerr=row["round_sd_s"], color="black", capsize=4)
        axis.text(x, row["round_s"] + row["round_sd_s"], f"{row['round_s']:.1f} s\n({row['ratio']:.2f}x)",
                  ha="center", va="bottom", fontsize=8)
    axis.set_xticks(range(len(rows)), labels)
    axis.set_ylabel("seconds per round (mean of timed rounds, ± sd)")
    row = rows[0]
    axis.set_title(f"One round over one Flower deployment on 127.0.0.1: N = {row['nodes']}, D = {row['d']}, "
                   f"{row['timed_rounds']} timed rounds", fontsize=9)
    axis.set_ylim(0, 1.2 * max(r["round_s"] + r["round_sd_s"] for r in rows))
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run(*, quick: bool, timed: int = TIMED_ROUNDS, plot_path: Path | None = None) -> list[dict[str, Any]]:
    if quick:
        return []  # one deployment with warm-up takes minutes: full mode only (see the docstring)
    with tempfile.TemporaryDirectory(prefix="bench-flower-deploy-") as tmp:
        runs, seeds, dim = measure(Path(tmp), timed)
    rows = rows_of(runs, seeds, dim, timed)
    path = plot_path or PLOT_DIR / "flower_deployment.png"
    plot(rows, path)
    for row in rows:
        row["plot"] = str(path.relative_to(BENCH_DIR.parent)) if path.is_relative_to(BENCH_DIR.parent) else str(path)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_flower_deployment", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=TIMED_ROUNDS, help="timed rounds per app (after 1 warm-up)")
    parser.add_argument("--plot", type=Path, help=f"figure path (default {PLOT_DIR / 'flower_deployment.png'})")
    args = parser.parse_args(argv)
    from bench.report import flower_deployment_table

    rows = run(quick=False, timed=args.rounds, plot_path=args.plot)
    print(flower_deployment_table({"suites": {"flower_deployment": {"rows": rows}}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
