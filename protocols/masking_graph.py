"""Public parameters of a masking round and its neighbour graph (SecAgg / SecAgg+).

The graph is the Harary graph H(k, N) (every client joined to its k/2 nearest ring
neighbours on each side, plus the opposite client when k is odd) laid on a ring ordered
by a permutation drawn from the public round seed with SHA-256, as in Bell et al., CCS
2020 (SecAgg+): random and sparse, yet recomputable by anyone from the seed. The threshold
rule is explained in :mod:`bfl_private.protocols.masking`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from .errors import ConfigurationError


def default_threshold(neighbours: int) -> int:
    """t = floor(2k/3) + 1 (see the module docstring for the rule)."""
    return 2 * neighbours // 3 + 1


def _permutation(n: int, seed: bytes) -> list[int]:
    """Fisher–Yates driven by SHA-256 in counter mode: stable across library versions."""
    order = list(range(n))
    counter = 0
    pool = b""

    def draw() -> int:
        nonlocal counter, pool
        if len(pool) < 8:
            pool += hashlib.sha256(
                b"bfl-private/secagg/v1/graph" + seed + counter.to_bytes(8, "big")
            ).digest()
            counter += 1
        value, pool = int.from_bytes(pool[:8], "big"), pool[8:]
        return value

    for i in range(n - 1, 0, -1):
        bound = (1 << 64) - (1 << 64) % (i + 1)  # rejection sampling: no modulo bias
        value = draw()
        while value >= bound:
            value = draw()
        j = value % (i + 1)
        order[i], order[j] = order[j], order[i]
    return order


def neighbour_graph(n: int, k: int, seed: bytes) -> tuple[tuple[int, ...], ...]:
    """Sorted neighbour lists of the Harary graph H(k, n) on a seed-permuted ring."""
    if k >= n - 1:
        return tuple(tuple(v for v in range(n) if v != u) for u in range(n))
    ring = _permutation(n, seed)
    adjacent: list[set[int]] = [set() for _ in range(n)]

    def join(p: int, q: int) -> None:
        a, b = ring[p % n], ring[q % n]
        adjacent[a].add(b)
        adjacent[b].add(a)

    for p in range(n):
        for d in range(1, k // 2 + 1):
            join(p, p + d)
    if k % 2:
        half = (n + 1) // 2
        for p in range(half):
            join(p, p + half)
    return tuple(tuple(sorted(s)) for s in adjacent)


@dataclass(frozen=True)
class MaskingParams:
    """Public parameters of one masking round, fixed before the first message."""

    round_id: int
    round_seed: bytes
    clients: tuple[str, ...]
    """Client names; a client's index in this tuple is its party number."""
    length: int
    neighbours: int
    threshold: int
    complete: bool

    @classmethod
    def create(
        cls,
        *,
        round_id: int,
        round_seed: bytes,
        clients: Sequence[str],
        length: int,
        neighbours: int | None = None,
        threshold: int | None = None,
    ) -> MaskingParams:
        """Validate and fix the round's parameters (see the module docstring for k and t)."""
        n = len(clients)
        if len(set(clients)) != n:
            raise ConfigurationError("client names must be distinct")
        if n < 3:
            raise ConfigurationError(
                f"masking needs at least 3 clients (threshold >= 2 of >= 2 neighbours), got {n}"
            )
        if not 0 <= round_id < 1 << 64:
            raise ConfigurationError(f"round_id must fit in 64 bits, got {round_id}")
        if not isinstance(round_seed, (bytes, bytearray)) or len(round_seed) < 16:
            raise ConfigurationError("round_seed must be at least 16 bytes")
        if length < 1:
            raise ConfigurationError(f"vector length must be >= 1, got {length}")
        if neighbours is not None and neighbours < 2:
            raise ConfigurationError(
                f"neighbours must be >= 2 (or None for the complete graph), got {neighbours}"
            )
        complete = neighbours is None or neighbours >= n - 1
        k = n - 1 if complete else int(neighbours)  # type: ignore[arg-type]
        t = default_threshold(k) if threshold is None else int(threshold)
        if not (max(2, k // 2 + 1) <= t <= k):
            raise ConfigurationError(
                f"threshold {t} must satisfy k/2 < t <= k and t >= 2 for k = {k} neighbours: "
                f"choose t in {max(2, k // 2 + 1)}..{k}"
            )
        return cls(round_id, bytes(round_seed), tuple(clients), int(length), k, t, complete)

    @cached_property
    def graph(self) -> tuple[tuple[int, ...], ...]:
        return neighbour_graph(len(self.clients), self.neighbours, self.round_seed)

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.round_id,
            "round_seed": self.round_seed.hex(),
            "clients": list(self.clients),
            "length": self.length,
            "neighbours": None if self.complete else self.neighbours,
            "threshold": self.threshold,
        }
