"""The full audit against ledger size: ``bfl-private verify`` (checks 1-10) of real ledgers
of R rounds x C clients, and the plot of seconds against entries.

Ledgers are built by the coordinator itself (:mod:`bench.audit_ledger`: genesis, the plain
protocol, every submission signed by its client's own key, four validators that check and
attest each round, quorum certificates); only the clients' DP-SGD is replaced by a random
in-range update with the planned privacy record, so a 100 x 1,000 ledger (100,601 entries,
100,301 blobs) takes minutes, not hours. Each ledger is built once per run in a temporary
directory and audited ``repeats`` times with :func:`bfl_private.audit.audit` (two
processes where there are two cores), each time in a fresh interpreter so that nothing
the build memoised helps; the figure is the mean of the audit calls' wall seconds
(imports excluded: about a second more for ``bfl-private verify`` itself).

Baselines, timed in the same process on the same ledger:

* the floor: raw libsodium Ed25519 verification (:func:`bfl_private.primitives.ed25519.
  verify_signature`) of every entry's signature, one process, no parsing (the ratio is
  what everything else the audit checks costs on top of the signatures);
* for the largest ledger, the audit in one process (``workers=1``), to show what the
  second process buys.

Target (issue 19): the 100-round, 1,000-client ledger in <= 30 s. The plot is written to
``bench/results/audit_scale.png`` (full settings) or ``bench/results/audit_scale-quick.png``.

    python -m bench.bench_audit [--quick]
"""
from __future__ import annotations

import json
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.audit_ledger import build_ledger
from bfl_private.ledger.entries import Entry
from bfl_private.ledger.genesis import GenesisRecord
from bfl_private.ledger.store import DATABASE
from bfl_private.primitives.ed25519 import verify_signature

TARGET_S = 30.0
FULL = ((10, 1000), (30, 1000), (100, 100), (100, 300), (100, 1000))
QUICK = ((2, 50), (4, 50))
PLOT_DIR = Path(__file__).resolve().parent / "results"


def _progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def _signature_floor(directory: Path) -> float:
    """Seconds to verify every entry's signature with raw libsodium, nothing else."""
    db = sqlite3.connect(f"file:{directory / DATABASE}?mode=ro", uri=True)
    try:
        entries = [Entry.from_bytes(bytes(d), where="bench") for (d,) in
                   db.execute("SELECT data FROM entries ORDER BY idx")]
    finally:
        db.close()
    keys = {}
    for member in GenesisRecord.of(entries[0]).members:
        key = member.key()
        keys[key.key_id_hex] = key.public_bytes()
    messages = [(keys[e.author], e.signature, e.signed_bytes()) for e in entries]
    started = time.perf_counter()
    for key, signature, message in messages:
        verify_signature(key, signature, message)
    return time.perf_counter() - started


_AUDIT = """
import json, sys, time
from bfl_private.audit import audit
workers = None if sys.argv[2] == "default" else int(sys.argv[2])
started = time.perf_counter()
report = audit(sys.argv[1], workers=workers)
elapsed = time.perf_counter() - started
print(json.dumps({"ok": report.ok, "error": str(report.report.error), "seconds": elapsed,
                  "entries": report.report.entries}))
"""


def _timed_audit(directory: Path, *, workers: int | None = None) -> tuple[float, int, float]:
    """Seconds of :func:`audit` in a fresh interpreter (after its imports), as an auditor runs
    it: nothing memoised while the ledger was built here (ε figures) helps it; its entries;
    and the CPU seconds of that interpreter and its worker, imports included (steadier than
    wall time on a shared machine)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, "-c", _AUDIT, str(directory),
                           "default" if workers is None else str(workers)],
                          capture_output=True, text=True, check=False, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"audit of {directory} exited {done.returncode}: {done.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not result["ok"]:  # a ledger the coordinator wrote must verify
        raise RuntimeError(f"{directory}: the audit failed: {result['error']}")
    return float(result["seconds"]), int(result["entries"]), cpu


def measure(rounds: int, clients: int, *, repeats: int, tmp: Path, single: bool) -> dict:
    directory = tmp / f"ledger-{rounds}x{clients}"
    started = time.perf_counter()
    build_ledger(directory, clients=clients, rounds=rounds, progress=_progress)
    built = time.perf_counter() - started
    times, cpus, loads = [], [], []
    for repeat in range(repeats):
        loads.append(os.getloadavg()[0])
        seconds, entries, cpu = _timed_audit(directory)
        times.append(seconds)
        cpus.append(cpu)
        _progress(f"audit {rounds}x{clients} #{repeat + 1}: {seconds:.2f} s, {cpu:.1f} s CPU "
                  f"({entries} entries, load average {os.getloadavg()[0]:.2f})")
    floor = _signature_floor(directory)
    mean = statistics.fmean(times)
    row = {
        "suite": "audit",
        "case": f"full audit (checks 1-10), {rounds} rounds x {clients} clients",
        "rounds": rounds, "clients": clients, "entries": entries,
        "audit_s": round(mean, 3), "audit_min_s": round(min(times), 3),
        "audit_stdev_s": round(statistics.stdev(times), 3) if len(times) > 1 else 0.0,
        "repeats": repeats, "us_per_entry": round(mean / entries * 1e6, 2),
        "cpu_s": round(statistics.fmean(cpus), 2),
        "load_average": round(statistics.fmean(loads), 2),
        "build_s": round(built, 1),
        "baseline": "raw libsodium Ed25519 verify of every entry (1 process)",
        "floor_verify_s": round(floor, 3), "ratio": round(mean / floor, 2),
    }
    if (rounds, clients) == (100, 1000):
        row["target_s"] = TARGET_S
    if single:
        one, _, _ = _timed_audit(directory, workers=1)
        _progress(f"audit {rounds}x{clients} in one process: {one:.2f} s")
        row["one_process_audit_s"] = round(one, 3)
    return row


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for clients in sorted({r["clients"] for r in rows}):
        series = sorted((r for r in rows if r["clients"] == clients), key=lambda r: r["entries"])
        rounds = "/".join(str(r["rounds"]) for r in series)
        axis.errorbar([r["entries"] for r in series], [r["audit_s"] for r in series],
                      yerr=[r["audit_stdev_s"] for r in series], marker="o", capsize=3,
                      label=f"{clients:,} clients, {rounds} rounds")
    for r in rows:
        axis.annotate(f"{r['rounds']}x{r['clients']}", (r["entries"], r["audit_s"]), fontsize=7,
                      textcoords="offset points", xytext=(5, -10))
    axis.plot([r["entries"] for r in rows], [r["floor_verify_s"] for r in rows], "x", color="grey",
              label="floor: raw Ed25519 verify of the same entries, 1 process")
    if any("target_s" in r for r in rows):
        axis.axhline(TARGET_S, color="red", linestyle="--", linewidth=1, label=f"target {TARGET_S:g} s")
    axis.set_xlabel("ledger entries")
    axis.set_ylabel("full audit (checks 1-10), seconds")
    axis.set_title("bfl-private verify against ledger size (2 cores)")
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run(*, quick: bool) -> list[dict]:
    sizes, repeats = (QUICK, 2) if quick else (FULL, 3)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        for rounds, clients in sizes:
            _progress(f"ledger {rounds} rounds x {clients} clients")
            rows.append(measure(rounds, clients, repeats=repeats, tmp=Path(tmp),
                                single=(rounds, clients) == sizes[-1] if quick else (rounds, clients) == (100, 1000)))
    path = PLOT_DIR / ("audit_scale-quick.png" if quick else "audit_scale.png")
    plot(rows, path)
    for row in rows:
        row["plot"] = str(path.relative_to(PLOT_DIR.parent.parent))
    return rows


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv[1:]):
        print(f"{r['case']}: {r['audit_s']} s for {r['entries']} entries "
              f"(floor {r['floor_verify_s']} s, ratio {r['ratio']})")
