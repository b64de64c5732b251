"""Render the README's Performance and Results sections from measured files only.

    python -m bench.report                              # bench/results.json + notebook 02's results
    python -m bench.report --results bench/results-quick.json

Performance comes from a results file written by ``python -m bench.run`` (``make bench``);
Results from ``notebooks/results/privacy_utility.json`` and ``distributed_dp.json``, written when notebooks 02 and 05 run
with full settings. Nothing here is typed by hand: a missing file or a failed suite is
reported as such in the output, never filled in.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.run import BenchError, markdown

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"
UTILITY = ROOT / "notebooks" / "results" / "privacy_utility.json"
UTILITY_FIGURE = "notebooks/results/privacy_utility.png"
DISTRIBUTED = ROOT / "notebooks" / "results" / "distributed_dp.json"
DISTRIBUTED_FIGURE = "notebooks/results/distributed_dp.png"


def _read(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BenchError(f"{path}: no {what} yet") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise BenchError(f"{path}: unreadable {what}: {exc}") from exc
    if not isinstance(data, dict):
        raise BenchError(f"{path}: {what} must be a JSON object")
    return data


def _suite(results: dict[str, Any], name: str) -> tuple[list[dict[str, Any]], str | None]:
    entry = results["suites"].get(name)
    if entry is None:
        return [], f"suite `{name}` was not run"
    return entry.get("rows", []), entry.get("error")


def _machine_line(results: dict[str, Any]) -> str:
    m = results["machine"]
    dates = sorted({e["date"][:10] for e in results["suites"].values() if e.get("date")})
    commits = sorted({e["commit"] for e in results["suites"].values() if e.get("commit")})
    commit = commits[0] if len(commits) == 1 else "per suite in `bench/results.json`"
    packages = ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v)
    mode = "quick (CI) settings" if results["quick"] else "full settings"
    return (f"Measured with {mode} on {m['cpu']} ({m['cores']} cores), {m['platform']}, Python {m['python']}; "
            f"{packages}; {', '.join(dates)}, commit {commit or 'unknown'}.")


def flower_table(results: dict[str, Any]) -> str:
    rows, error = _suite(results, "flower_secagg")
    lines = ["| N | D | neighbours k | threshold t | dropout | ours: CPU s | Flower SecAgg+: CPU s | Flower / ours |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = f"| {r['n']} | {r['d']:.0e} | {r['neighbours']} | {r['threshold']} | {r['dropout']:.0%} |"
        if "aborted" in r:
            lines.append(f"{head} aborted: {r['aborted']} | | |")
        else:
            lines.append(f"{head} {r['cpu_s']:.3f} | {r['baseline_cpu_s']:.3f} | **{r['ratio']:.1f}x** |")
    if error:
        lines.append(f"| suite failed: {error} | | | | | | | |")
    return "\n".join(lines)


def masking_scale_table(results: dict[str, Any]) -> str:
    rows, error = _suite(results, "masking")
    table = scale_rows_table(rows)
    if error:
        table += "\n" + f"| suite failed: {error} | | | | | | | | | | |"
    return table


def scale_rows_table(rows: list[dict[str, Any]]) -> str:
    """The masking suite's scale rows (cost against N and both floors) as a table; also what
    ``python -m bench.bench_masking --scale`` prints."""
    lines = ["| N | D | k | dropout | CPU s (all parties) | AES-CTR floor s | public-key floor s | overhead s | "
             "CPU ms per client | CPU / keystream floor | CPU / both floors |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "scale" not in r:
            continue
        if "aborted" in r:
            lines.append(f"| {r['scale']} | | | | aborted: {r['aborted']} | | | | | | |")
            continue
        lines.append(f"| {r['scale']:,} | {r['d']:.0e} | {r['graph'].removeprefix('sparse k=')} | {r['dropout']:.0%} | "
                     f"{r['cpu_s']:.2f} | {r['floor_s']:.2f} | {r['public_key_floor_s']:.2f} | {r['overhead_s']:.2f} | "
                     f"{1e3 * r['cpu_s'] / r['scale']:.2f} | {r['ratio']:.1f}x | **{r['ratio_to_both_floors']:.2f}x** |")
    return "\n".join(lines)


def e2e_table(results: dict[str, Any]) -> str:
    rows, error = _suite(results, "e2e")
    lines = ["| what | time | baseline (same run) | ratio |", "|---|---|---|---|"]
    for r in rows:
        if "wall_s" in r:
            lines.append(f"| {r['case']} | {r['cpu_s']:.1f} s CPU ({r['wall_s']:.1f} s wall) | {r['baseline']}: "
                         f"{r['baseline_cpu_s']:.1f} s CPU ({r['baseline_wall_s']:.1f} s wall) | "
                         f"{r['ratio']:.2f}x CPU |")
        elif "audit_s" in r:
            lines.append(f"| {r['case']} ({r['ledger_mb']:.1f} MB) | {r['audit_s']:.2f} s (target < "
                         f"{r['target_s']:g} s) | {r['baseline']}: {r['baseline_run_s']:.0f} s | "
                         f"auditing is {r['ratio']:.0f}x faster than running |")
        else:
            lines.append(f"| {r['case']} | {r['verify_s']:.2f} s | {r['baseline']}: {r['baseline_audit_s']:.2f} s "
                         f"| {r['ratio']:.2f}x |")
    if error:
        lines.append(f"| suite failed: {error} | | | |")
    accuracy_rows, accuracy_error = _suite(results, "round_accuracy")
    for r in accuracy_rows:
        lines.append(f"| {r['case']}: test accuracy | {r['accuracy_mean']:.4f} ± {r['accuracy_sd']:.4f} "
                     f"(max ε {r['max_epsilon']:.4f}, {r['seconds_per_command']:.0f} s per command) | "
                     f"{r['baseline']} | {r['ratio']:.3f}x |")
    if accuracy_error:
        lines.append(f"| suite round_accuracy failed: {accuracy_error} | | | |")
    return "\n".join(lines)


FLOWER_DEPLOYMENT_FIGURE = "bench/results/flower_deployment.png"


def flower_deployment_table(results: dict[str, Any]) -> str:
    """bench_flower_deployment: one row per app on the same deployment; stages as mean s (share)."""
    rows, error = _suite(results, "flower_deployment")
    lines = [("| app | round s: mean ± sd (min) | exchanges | stages: mean s (share of round) | flwr run wall s | "
              "load average (start, end) | vs Flower SecAgg+ |"), "|---|---|---|---|---|---|---|"]
    for r in rows:
        stages = ", ".join(f"{name} {s['mean_s']:.2f} ({s['share']:.0%})" for name, s in r["stages"].items())
        lines.append(f"| {r['case']} | **{r['round_s']:.2f}** ± {r['round_sd_s']:.2f} ({r['round_min_s']:.2f}) | "
                     f"{r['exchanges']} | {stages} | {r['flwr_run_wall_s']:.0f} | "
                     f"{', '.join(f'{x:.1f}' for x in r.get('load_average', []))} | {r['ratio']:.2f}x |")
    if error:
        lines.append(f"| suite failed: {error} | | | | | | |")
    return "\n".join(lines)


AUDIT_FIGURE = "bench/results/audit_scale.png"


def audit_table(results: dict[str, Any]) -> str:
    rows, error = _suite(results, "audit")
    lines = ["| ledger | entries | full audit (mean of runs) | CPU s (both processes, imports included) "
             "| per entry | floor: raw Ed25519, 1 process | ratio |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["entries"]):
        target = f", target <= {r['target_s']:g} s" if "target_s" in r else ""
        one = f"; one process: {r['one_process_audit_s']:.1f} s" if "one_process_audit_s" in r else ""
        lines.append(f"| {r['rounds']} rounds x {r['clients']:,} clients | {r['entries']:,} | "
                     f"**{r['audit_s']:.2f} s** ± {r['audit_stdev_s']:.2f} ({r['repeats']} runs{target}{one}; "
                     f"load average {r['load_average']:.1f}) | {r['cpu_s']:.1f} | "
                     f"{r['us_per_entry']:.0f} µs | {r['floor_verify_s']:.2f} s | {r['ratio']:.1f}x |")
    if error:
        lines.append(f"| suite failed: {error} | | | | | | |")
    return "\n".join(lines)


def performance(results: dict[str, Any]) -> str:
    return "\n\n".join([
        "## Performance",
        _machine_line(results),
        (f"Reproduce with `make bench` (every `bench/bench_*.py`, full settings; this run took "
        f"{sum(e.get('seconds', 0) for e in results['suites'].values()) / 60:.0f} min; writes "
        "`bench/results.json`) or `.venv/bin/python -m bench.run --quick` (CI settings). "
        "Every figure has a baseline timed in the same process, so ratios hold across machines better "
        "than absolute times. This section is generated by `python -m bench.report`."),
        "### Secure aggregation against Flower's SecAgg+",
        ("Flower 1.42's own `SecAggPlusWorkflow` and `secaggplus_mod`, driven in-process through Flower's "
        "protobuf message serde, against our masking (`bench/bench_flower_secagg.py`), at equal N, D, "
        "neighbour degree, threshold and dropped clients. The dropped clients are drawn at random among the "
        "sets that leave every client t live neighbours in both protocols' graphs (Flower's ring seeded per "
        "row and read off a probe round), so both rounds complete. Figure: total CPU seconds of all parties "
        "of one round (best of 3, interleaved), float encode and decode included on both sides; long-term "
        "identity keys (ours only) made outside the timed round."),
        flower_table(results),
        "### Secure aggregation at scale",
        ("One SecAgg+ round (`bench/bench_masking.py`, scale rows), all parties in one process: k = 20 "
         "neighbours, t = 14, D = 1e5 uint32 words, 10% of clients dropped at the `mask` stage (the costliest "
         "stage for the server to lose them; drawn at random among draws that leave every client t live "
         "neighbours, since an unrestricted 10% draw aborts the round at N = 3,000 with k = 20). Two floors, "
         "timed in the same process: the AES-128-CTR keystream the round must generate, and the public-key "
         "operations it must perform — each client verifies its k neighbours' advertisements and t "
         "neighbours' survivor-set signatures, agrees 2k X25519 keys, and the server verifies every "
         "advertisement, commitment and acknowledgement — counted from the transcript and priced at unit "
         "costs measured in the run. Overhead is the rest (parsing, Shamir, HKDF, AES-GCM, Python). Cost "
         "per client stays nearly flat in N: the work is N·k·D (keystreams) plus N·k public-key operations. "
         "One N² term remains: every client signs, and verifies t signatures over, the whole survivor set "
         "U3 (4N bytes), so hashing costs N·t·4N bytes in all (estimated from SHA-512 throughput at about 0.3 ms per client at N = 3,000, not measured). "
         "Every speed-up here computes the same messages and performs every verification the protocol "
         "prescribes; none relies on a new security argument. The one existing economy is the consistency "
         "check's: a client verifies t of its neighbours' signatures over U3, not all of them (see "
         "`protocols/masking.py`: t agreeing neighbours decide which share of each peer is revealed)."),
        masking_scale_table(results),
        "### A round over a real Flower deployment",
        ("One SuperLink and 5 SuperNodes on 127.0.0.1 (`bench/bench_flower_deployment.py`), the same running "
         "deployment for three apps, one `flwr run` each with one untimed warm-up round then the timed rounds: "
         "Flower 1.42's standard FedAvg (Message API, one exchange, no training), Flower's own SecAgg+ "
         "(`SecAggPlusWorkflow` + `secaggplus_mod`, 5 shares, threshold 3, no training), and our masking round "
         "(timed rounds: four exchanges on keys made ahead, each hospital training with DP-SGD in `join`; ledger "
         "block with validator attestations), all at D = 31. Stage seconds are each app's server-side clock "
         "around its exchanges (`other`: the rest of the round); the `flwr run` wall time (start-up, warm-up) is "
         "apart from the round figure. Flower's `Grid.send_and_receive` polls for replies every 3 s, our "
         "ServerApp every 0.2 s. Where the time goes: Flower 1.42 starts a fresh `flwr-clientapp` process for "
         "every message on every SuperNode (about 1.5 CPU-s each with Flower's imports and the FAB install), so "
         "an exchange that computes nothing costs about 6.2-7 s here for either stack (five processes on two "
         "cores). Our exchanges without training cost about what Flower's do (6.5-7.3 s against 6.2-6.4 s); `join` adds "
         "what training costs: each "
         "hospital's process imports Torch and Opacus (about 3 CPU-s) and runs DP-SGD, five of them on two cores. "
         "The baselines train nothing."),
        flower_deployment_table(results),
        f"![seconds per round by stage, per app]({FLOWER_DEPLOYMENT_FIGURE})",
        "### End to end",
        e2e_table(results),
        "### Audit against ledger size",
        ("`bfl-private verify` (checks 1-10) of ledgers the coordinator wrote, R rounds x C clients "
         "(`bench/bench_audit.py`: plain protocol, every submission signed by its client, four validators; "
         "each audit in a fresh interpreter, two processes). Baseline: raw libsodium verification of the "
         "same entries' signatures in one process, the least any audit must do."),
        audit_table(results),
        f"![audit seconds against ledger entries]({AUDIT_FIGURE})",
        "### Every suite",
        "<details><summary>All measured rows (case, figure, baseline, ratio)</summary>\n\n"
        + markdown(results) + "\n\n</details>",
    ])


def results_section(utility: dict[str, Any]) -> str:
    s = utility["settings"]
    lines = [
        "## Results",
        (f"Privacy–utility of local DP-SGD (`--dp local`) on breast cancer, {s['n_clients']} hospitals "
         f"({s['partition']} α = {s['alpha']}), the toolkit's local-DP defaults: {utility['rounds']} rounds × {s['training']['local_steps']} local "
         f"DP-{s['training']['optimizer'].upper()} steps ({s['training']['model']}, learning rate "
         f"{s['training']['learning_rate']:g}, sample rate q = {s['privacy']['sample_rate']:g}, clipping norm "
         f"{s['privacy']['clipping_norm']:g}, δ = {s['privacy']['delta']:g}, {s['privacy']['accountant'].upper()} "
         f"accountant, {s['privacy']['neighboring_relation'].replace('_', '-')} relation); mean ± sd and min over "
         f"{len(utility['seeds'])} runs whose seeds (data split, initial model) were drawn when the notebook ran, "
         "each with fresh DP noise. Reference lines: the same training without "
         "clipping or noise, federated and centralised. From `notebooks/02_privacy_utility.ipynb`. "
         "The notebook's loop is plain DP FedAvg; the full `bfl-private round` command adds the validators' "
         "quality gate (a round much worse than the previous model is rejected and the old model kept); "
         "notebook 05 below runs the full command in both modes, and the End-to-end table's last row is the "
         "default command's (distributed DP) accuracy over its own fresh runs."),
        f"![test accuracy against ε]({UTILITY_FIGURE})",
        "| ε per hospital | test accuracy | min | largest ε spent |\n|---|---|---|---|",
    ]
    table = [f"| {r['epsilon']:g} | {r['accuracy_mean']:.3f} ± {r['accuracy_sd']:.3f} | {r['accuracy_min']:.3f} | "
             f"{r['max_spent']:.3f} |" for r in utility["rows"]]
    names = {"nonprivate_federated": "non-private, federated", "centralised": "non-private, centralised"}
    table += [f"| {names.get(k, k)} | {v['accuracy_mean']:.3f} ± {v['accuracy_sd']:.3f} | | — |"
              for k, v in utility["reference"].items()]
    lines[-1] += "\n" + "\n".join(table)
    return "\n\n".join(lines)


def distributed_section(distributed: dict[str, Any]) -> str:
    """Notebook 05: the `bfl-private round` engine in distributed and in local DP, against ε."""
    lines = [
        "### Distributed DP against local DP-SGD (`bfl-private round --dp distributed|local`)",
        (f"Every run is the `bfl-private round` engine on a new federation (10 non-IID hospitals, breast cancer, "
         f"SecAgg+ masking, validators checking and co-signing every block), {distributed['rounds']} rounds. "
         "Distributed: every record every round (q = 1), C = 1, a Skellam share per hospital sized for t = 2 "
         "absent or colluding, server Adam at 0.05 on the noisy sum; local: the engine's DP-SGD defaults. "
         "Settings fixed on development seeds not reported; mean ± sd and min over "
         f"{len(distributed['seeds'])} seeds drawn when the notebook ran, fresh noise; ε per record at δ = 1e-5 "
         "as charged on the ledger. From `notebooks/05_distributed_dp.ipynb`."),
        f"![distributed against local DP]({DISTRIBUTED_FIGURE})",
        "| ε per record | distributed DP | min | s per run | local DP-SGD | min | s per run |\n"
        "|---|---|---|---|---|---|---|",
    ]
    rows = {(r["dp"], r["epsilon"]): r for r in distributed["rows"]}

    def cells(row: dict[str, Any]) -> str:
        return (f"{row['accuracy_mean']:.3f} ± {row['accuracy_sd']:.3f} | {row['accuracy_min']:.3f} | "
                f"{row['seconds_per_run']:.1f}")

    table = [f"| {eps:g} | {cells(rows['distributed', eps])} | {cells(rows['local', eps])} |"
             for eps in sorted({e for _, e in rows})]
    table.append(f"| non-private, same server loop | {cells(distributed['nonprivate'])} | | | |")
    lines[-1] += "\n" + "\n".join(table)
    return "\n\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--utility", type=Path, default=UTILITY)
    parser.add_argument("--distributed", type=Path, default=DISTRIBUTED)
    args = parser.parse_args(argv)
    status = 0
    sections = []
    for render, path, what in ((performance, args.results, "benchmark results (run `make bench`)"),
                               (results_section, args.utility, "privacy-utility results (run notebook 02)"),
                               (distributed_section, args.distributed, "distributed-DP results (run notebook 05)")):
        try:
            sections.append(render(_read(path, what)))
        except (BenchError, KeyError, TypeError) as exc:
            print(f"cannot render from {path}: {type(exc).__name__}: {exc}", file=sys.stderr)
            status = 1
    print("\n\n".join(sections))
    return status


if __name__ == "__main__":
    sys.exit(main())
