"""End to end: the operator's command and the auditor's verification, as users run them.

1. ``bfl-private round --epsilon 1.0`` on the defaults (10 hospitals, breast cancer,
   masking SecAgg+, distributed DP, 40 rounds, 4 validators, a fresh ledger), run as a
   subprocess of the real console script in a temporary directory: wall seconds and CPU
   seconds (children's rusage), after one warm-up import. Baselines, timed in the same run:
   the same command with ``--dp local`` (DP-SGD on each hospital), so the ratio is what
   distributed DP costs against local DP; and ``--dp local --protocol plain`` against
   ``--dp local`` (same DP training, ledger and validators; no secure aggregation), so that
   ratio is what protecting the updates costs on top of everything else (CPU, not wall:
   wall time on a shared machine measures the neighbours).
2. The full audit (:func:`bfl_private.audit.audit`: integrity checks 1-7 plus the
   recomputed aggregates, model chain, ε claims and round seeds) of a 50-round, 10-client ledger,
   built here with :func:`bfl_private.runner.run_command`. Target: under 30 s. Baseline:
   the time the 50 rounds took to run; ratio = running / auditing.
3. The integrity verifier alone (:func:`bfl_private.ledger.verify.run_checks`, no
   semantic hooks) on the same ledger, against the full audit.

Quick mode (CI): 1 round for the commands and a 2-round ledger.

    python -m bench.bench_e2e [--quick]
"""
from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bfl_private.ledger.verify import run_checks

from bfl_private.audit import audit
from bfl_private.runner import DEFAULT_ROUNDS, RoundOptions, run_command

VERIFY_TARGET_S = 30.0


class EndToEndFailed(Exception):
    """A command or verification that the benchmark runs did not succeed."""


def _cli() -> str:
    """The installed console script beside this interpreter (the one users run)."""
    script = Path(sys.executable).with_name("bfl-private")
    found = str(script) if script.exists() else shutil.which("bfl-private")
    if found is None:
        raise EndToEndFailed("the bfl-private console script is not installed beside this Python")
    return found


def _timed_command(args: list[str], cwd: Path) -> tuple[float, float]:
    """(wall s, CPU s) of one subprocess; raises with its stderr if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(args, check=False, cwd=cwd, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "COLUMNS": "120"})
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise EndToEndFailed(f"{' '.join(args[1:])} exited {done.returncode}: {done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def bench_round_command(*, rounds: int) -> list[dict]:
    extra = [] if rounds == DEFAULT_ROUNDS else ["--rounds", str(rounds)]
    # Warm-up: the first process to import torch and Opacus pays for a cold file cache.
    _timed_command([sys.executable, "-c", "import bfl_private.runner"], Path.cwd())
    variants = {"default": [], "local": ["--dp", "local"], "local plain": ["--dp", "local", "--protocol", "plain"]}
    timings = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags in variants.items():
            work = Path(tmp) / name.replace(" ", "-")
            work.mkdir()
            timings[name] = _timed_command([_cli(), "round", "--epsilon", "1.0", *extra, *flags], work)
            _timed_command([_cli(), "verify", "bfl-ledger"], work)  # it produced a valid ledger
    command = "bfl-private round --epsilon 1.0" + (f" --rounds {rounds}" if extra else "")

    def row(case: str, name: str, baseline: str, against: str) -> dict:
        (wall, cpu), (base_wall, base_cpu) = timings[name], timings[against]
        return {"suite": "e2e", "case": case, "rounds": rounds, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                "baseline": baseline, "baseline_wall_s": round(base_wall, 2), "baseline_cpu_s": round(base_cpu, 2),
                "ratio": round(cpu / base_cpu, 3)}

    return [row(f"`{command}` (defaults: 10 clients, masking, distributed DP)", "default",
                "same command, --dp local", "local"),
            row(f"`{command} --dp local` (masking, DP-SGD)", "local",
                "same command, --dp local --protocol plain", "local plain")]


def bench_verifier(*, rounds: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "ledger"
        started = time.perf_counter()
        report = run_command(directory, RoundOptions(epsilon=4.0, rounds=rounds, budget=8.0, seed=0), quiet=True)
        t_build = time.perf_counter() - started
        if len(report.rounds) != rounds:
            raise EndToEndFailed(f"built {len(report.rounds)} rounds, asked for {rounds}")
        started = time.perf_counter()
        full = audit(directory)
        t_audit = time.perf_counter() - started
        started = time.perf_counter()
        integrity = run_checks(directory)
        t_integrity = time.perf_counter() - started
        full.report.raise_for_failure()  # a freshly built ledger must verify
        integrity.raise_for_failure()
        size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
    ledger = f"{rounds}-round, 10-client ledger"
    return [
        {"suite": "e2e", "case": f"full audit (checks 1-11) of a {ledger}", "rounds": rounds,
         "audit_s": round(t_audit, 2), "target_s": VERIFY_TARGET_S, "ledger_mb": round(size / 1e6, 2),
         "baseline": f"running the {rounds} rounds", "baseline_run_s": round(t_build, 2),
         "ratio": round(t_build / t_audit, 2)},
        {"suite": "e2e", "case": f"integrity verifier only (checks 1-7) of the {ledger}", "rounds": rounds,
         "verify_s": round(t_integrity, 2), "baseline": "full audit (checks 1-11)",
         "baseline_audit_s": round(t_audit, 2), "ratio": round(t_integrity / t_audit, 3)},
    ]


def run(*, quick: bool) -> list[dict]:
    return [*bench_round_command(rounds=1 if quick else DEFAULT_ROUNDS),
            *bench_verifier(rounds=2 if quick else 50)]


def _table(rows: list[dict]) -> str:
    lines = ["| case | figure | baseline | ratio |", "|---|---|---|---|"]
    for r in rows:
        figure = next(f"{k} = {v}" for k, v in r.items() if k.endswith("_s") and not k.startswith("baseline"))
        base = next(v for k, v in r.items() if k.startswith("baseline_") and k.endswith("_s"))
        lines.append(f"| {r['case']} | {figure} | {r['baseline']}: {base} s | {r['ratio']}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(_table(run(quick="--quick" in sys.argv[1:])))
