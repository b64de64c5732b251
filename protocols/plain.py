"""Plain (unprotected) summation: the baseline every other protocol is measured against.

The aggregator sees every client's update in the clear. It still refuses, at
submission, an update that is out of the agreed range (|x| > bound) or not finite, so
a garbage update from a faulty or malicious client never reaches the sum.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from .base import AggregationProtocol, AggregationResult, Stage
from .errors import ConfigurationError, MalformedInput, TooManyDropouts

_TENSOR = "update"


def encode_submission(vector: np.ndarray) -> bytes:
    return save_safetensors({_TENSOR: np.ascontiguousarray(vector, dtype=np.float32)})


def decode_submission(blob: bytes, *, client: str, length: int | None = None) -> np.ndarray:
    """Parse a plain submission blob; raises MalformedInput naming the client."""
    try:
        tensors = load_safetensors(blob)
    except (SafetensorError, ValueError) as exc:
        raise MalformedInput(f"submission of {client!r} is not a safetensors blob: {exc}") from exc
    vector = tensors.get(_TENSOR)
    if vector is None or vector.dtype != np.float32 or vector.ndim != 1:
        raise MalformedInput(f"submission of {client!r} must hold one 1-D float32 tensor {_TENSOR!r}")
    if length is not None and vector.shape[0] != length:
        raise MalformedInput(f"submission of {client!r} has length {vector.shape[0]}, expected {length}")
    return vector


def _range_violation(vector: np.ndarray, bound: float) -> str | None:
    if not np.all(np.isfinite(vector)):
        return "non-finite values"
    worst = float(np.max(np.abs(vector), initial=0.0))
    if worst > bound:
        return f"value {worst:.6g} outside [-{bound}, {bound}]"
    return None


def sum_in_order(vectors: Mapping[str, np.ndarray]) -> np.ndarray:
    """Float64 sum in sorted client order, so anyone recomputing gets the same bits."""
    total = None
    for client in sorted(vectors):
        v = vectors[client].astype(np.float64)
        total = v if total is None else total + v
    assert total is not None
    return total


class PlainProtocol(AggregationProtocol):
    """Summation in the clear, with range checks at submission."""

    name: ClassVar[str] = "plain"

    def __init__(self, *, bound: float) -> None:
        if not (np.isfinite(bound) and bound > 0):
            raise ConfigurationError(f"bound must be a positive finite number, got {bound!r}")
        self.bound = float(bound)

    def aggregate(
        self,
        updates: Mapping[str, np.ndarray],
        *,
        round_id: int,
        round_seed: bytes,
        drop: Mapping[str, Stage] | None = None,
        rng: np.random.Generator | None = None,
    ) -> AggregationResult:
        # Garbage (NaN, out of range) is a client fault to record, not a reason to abort.
        lengths = {np.asarray(v).shape for v in updates.values()}
        if len(lengths) != 1:
            raise MalformedInput(f"updates have differing shapes {sorted(lengths)}")
        drop = drop or {}
        dropped = tuple(sorted(c for c in updates if c in drop))
        received: dict[str, np.ndarray] = {}
        rejected: dict[str, str] = {}
        for client in sorted(updates):
            if client in drop:
                continue
            vector = np.asarray(updates[client], dtype=np.float32)
            reason = _range_violation(vector, self.bound)
            if reason is not None:
                rejected[client] = reason
            else:
                received[client] = vector
        refused = {c: encode_submission(np.asarray(updates[c], dtype=np.float32)) for c in rejected}
        if not received:
            exc = TooManyDropouts(f"round {round_id}: no valid submission among {len(updates)} clients")
            exc.received = refused
            raise exc
        return AggregationResult(
            protocol=self.name,
            total=sum_in_order(received),
            included=tuple(sorted(received)),
            dropped=dropped,
            rejected=rejected,
            submissions={c: encode_submission(v) for c, v in received.items()},
            rejected_submissions=refused,
            transcript={"protocol": self.name, "round": round_id, "bound": self.bound, "included": sorted(received)},
        )


def recompute_from_submissions(transcript: Mapping[str, Any], submissions: Mapping[str, bytes]) -> np.ndarray:
    """Re-sum the committed plain submissions of the transcript's included clients."""
    included = transcript.get("included")
    if not isinstance(included, list) or not included:
        raise MalformedInput("plain transcript lacks a non-empty 'included' list")
    missing = sorted(set(included) - set(submissions))
    if missing:
        raise MalformedInput(f"plain transcript names clients without a submission: {missing}")
    bound = float(transcript.get("bound", np.inf))
    vectors = {}
    length = None
    for client in included:
        vector = decode_submission(submissions[client], client=client, length=length)
        length = vector.shape[0]
        reason = _range_violation(vector, bound)
        if reason is not None:
            raise MalformedInput(f"submission of {client!r} was accepted but has {reason}")
        vectors[client] = vector
    return sum_in_order(vectors)
