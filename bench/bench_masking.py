"""Secure aggregation by masking: CPU seconds of all parties against the AES-CTR floor.

Every party runs in this process, so ``time.process_time`` over one ``secure_sum`` call is
the total CPU of N clients and the server (message encoding, Ed25519, X25519, Shamir,
AES-GCM, mask expansion, unmasking). The floor is the AES-128-CTR keystream that the
protocol cannot avoid generating — each surviving client's self mask and pairwise masks,
and the server's regeneration of survivors' self masks and of dropped clients' pairwise
masks — timed in the same process with the same ``update_into`` into a reused buffer,
with nothing else done. Each is the best of two runs. Dropouts happen at the ``mask`` stage (after sharing keys), the
costliest case for the server.

Scale rows (``scale=N``): N = 100, 300, 1,000, 3,000 at D = 1e5, k = 20 (t = 14), 10% of
clients dropped at the ``mask`` stage, drawn at random among the draws that leave every
client at least t live neighbours (an unrestricted draw aborts the round at N = 3,000). Besides the keystream floor they carry a second,
higher floor: the public-key operations the protocol requires of all parties (Ed25519
verifications and signatures, X25519 agreements and key generations), counted from the
round's transcript and graph and priced at unit costs timed in the same process. What is
left above keystream + public-key floor is our own overhead (parsing, Shamir, HKDF,
AES-GCM, Python).

    python -m bench.bench_masking          # full grid
    python -m bench.bench_masking --quick  # CI subset
"""

from __future__ import annotations

import sys
import time

import numpy as np
from bfl_private.protocols.errors import TooManyDropouts
from bfl_private.protocols.masking import MaskingTranscript, secure_sum
from bfl_private.protocols.masking_graph import default_threshold, neighbour_graph
from bfl_private.protocols.prg import DEFAULT_CHUNK_WORDS, new_seed
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SPARSE_K = 13
REPEATS = 2
"""Rounds timed per row, best kept (as for the floor): the first pays one-time costs such as
the Shamir power tables that a federation's later rounds reuse."""


def _sparse_k(n: int) -> int:
    """k = 13 as in Bell et al.'s N = 50 example, kept below N - 1 for small N."""
    return min(SPARSE_K, n // 2 + 1)


def keystream_streams(transcript: MaskingTranscript) -> int:
    """Number of length-D keystreams the round had to generate, from its transcript."""
    index = {name: i for i, name in enumerate(transcript.clients)}
    shared = {index[c] for c in transcript.shared}
    survivors = {index[c] for c in transcript.survivors}
    graph = transcript.params().graph
    clients = sum(1 + len(shared.intersection(graph[u])) for u in survivors)
    server = len(survivors) + sum(len(survivors.intersection(graph[v])) for v in shared - survivors)
    return clients + server


def keystream_floor(streams: int, length: int) -> float:
    """CPU seconds to generate ``streams`` AES-128-CTR keystreams of ``length`` words."""
    zeros = memoryview(bytes(4 * DEFAULT_CHUNK_WORDS))
    buffer = bytearray(4 * DEFAULT_CHUNK_WORDS + 15)
    start = time.process_time()
    for _ in range(streams):
        cipher = Cipher(algorithms.AES(new_seed()), modes.CTR(bytes(16))).encryptor()
        for offset in range(0, length, DEFAULT_CHUNK_WORDS):
            cipher.update_into(zeros[: 4 * min(DEFAULT_CHUNK_WORDS, length - offset)], buffer)
    return time.process_time() - start


SEED = b"bench-round-seed" * 2
SCALE_SIZES = (100, 300, 1_000, 3_000)
SCALE_K = 20
SCALE_D = 100_000


def public_key_operations(transcript: MaskingTranscript) -> dict[str, int]:
    """Public-key operations a round requires of all its parties, from its transcript.

    Every client generates two X25519 keys and signs its advertisement and its seed
    commitment; a sharer verifies its live neighbours' advertisements and agrees a cipher
    key with each; a survivor agrees a mask seed with each sharing neighbour, signs U3 and
    verifies t neighbours' signatures over it; the server verifies every advertisement,
    commitment and acknowledgement and agrees the dangling seeds of dropped sharers.
    """
    index = {name: i for i, name in enumerate(transcript.clients)}
    advertised = {index[c] for c in transcript.advertisements}
    shared = {index[c] for c in transcript.shared}
    survivors = {index[c] for c in transcript.survivors}
    params = transcript.params()
    n, t, graph = len(params.clients), params.threshold, params.graph
    client_adverts = sum(len(advertised.intersection(graph[u])) for u in shared)
    consistency = sum(min(t, len(survivors.intersection(graph[u]))) for u in survivors)
    dangling = sum(len(survivors.intersection(graph[v])) for v in shared - survivors)
    return {
        "ed25519_verify": client_adverts + consistency + len(advertised) + len(shared) + len(survivors),
        "ed25519_sign": len(advertised) + len(shared) + len(survivors),
        "x25519_agree": client_adverts + sum(len(shared.intersection(graph[u])) for u in survivors) + dangling,
        "x25519_keygen": 2 * n + len(shared - survivors),  # + the server's check of each revealed key
    }


def _unit_costs() -> dict[str, float]:
    """CPU seconds of one of each public-key operation, best of three batches of 200."""
    from bfl_private.protocols import keyagreement as ka
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    identity = Ed25519PrivateKey.generate()
    public = ka.public_bytes(identity)
    message = bytes(145)
    signature = ka.sign(identity, message)
    mine, peer = X25519PrivateKey.generate(), ka.public_bytes(X25519PrivateKey.generate())
    ops = {
        "ed25519_verify": lambda: ka.verify(public, signature, message, what="bench"),
        "ed25519_sign": lambda: ka.sign(identity, message),
        "x25519_agree": lambda: ka.agree(mine, peer, what="bench"),
        "x25519_keygen": lambda: ka.public_bytes(X25519PrivateKey.generate()),
    }
    costs = {}
    for name, op in ops.items():
        best = float("inf")
        for _ in range(3):
            start = time.process_time()
            for _ in range(200):
                op()
            best = min(best, (time.process_time() - start) / 200)
        costs[name] = best
    return costs


def measure_scale(n: int, *, repeats: int = REPEATS) -> dict:
    """One SecAgg+ round at N = n, D = 1e5, k = 20, 10% mask-stage dropouts, against both floors."""
    row = measure(n, SCALE_D, SCALE_K, 0.1, repeats=repeats, feasible=True)
    if "aborted" in row:
        return row
    ops = row.pop("_operations")
    units = _unit_costs()
    public_key = sum(count * units[name] for name, count in ops.items())
    return {
        "suite": "masking",
        "scale": n,
        "d": SCALE_D,
        "graph": f"sparse k={SCALE_K}",
        "dropout": 0.1,
        "cpu_s": row["cpu_s"],
        "baseline": "AES-128-CTR keystream floor (same process)",
        "floor_s": row["floor_s"],
        "public_key_floor_s": round(public_key, 4),
        "overhead_s": round(row["cpu_s"] - row["floor_s"] - public_key, 4),
        "keystream_gb": row["keystream_gb"],
        **{f"count_{name}": count for name, count in ops.items()},
        **{f"unit_us_{name}": round(cost * 1e6, 2) for name, cost in units.items()},
        "ratio": row["ratio"],
        "ratio_to_both_floors": round(row["cpu_s"] / (row["floor_s"] + public_key), 2),
    }


def measure(
    n: int, length: int, neighbours: int | None, dropout: float, *, repeats: int = REPEATS, feasible: bool = False
) -> dict:
    rng = np.random.default_rng(n * 1_000_003 + length)
    vectors = [rng.integers(0, 1 << 32, length, dtype=np.uint32) for _ in range(n)]
    dropped = rng.choice(n, size=round(dropout * n), replace=False)
    if feasible and neighbours is not None:
        # Redraw until no neighbourhood loses more than k - t: at N = 3,000 an iid 10% draw
        # almost surely leaves some client with fewer than t = 14 of its 20 holders, and the
        # round then (rightly) aborts; the scale rows measure rounds that finish.
        graph_ = neighbour_graph(n, neighbours, SEED)
        slack = neighbours - default_threshold(neighbours)
        while max(len(set(dropped).intersection(graph_[u])) for u in range(n)) > slack:
            dropped = rng.choice(n, size=round(dropout * n), replace=False)
    drop = {int(i): "mask" for i in dropped}
    graph = "complete" if neighbours is None else f"sparse k={neighbours}"
    row = {"suite": "masking", "n": n, "d": length, "graph": graph, "dropout": dropout}
    cpu = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        try:
            result = secure_sum(vectors, neighbours=neighbours, drop=drop, seed=SEED)
        except TooManyDropouts as abort:
            return {**row, "aborted": str(abort)}
        cpu = min(cpu, time.process_time() - start)
    expected = np.zeros(length, dtype=np.uint64)
    for i in result.included:
        expected += vectors[i]
    if not np.array_equal(result.total, (expected % (1 << 32)).astype(np.uint32)):
        raise AssertionError(f"benchmark round {row} produced a wrong total")
    transcript = MaskingTranscript.from_json(result.transcript, where=f"benchmark round {row}")
    streams = keystream_streams(transcript)
    floor = min(keystream_floor(streams, length) for _ in range(REPEATS))
    extra = {"_operations": public_key_operations(transcript)} if length == SCALE_D and neighbours == SCALE_K else {}
    return {
        **extra,
        **row,
        "cpu_s": round(cpu, 4),
        "baseline": "AES-128-CTR keystream floor (same process)",
        "floor_s": round(floor, 4),
        "keystream_gb": round(streams * 4 * length / 1e9, 3),
        "ratio": round(cpu / floor, 2),
    }


def run(*, quick: bool) -> list[dict]:
    sizes = (10, 50) if quick else (10, 50, 100)
    lengths = (10_000, 100_000) if quick else (10_000, 100_000, 1_000_000)
    graphs = ("sparse",) if quick else ("complete", "sparse")
    rows = []
    for n in sizes:
        for length in lengths:
            for graph in graphs:
                for dropout in (0.0, 0.1):
                    k = None if graph == "complete" else _sparse_k(n)
                    rows.append(measure(n, length, k, dropout))
    for n in SCALE_SIZES[:2] if quick else SCALE_SIZES:
        rows.append(measure_scale(n))
    return rows


def _table(rows: list[dict]) -> str:
    lines = [
        "| N | D | graph | dropout | CPU s (all parties) | AES-CTR floor s | keystream GB | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "scale" in r:
            continue
        if "aborted" in r:
            lines.append(
                f"| {r['n']} | {r['d']:.0e} | {r['graph']} | {r['dropout']:.0%} | aborted: {r['aborted']} | | | |"
            )
        else:
            lines.append(
                f"| {r['n']} | {r['d']:.0e} | {r['graph']} | {r['dropout']:.0%} | {r['cpu_s']:.3f} | "
                f"{r['floor_s']:.3f} | {r['keystream_gb']:.3f} | {r['ratio']:.2f}x |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    from bench.report import scale_rows_table

    if "--scale" in sys.argv[1:]:  # only the scale rows: python -m bench.bench_masking --scale [N ...]
        sizes = [int(a) for a in sys.argv[1:] if a.isdigit()] or list(SCALE_SIZES)
        print(scale_rows_table([measure_scale(n) for n in sizes]))
    else:
        rows = run(quick="--quick" in sys.argv[1:])
        print(_table(rows))
        print()
        print(scale_rows_table(rows))
