"""The payloads of a round's ledger entries as typed records.

One definition of each payload — the opening, a submission, the close, an abort, an
attestation — built by both round engines (in-process and over Flower) and by validators
and hospitals, and parsed back with named errors. The ledger checks the same payloads'
structure on its own (:func:`bfl_private.ledger.entries.validate_payload`); these records
are the application's view of them.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .ledger.errors import MalformedRecord


def exact_fields(payload: Any, names: set[str], *, what: str, where: str) -> dict[str, Any]:
    """``payload`` as a dict when it is an object with exactly the fields ``names``;
    MalformedRecord naming ``where`` and ``what`` otherwise."""
    if not isinstance(payload, Mapping) or set(payload) != names:
        found = sorted(payload) if isinstance(payload, Mapping) else type(payload).__name__
        raise MalformedRecord(f"{where}: a {what} has exactly the fields {sorted(names)}, got {found}")
    return dict(payload)


def _fields(cls: type, payload: Any, where: str) -> dict[str, Any]:
    return exact_fields(payload, {f.name for f in fields(cls)}, what=cls.__name__, where=where)


def _names(value: Any, what: str, where: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise MalformedRecord(f"{where}: {what} must be a list of participant ids")
    return tuple(value)


def _text(value: Any, what: str, where: str) -> str:
    if not isinstance(value, str):
        raise MalformedRecord(f"{where}: {what} must be a string, got {type(value).__name__}")
    return value


def _reasons(value: Any, what: str, where: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise MalformedRecord(f"{where}: {what} must map participant ids to reasons")
    return dict(value)


def _epsilons(value: Any, where: str) -> dict[str, float]:
    if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in value.items()):
        raise MalformedRecord(f"{where}: cumulative_epsilon must map client ids to numbers")
    return {k: float(v) for k, v in value.items()}


@dataclass(frozen=True)
class RoundOpening:
    """``round_open``: who takes part, how the sum is protected, from which model, at what privacy plan."""

    participants: tuple[str, ...]
    protocol: str
    protocol_params: Mapping[str, Any]
    base_model_cid: str
    privacy_plan: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"participants": list(self.participants), "protocol": self.protocol,
                "protocol_params": dict(self.protocol_params), "base_model_cid": self.base_model_cid,
                "privacy_plan": dict(self.privacy_plan)}

    @classmethod
    def from_json(cls, payload: Any, *, where: str) -> RoundOpening:
        data = _fields(cls, payload, where)
        for name in ("protocol_params", "privacy_plan"):
            if not isinstance(data[name], Mapping):
                raise MalformedRecord(f"{where}: {name} must be an object")
        return cls(_names(data["participants"], "participants", where), _text(data["protocol"], "protocol", where),
                   dict(data["protocol_params"]), _text(data["base_model_cid"], "base_model_cid", where),
                   dict(data["privacy_plan"]))


@dataclass(frozen=True)
class Submission:
    """``submission``, signed by the client itself: its protected update's blob, its public
    record count and its privacy record (:func:`~bfl_private.privacy.accounting.privacy_record_from_json`)."""

    client: str
    blob_cid: str
    data_weight: int
    privacy: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"client": self.client, "blob_cid": self.blob_cid, "data_weight": self.data_weight,
                "privacy": dict(self.privacy)}

    @classmethod
    def from_json(cls, payload: Any, *, where: str) -> Submission:
        data = _fields(cls, payload, where)
        weight = data["data_weight"]
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
            raise MalformedRecord(f"{where}: data_weight must be a positive integer")
        if not isinstance(data["privacy"], Mapping):
            raise MalformedRecord(f"{where}: privacy must be an object")
        return cls(_text(data["client"], "client", where), _text(data["blob_cid"], "blob_cid", where), weight,
                   dict(data["privacy"]))


@dataclass(frozen=True)
class RoundClosing:
    """``round_close``: the aggregate, the new model and the transcript (by CID), who was
    summed, who dropped out or was rejected (and why), and each submitter's cumulative ε."""

    aggregate_cid: str
    new_model_cid: str
    transcript_cid: str
    survivors: tuple[str, ...]
    dropouts: tuple[str, ...]
    rejected: Mapping[str, str]
    cumulative_epsilon: Mapping[str, float]

    def to_json(self) -> dict[str, Any]:
        return {"aggregate_cid": self.aggregate_cid, "new_model_cid": self.new_model_cid,
                "transcript_cid": self.transcript_cid, "survivors": list(self.survivors),
                "dropouts": list(self.dropouts), "rejected": dict(self.rejected),
                "cumulative_epsilon": dict(self.cumulative_epsilon)}

    @classmethod
    def from_json(cls, payload: Any, *, where: str) -> RoundClosing:
        data = _fields(cls, payload, where)
        return cls(*(_text(data[n], n, where) for n in ("aggregate_cid", "new_model_cid", "transcript_cid")),
                   _names(data["survivors"], "survivors", where), _names(data["dropouts"], "dropouts", where),
                   _reasons(data["rejected"], "rejected", where), _epsilons(data["cumulative_epsilon"], where))


@dataclass(frozen=True)
class RoundAbortRecord:
    """``abort``: the stage and reason, who was still there, and the cumulative ε of each
    client whose protected update had already left it (it is charged all the same)."""

    stage: str
    reason: str
    survivors: tuple[str, ...]
    cumulative_epsilon: Mapping[str, float]

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "reason": self.reason, "survivors": list(self.survivors),
                "cumulative_epsilon": dict(self.cumulative_epsilon)}

    @classmethod
    def from_json(cls, payload: Any, *, where: str) -> RoundAbortRecord:
        data = _fields(cls, payload, where)
        return cls(_text(data["stage"], "stage", where), _text(data["reason"], "reason", where),
                   _names(data["survivors"], "survivors", where), _epsilons(data["cumulative_epsilon"], where))


@dataclass(frozen=True)
class Attestation:
    """``attestation``: a validator's quality figure for the round's new model (accuracy on
    its own hold-out data, parts per million) and its verdict."""

    validator: str
    model_cid: str
    quality_ppm: int
    verdict: str

    def to_json(self) -> dict[str, Any]:
        return {"validator": self.validator, "model_cid": self.model_cid, "quality_ppm": self.quality_ppm,
                "verdict": self.verdict}

    @classmethod
    def from_json(cls, payload: Any, *, where: str) -> Attestation:
        data = _fields(cls, payload, where)
        quality, verdict = data["quality_ppm"], data["verdict"]
        if isinstance(quality, bool) or not isinstance(quality, int) or not 0 <= quality <= 1_000_000:
            raise MalformedRecord(f"{where}: quality_ppm must be an integer in 0..1000000")
        if verdict not in ("accept", "reject"):
            raise MalformedRecord(f"{where}: verdict must be 'accept' or 'reject', got {verdict!r}")
        return cls(_text(data["validator"], "validator", where), _text(data["model_cid"], "model_cid", where),
                   quality, verdict)


def with_refusals(reason: str, declined: Mapping[str, str]) -> str:
    """An abort's reason, followed by the participants that refused the round's opening and why."""
    if not declined:
        return reason
    return reason + "; participants refused the round: " + "; ".join(f"{c}: {r}" for c, r in sorted(declined.items()))
