"""Run every benchmark suite, record the machine, write ``bench/results.json``, print one table.

    python -m bench.run                      # every bench/bench_*.py, full settings
    python -m bench.run --quick              # CI settings, written to bench/results-quick.json
    python -m bench.run --only masking flower_secagg

Suites are discovered as ``bench/bench_<name>.py``, each exposing ``run(*, quick) -> list[dict]``.
A suite that fails to import or raises is recorded with its error and the others still
run (the exit status is then 1), so one broken suite never hides the rest's figures.
With ``--only``, the named suites replace their entries in an existing results file of the
same mode and the other suites' entries are kept, each with the date and commit it was
measured at.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import json
import logging
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
PACKAGES = ("bfl-private", "torch", "opacus", "phe", "gmpy2", "tenseal", "cryptography", "numpy",
            "dp-accounting", "flwr", "pynacl")


class BenchError(Exception):
    """A results file or a suite name that the runner cannot use."""


def discover() -> list[str]:
    """Suite names, from ``bench/bench_<name>.py``, sorted."""
    return sorted(p.stem.removeprefix("bench_") for p in BENCH_DIR.glob("bench_*.py"))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _commit() -> str | None:
    """HEAD, with ``-dirty`` when tracked files differ from it (the figures are of the working tree)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=BENCH_DIR, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=BENCH_DIR,
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if head and changed else head or None


def machine() -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, OS, Python, package versions."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": versions,
    }


def run_suite(name: str, *, quick: bool) -> dict[str, Any]:
    """Import and run one suite; failures are recorded, never raised."""
    started = time.perf_counter()
    entry: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": _commit(),
        "load_average": [round(x, 2) for x in os.getloadavg()],  # other work on the machine when it started
        "rows": [],
        "error": None,
    }
    try:
        module = importlib.import_module(f"bench.bench_{name}")
        rows = module.run(quick=quick)
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise BenchError(f"bench_{name}.run returned {type(rows).__name__}, expected a list of dicts")
        entry["rows"] = rows
    except Exception as exc:  # noqa: BLE001 - a failing suite is recorded and the others still run
        entry["error"] = f"{type(exc).__name__}: {exc}"
        entry["traceback"] = traceback.format_exc(limit=8)
    entry["seconds"] = round(time.perf_counter() - started, 2)
    return entry


def _load(path: Path, *, quick: bool) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BenchError(f"{path}: cannot read previous results to merge into: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("suites"), dict):
        raise BenchError(f"{path}: not a results file (no 'suites' object)")
    if data.get("quick") != quick:
        raise BenchError(f"{path}: holds quick={data.get('quick')} results; refusing to mix with quick={quick}")
    return data


# ------------------------------------------------------------------------------------
# One markdown table for every suite: case, figure, baseline, ratio.

_UNIT_HINTS = ("_s", "per_s", "_ms", "us_per", "per_1e5", "per_param", "accuracy_mean", "seconds", "gas")
_BASELINE_PREFIXES = ("baseline_", "nonprivate_", "floor_")
_NOT_CASE = {"suite", "baseline", "ratio", "error", "aborted", "traceback"}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if _is_number(value):
        return f"{value:,}"
    return str(value)


def _is_figure(key: str, value: Any) -> bool:
    return (_is_number(value) and not key.startswith(_BASELINE_PREFIXES) and "ratio" not in key
            and any(hint in key for hint in _UNIT_HINTS))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def row_cells(row: dict[str, Any]) -> tuple[str, str, str, str]:
    """(case, figure, baseline, ratio) of one row, whichever suite wrote it.

    A row may name these explicitly (``case``, ``figure``); otherwise the case is its
    ``name`` (with ``scheme``) or its non-float settings, the figure its first measured
    quantity, the baseline its ``baseline`` label with its first baseline figure
    (``baseline_*``, ``nonprivate_*``, ``floor_*``).
    """
    if "case" in row:
        case = str(row["case"])
    elif "name" in row:
        case = f"{row['scheme']}: {row['name']}" if "scheme" in row else str(row["name"])
    else:
        case = ", ".join(f"{k}={_fmt(v)}" for k, v in row.items()
                         if k not in _NOT_CASE and (not isinstance(v, float) or k == "dropout")
                         and not isinstance(v, (list, dict)))
    if "aborted" in row:
        return case, f"aborted: {row['aborted']}", str(row.get("baseline", "")), ""
    figures = [f"{k} = {_fmt(v)}" for k, v in row.items() if _is_figure(k, v)]
    figure = str(row["figure"]) if "figure" in row else (figures[0] if figures else "")
    base_figures = [f"{k.removeprefix('baseline_')} = {_fmt(v)}" for k, v in row.items()
                    if k.startswith(_BASELINE_PREFIXES) and _is_number(v)]
    baseline = str(row.get("baseline", ""))
    if base_figures:
        baseline = f"{baseline}: {base_figures[0]}" if baseline else base_figures[0]
    ratio_key = "ratio" if "ratio" in row else next((k for k in row if k.endswith("_ratio")), None)
    ratio = f"{row[ratio_key]:.3g}x" if ratio_key and isinstance(row[ratio_key], (int, float)) else ""
    if ratio_key and ratio_key != "ratio":
        ratio = f"{ratio} ({ratio_key})"
    return case, figure, baseline, ratio


def markdown(results: dict[str, Any]) -> str:
    """The whole results file as one markdown table (failed suites show their error)."""
    lines = ["| suite | case | figure | baseline | ratio |", "|---|---|---|---|---|"]
    for name, entry in results["suites"].items():
        if entry.get("error"):
            lines.append(f"| {name} | FAILED | {entry['error'].splitlines()[0][:200]} | | |")
        for row in entry.get("rows", []):
            cells = (c.replace("|", "/") for c in row_cells(row))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI settings (seconds per suite)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="suites to run (bench_<NAME>.py)")
    parser.add_argument("--output", type=Path, help="results file (default bench/results[-quick].json)")
    args = parser.parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting's RDP order warnings
    available = discover()
    names = args.only or available
    unknown = sorted(set(names) - set(available))
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(unknown)}; available: {', '.join(available)}")
    output = args.output or BENCH_DIR / ("results-quick.json" if args.quick else "results.json")
    previous = _load(output, quick=args.quick) if args.only else {}
    suites = {n: e for n, e in previous.get("suites", {}).items() if n in available}
    for name in names:
        print(f"bench_{name} ...", file=sys.stderr, flush=True)
        suites[name] = run_suite(name, quick=args.quick)
        status = suites[name]["error"] or f"{len(suites[name]['rows'])} rows"
        print(f"bench_{name}: {status} ({suites[name]['seconds']} s)", file=sys.stderr, flush=True)
    results = {"quick": args.quick, "machine": machine(), "suites": dict(sorted(suites.items()))}
    output.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(markdown(results))
    print(f"\nwritten: {output}", file=sys.stderr)
    return 1 if any(e["error"] for e in results["suites"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
