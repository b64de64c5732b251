"""FedAvg arithmetic on flat vectors, in numpy only.

The aggregator uses it to build the next global model and the auditor uses the very
same functions to re-derive that model from the ledger, bit for bit, without torch.

Weights travel *inside* the protected vector: each client submits ``[w·clip(Δ), w]`` with
``w = records / max_records``, so the aggregate's last coordinate is the total weight of
exactly the clients that made it in, and the average stays right whatever dropped out.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def weighted_payload(delta: np.ndarray, *, records: int, max_records: int, bound: float) -> np.ndarray:
    """The vector a client protects: ``[w·clip(Δ, ±bound), w]``, float32."""
    if not 0 < records <= max_records:
        raise ValueError(f"{records} records is outside 1..{max_records}")
    weight = records / max_records
    clipped = np.clip(np.asarray(delta, dtype=np.float64), -bound, bound)
    return np.append(weight * clipped, weight).astype(np.float32)


def payload_weight(records: int, *, max_records: int) -> float:
    """The weight ``w`` a client with ``records`` registered records carries: the last
    coordinate of its :func:`weighted_payload`, rounded to float32 as it travels."""
    return float(np.float32(records / max_records))


def aggregate_violation(total: np.ndarray, *, weights: Sequence[float], bound: float, tolerance: float) -> str | None:
    """Why ``total`` cannot be a sum of the included clients' payloads, or None.

    Record counts are public, so the total weight must be the included clients' registered
    weights, and each update coordinate, a sum of ``w·clip(Δ, ±bound)``, lies within
    ``Σw·bound``; both up to ``tolerance``, the protocol's encoding error. A client that
    skips the encoder can still move the update anywhere in that box (a bounded bias),
    but no longer shrink the weight to blow the average up.
    """
    total = np.asarray(total, dtype=np.float64)
    expected = float(sum(weights))
    if total.ndim != 1 or total.shape[0] < 2 or not np.all(np.isfinite(total)):
        return f"aggregate of shape {total.shape} is not a finite update followed by its weight"
    if expected < 4 * tolerance:
        # The weight is the FedAvg denominator: within ±tolerance of a total this small it
        # could be shrunk toward zero, so the encoding cannot carry these weights safely.
        return (f"the included clients' registered weights {expected!r} are below 4x the encoding error "
                f"{tolerance:.3g}: the decoded weight could not be told from zero")
    if abs(float(total[-1]) - expected) > tolerance:
        return (f"aggregate weight {float(total[-1])!r} differs from the included clients' registered weights "
                f"{expected!r} by more than the encoding error {tolerance:.3g}")
    limit = expected * bound + tolerance
    worst = int(np.argmax(np.abs(total[:-1])))
    if abs(float(total[worst])) > limit:
        return (f"aggregate coordinate {worst} is {float(total[worst])!r}, past the ±{limit:.6g} that "
                f"{len(weights)} clipped updates can reach")
    return None


def fedavg_delta(total: np.ndarray) -> np.ndarray:
    """The weighted average update from a decoded aggregate ``[Σ w·Δ, Σ w]``."""
    total_weight = float(total[-1])
    if not total_weight > 0:
        raise ValueError(f"aggregate carries total weight {total_weight!r}; nothing to average")
    return (np.asarray(total[:-1], dtype=np.float64) / total_weight).astype(np.float32)


def next_global_model(previous: np.ndarray, total: np.ndarray, *, server_learning_rate: float) -> np.ndarray:
    """``previous + η · (Σ w·Δ / Σ w)``, float32: the one definition of a round's model."""
    previous = np.asarray(previous, dtype=np.float32)
    if previous.shape[0] + 1 != np.asarray(total).shape[0]:
        raise ValueError(f"aggregate of length {np.asarray(total).shape[0]} does not fit a model of {previous.shape[0]} parameters")
    return (previous + np.float32(server_learning_rate) * fedavg_delta(total)).astype(np.float32)
