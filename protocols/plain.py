"""Plain (unprotected) summation: the baseline every other protocol is measured against.

The aggregator sees every client's update in the clear. It still refuses, at
submission, an update that is out of the agreed range (|x| > bound) or not finite, so
a garbage update from a faulty or malicious client never reaches the sum.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from safetensors.numpy import save as save_safetensors

from .base import (
    AggregationProtocol,
    AggregationResult,
    ForgedInput,
    Stage,
    check_forged,
    load_submission_tensors,
    one_shot_submitters,
)
from .errors import ConfigurationError, MalformedInput, TooManyDropouts
from .records import exact_fields, integer, number, texts

_TENSOR = "update"


def encode_submission(vector: np.ndarray) -> bytes:
    return save_safetensors({_TENSOR: np.ascontiguousarray(vector, dtype=np.float32)})


def forged_submission(forgery: ForgedInput) -> bytes:
    """The blob of a client that skips our encoder: its bytes, or any values unchecked."""
    if forgery.message is not None:
        return forgery.message
    return encode_submission(np.asarray(forgery.values, dtype=np.float32))


def decode_submission(blob: bytes, *, client: str, length: int | None = None) -> np.ndarray:
    """Parse a plain submission blob; raises MalformedInput naming the client."""
    tensors = load_submission_tensors(blob, client=client)
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


@dataclass(frozen=True)
class PlainTranscript:
    """A plain round's transcript: who was summed, under which range bound."""

    round: int
    included: tuple[str, ...]
    bound: float | None = None
    """The range every included value was checked against. Optional as the recomputation has
    always read it: a transcript without one is re-summed with no range check."""

    @property
    def summed(self) -> tuple[str, ...]:
        return self.included

    def to_json(self) -> dict[str, Any]:
        bound = {} if self.bound is None else {"bound": self.bound}
        return {"protocol": PlainProtocol.name, "round": self.round, **bound, "included": list(self.included)}

    @classmethod
    def from_json(cls, data: Any, *, where: str) -> PlainTranscript:
        fields = exact_fields(data, {"protocol", "round", "included"}, optional={"bound"}, what="plain transcript",
                              where=where)
        if fields["protocol"] != PlainProtocol.name:
            raise MalformedInput(f"{where}: not a plain transcript (protocol {fields['protocol']!r:.40})")
        return cls(round=integer(fields["round"], what="round", where=where),
                   included=texts(fields["included"], what="included", where=where),
                   bound=number(fields["bound"], what="bound", where=where) if "bound" in fields else None)


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
        forged: Mapping[str, ForgedInput] | None = None,
    ) -> AggregationResult:
        # Garbage (NaN, out of range, undecodable) is a client fault to record, not a reason to abort.
        lengths = {np.asarray(v).shape for v in updates.values()}
        if len(lengths) != 1:
            raise MalformedInput(f"updates have differing shapes {sorted(lengths)}")
        (shape,) = lengths
        forged = check_forged(forged, updates)
        submitters, dropped = one_shot_submitters(updates, drop)
        sent = {c: forged_submission(forged[c]) if c in forged else encode_submission(updates[c]) for c in submitters}
        return self.aggregate_submissions(sent, round_id=round_id, length=shape[0],
                                          dropped={c: (drop or {})[c] for c in dropped})

    def aggregate_submissions(
        self, blobs: Mapping[str, bytes], *, round_id: int, length: int, dropped: Mapping[str, Stage]
    ) -> AggregationResult:
        """The aggregator's half of :meth:`aggregate`, for submissions made wherever the
        clients are (in this process, or on Flower nodes): each blob is checked on receipt
        (one that does not decode, or is out of range, is rejected with the reason) and the
        valid ones are summed. ``dropped`` names the clients that never submitted."""
        received: dict[str, np.ndarray] = {}
        rejected: dict[str, str] = {}
        for client, blob in sorted(blobs.items()):
            try:
                vector = decode_submission(blob, client=client, length=length)
            except MalformedInput as exc:
                rejected[client] = str(exc)
                continue
            reason = _range_violation(vector, self.bound)
            if reason is not None:
                rejected[client] = reason
            else:
                received[client] = vector
        refused = {c: blobs[c] for c in rejected}
        if not received:
            exc = TooManyDropouts(f"round {round_id}: no valid submission among {len(blobs) + len(dropped)} clients",
                                  stage="mask")
            exc.received = refused
            raise exc
        return AggregationResult(
            protocol=self.name,
            total=sum_in_order(received),
            included=tuple(sorted(received)),
            dropped=tuple(sorted(dropped)),
            rejected=rejected,
            submissions={c: blobs[c] for c in received},
            rejected_submissions=refused,
            transcript=PlainTranscript(round_id, tuple(sorted(received)), self.bound).to_json(),
        )



TRANSCRIPT = PlainTranscript


def decoding_tolerance(transcript: Mapping[str, Any]) -> float:
    """Values travel as float32: a weight w <= 1 is off by at most 2^-24 per included client."""
    return len(PlainTranscript.from_json(transcript, where="plain transcript").included) * 2.0**-24


def recompute_from_submissions(transcript: Mapping[str, Any], submissions: Mapping[str, bytes]) -> np.ndarray:
    """Re-sum the committed plain submissions of the transcript's included clients."""
    record = PlainTranscript.from_json(transcript, where="plain transcript")
    included = record.included
    if not included:
        raise MalformedInput("plain transcript lacks a non-empty 'included' list")
    missing = sorted(set(included) - set(submissions))
    if missing:
        raise MalformedInput(f"plain transcript names clients without a submission: {missing}")
    bound = np.inf if record.bound is None else record.bound
    vectors = {}
    length = None
    undecodable: MalformedInput | None = None
    for client in included:
        try:
            vector = decode_submission(submissions[client], client=client, length=length)
        except MalformedInput as exc:
            undecodable = exc  # raised after the range check of the clients before it
            break
        length = vector.shape[0]
        vectors[client] = vector
    # The range rule for all decoded vectors at once; the first offender (in the
    # transcript's order) is then named by the per-vector check, as one at a time would.
    offenders = _out_of_range_rows(list(vectors.values()), bound)
    if offenders.size:
        client = list(vectors)[int(offenders[0])]
        reason = _range_violation(vectors[client], bound)
        raise MalformedInput(f"submission of {client!r} was accepted but has {reason}")
    if undecodable is not None:
        raise undecodable
    return sum_in_order(vectors)


def _out_of_range_rows(vectors: list[np.ndarray], bound: float) -> np.ndarray:
    """Positions of the vectors :func:`_range_violation` refuses (non-finite values or a
    magnitude above ``bound``), checked for all of them in one numpy pass."""
    if not vectors:
        return np.empty(0, dtype=np.intp)
    stacked = np.stack(vectors)
    finite = np.isfinite(stacked).all(axis=1)
    worst = np.max(np.abs(stacked), axis=1, initial=0.0).astype(np.float64)
    return np.flatnonzero(~finite | (worst > bound))
