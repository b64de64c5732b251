"""Secure aggregation by masking: CPU seconds of all parties against the AES-CTR floor.

Every party runs in this process, so ``time.process_time`` over one ``secure_sum`` call is
the total CPU of N clients and the server (message encoding, Ed25519, X25519, Shamir,
AES-GCM, mask expansion, unmasking). The floor is the AES-128-CTR keystream that the
protocol cannot avoid generating — each surviving client's self mask and pairwise masks,
and the server's regeneration of survivors' self masks and of dropped clients' pairwise
masks — timed in the same process with the same ``update_into`` into a reused buffer,
with nothing else done. Each is the best of two runs. Dropouts happen at the ``mask`` stage (after sharing keys), the
costliest case for the server.

    python -m bench.bench_masking          # full grid
    python -m bench.bench_masking --quick  # CI subset
"""

from __future__ import annotations

import sys
import time

import numpy as np
from bfl_private.protocols.errors import TooManyDropouts
from bfl_private.protocols.masking import secure_sum
from bfl_private.protocols.masking_graph import neighbour_graph
from bfl_private.protocols.prg import DEFAULT_CHUNK_WORDS, new_seed
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SPARSE_K = 13
REPEATS = 2
"""Rounds timed per row, best kept (as for the floor): the first pays one-time costs such as
the Shamir power tables that a federation's later rounds reuse."""


def _sparse_k(n: int) -> int:
    """k = 13 as in Bell et al.'s N = 50 example, kept below N - 1 for small N."""
    return min(SPARSE_K, n // 2 + 1)


def keystream_streams(transcript: dict, n: int) -> int:
    """Number of length-D keystreams the round had to generate, from its transcript."""
    index = {name: i for i, name in enumerate(transcript["clients"])}
    shared = {index[c] for c in transcript["shared"]}
    survivors = {index[c] for c in transcript["survivors"]}
    k = transcript["neighbours"] if transcript["neighbours"] is not None else n - 1
    graph = neighbour_graph(n, k, bytes.fromhex(transcript["round_seed"]))
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


def measure(n: int, length: int, neighbours: int | None, dropout: float) -> dict:
    rng = np.random.default_rng(n * 1_000_003 + length)
    vectors = [rng.integers(0, 1 << 32, length, dtype=np.uint32) for _ in range(n)]
    dropped = rng.choice(n, size=round(dropout * n), replace=False)
    drop = {int(i): "mask" for i in dropped}
    graph = "complete" if neighbours is None else f"sparse k={neighbours}"
    row = {"suite": "masking", "n": n, "d": length, "graph": graph, "dropout": dropout}
    cpu = float("inf")
    for _ in range(REPEATS):
        start = time.process_time()
        try:
            result = secure_sum(vectors, neighbours=neighbours, drop=drop, seed=b"bench-round-seed" * 2)
        except TooManyDropouts as abort:
            return {**row, "aborted": str(abort)}
        cpu = min(cpu, time.process_time() - start)
    expected = np.zeros(length, dtype=np.uint64)
    for i in result.included:
        expected += vectors[i]
    if not np.array_equal(result.total, (expected % (1 << 32)).astype(np.uint32)):
        raise AssertionError(f"benchmark round {row} produced a wrong total")
    streams = keystream_streams(result.transcript, n)
    floor = min(keystream_floor(streams, length) for _ in range(REPEATS))
    return {
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
    return rows


def _table(rows: list[dict]) -> str:
    lines = [
        "| N | D | graph | dropout | CPU s (all parties) | AES-CTR floor s | keystream GB | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
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
    print(_table(run(quick="--quick" in sys.argv[1:])))
