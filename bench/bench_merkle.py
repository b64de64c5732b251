"""Merkle proof generation against log size: flat in log n with the perfect-subtree store.

The subject is ``merkle.inclusion_proof_from`` / ``consistency_proof_from`` backed by a dict
of perfect-subtree hashes (what the SQLite store keeps, one row per completed node), at log
sizes from 2^10 to 2^18. The baseline, timed in the same process on the same leaves, is the
literal RFC 9162 §2.1.3.1 / §2.1.4.1 recursion over the full list of leaf hashes, which
reads every leaf. Rows report microseconds per proof, subtree lookups per proof, the
speed-up over the baseline, and the growth factor against the smallest size (flat = ~1).
A last row gives Frontier appends per second against hashing the leaves alone.
"""
from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from functools import partial

from bfl_private.ledger import merkle


def _per_call(fn: Callable[[int], object], args: list[int], repeats: int = 3) -> float:
    """Seconds per call of ``fn`` over ``args``, best of ``repeats`` passes (least noisy)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for a in args:
            fn(a)
        best = min(best, (time.perf_counter() - start) / len(args))
    return best


class _Store:
    def __init__(self, n: int) -> None:
        self.leaves = [merkle.leaf_hash(i.to_bytes(8, "big")) for i in range(n)]
        self.nodes: dict[tuple[int, int], bytes] = {}
        self.lookups = 0
        frontier = merkle.Frontier()
        for h in self.leaves:
            for start, end, node in frontier.append(h):
                self.nodes[(start, end)] = node

    def __call__(self, start: int, end: int) -> bytes:
        self.lookups += 1
        return self.nodes[(start, end)]


def run(*, quick: bool) -> list[dict]:
    exponents = [10, 12, 14] if quick else [10, 14, 18]
    proofs, naive_proofs = (1000, 3) if quick else (3000, 5)
    rng = random.Random(2026)
    rows: list[dict] = []
    first: dict[str, float] = {}
    for exponent in exponents:
        n = 1 << exponent
        store = _Store(n)
        root = merkle.root_from(store, n)
        for kind in ("inclusion", "consistency"):
            if kind == "inclusion":
                args = [rng.randrange(n) for _ in range(proofs)]
                fast = partial(merkle.inclusion_proof_from, store, size=n)
                slow = partial(merkle.inclusion_proof, store.leaves)
            else:
                args = [rng.randrange(1, n) for _ in range(proofs)]
                fast = partial(merkle.consistency_proof_from, store, new_size=n)
                slow = partial(merkle.consistency_proof, store.leaves)
            for a in args[:naive_proofs]:  # the two constructions agree on what is timed
                assert fast(a) == slow(a)
            store.lookups = 0
            for a in args:
                fast(a)
            lookups = store.lookups / len(args)
            t_fast = _per_call(fast, args)
            t_slow = _per_call(slow, args[:naive_proofs], repeats=1)
            first.setdefault(kind, t_fast)
            rows.append({
                "suite": "merkle",
                "name": f"{kind} proof, n = 2^{exponent}",
                "log_size": n,
                "us_per_proof": t_fast * 1e6,
                "lookups_per_proof": lookups,
                "baseline": "RFC recursion over all leaves",
                "baseline_us_per_proof": t_slow * 1e6,
                "ratio": t_slow / t_fast,
                "growth_vs_smallest": t_fast / first[kind],
            })
        index = rng.randrange(n)
        proof = merkle.inclusion_proof_from(store, index, n)
        verify = partial(merkle.verify_inclusion, store.leaves[index], index, n, proof, root)
        t_verify = _per_call(lambda _, check=verify: check(), list(range(proofs)))
        rows.append({
            "suite": "merkle",
            "name": f"verify inclusion, n = 2^{exponent}",
            "log_size": n,
            "us_per_proof": t_verify * 1e6,
            "lookups_per_proof": 0.0,
            "baseline": "inclusion proof generation (subtree store)",
            "baseline_us_per_proof": rows[-2]["us_per_proof"],
            "ratio": rows[-2]["us_per_proof"] / (t_verify * 1e6),
            "growth_vs_smallest": t_verify / first.setdefault("verify", t_verify),
        })
    count = 1 << (14 if quick else 17)
    data = [i.to_bytes(8, "big") for i in range(count)]
    start = time.perf_counter()
    hashes = [merkle.leaf_hash(d) for d in data]
    t_hash = time.perf_counter() - start
    frontier = merkle.Frontier()
    start = time.perf_counter()
    for h in hashes:
        frontier.append(h)
    t_append = time.perf_counter() - start
    rows.append({
        "suite": "merkle",
        "name": f"Frontier.append ({count} leaves)",
        "log_size": count,
        "appends_per_s": count / t_append,
        "baseline": "leaf_hash alone",
        "baseline_per_s": count / t_hash,
        "ratio": t_append / t_hash,
    })
    return rows


def _markdown(rows: list[dict]) -> str:
    lines = [
        "| measure | figure | baseline | ratio (baseline / subject) | growth vs 2^10 |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if "us_per_proof" in r:
            lines.append(
                f"| {r['name']} | {r['us_per_proof']:.1f} µs "
                f"({r['lookups_per_proof']:.1f} lookups) "
                f"| {r['baseline']}: {r['baseline_us_per_proof']:.1f} µs | {r['ratio']:.1f}x "
                f"| {r['growth_vs_smallest']:.2f} |"
            )
        else:
            lines.append(
                f"| {r['name']} | {r['appends_per_s']:.0f} appends/s | {r['baseline']}: "
                f"{r['baseline_per_s']:.0f}/s | {r['ratio']:.2f}x time | |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    print(_markdown(run(quick="--quick" in sys.argv)))
