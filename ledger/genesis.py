"""The ``genesis`` payload as a typed record: the federation's public registry.

Genesis is read by the ledger itself (the contracts register its members, the verifier
takes the validators and quorum from it, beacons are checked against it) and by the
application, so its record lives here, in the ledger layer, which the application may
import and which imports nothing of the application. ``settings`` stays the JSON object
it is on the ledger: the ledger only publishes it, and the application reads it with
``FederationSettings.from_json``.

Structure is checked by the ledger's one schema of the payload
(:data:`~bfl_private.ledger.entries.PAYLOAD_SCHEMAS`: exact fields at every level, ids,
integers that are not booleans, CIDs), so the record and the entries that carry it can
never disagree on what a genesis is; the record adds that an id names one participant.
:meth:`GenesisRecord.to_json` gives back exactly the JSON it was parsed from, so a
genesis re-encodes to the same canonical bytes (and fingerprint).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .entries import GENESIS, Entry, validate_payload
from .errors import MalformedRecord
from .identity import VerifyingKey


@dataclass(frozen=True)
class RegisteredParty:
    """A coordinator or validator at genesis: its id and C2SP signed-note verifier key."""

    id: str
    vkey: str

    def key(self) -> VerifyingKey:
        """The verifying key (MalformedRecord if ``vkey`` does not parse)."""
        return VerifyingKey.from_vkey(self.vkey)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "vkey": self.vkey}


@dataclass(frozen=True)
class RegisteredClient(RegisteredParty):
    """A client at genesis: its key, lifetime privacy budget and public record count."""

    epsilon_budget: float
    """Lifetime ε; kept as recorded (an integer stays one, so the JSON is unchanged)."""
    delta: float
    data_weight: int
    """Records behind the client's updates, the FedAvg weight its submissions carry."""

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "epsilon_budget": self.epsilon_budget, "delta": self.delta,
                "data_weight": self.data_weight}


@dataclass(frozen=True)
class Rewards:
    """The reward contract's integer token amounts (see contracts.py)."""

    reward_per_round: int
    penalty_invalid: int
    penalty_dropout: int
    validator_reward: int

    def to_json(self) -> dict[str, int]:
        return {"reward_per_round": self.reward_per_round, "penalty_invalid": self.penalty_invalid,
                "penalty_dropout": self.penalty_dropout, "validator_reward": self.validator_reward}


@dataclass(frozen=True)
class Normalisation:
    """Feature standardisation ``(x - mean) / scale`` every party applies, with constants
    from a public sample (``source``, of ``records`` rows), never from client records."""

    source: str
    records: int
    mean: tuple[float, ...]
    scale: tuple[float, ...]

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "records": self.records, "mean": list(self.mean),
                "scale": list(self.scale)}


@dataclass(frozen=True)
class GenesisRecord:
    """``genesis``: the federation id, its opaque settings, the certificate quorum, the
    reward amounts, every member with its key, the initial model and the normalisation."""

    federation_id: str
    settings: Mapping[str, Any]
    """The application's federation settings as recorded (a JSON object)."""
    quorum: int
    rewards: Rewards
    coordinator: RegisteredParty
    clients: tuple[RegisteredClient, ...]
    validators: tuple[RegisteredParty, ...]
    """In genesis order, which beacons and the on-chain registry follow."""
    initial_model_cid: str | None
    normalisation: Normalisation

    @property
    def members(self) -> tuple[RegisteredParty, ...]:
        """Every registered participant: the coordinator, the clients, the validators."""
        return (self.coordinator, *self.clients, *self.validators)

    def to_json(self) -> dict[str, Any]:
        return {"federation_id": self.federation_id, "settings": dict(self.settings), "quorum": self.quorum,
                "rewards": self.rewards.to_json(), "coordinator": self.coordinator.to_json(),
                "clients": [c.to_json() for c in self.clients],
                "validators": [v.to_json() for v in self.validators],
                "initial_model_cid": self.initial_model_cid, "normalisation": self.normalisation.to_json()}

    @classmethod
    def from_json(cls, payload: Any, *, where: str) -> GenesisRecord:
        """Parse a genesis payload; MalformedRecord naming ``where`` and the field if it is
        not one, or if an id names two participants (entries are told apart by author)."""
        validate_payload(GENESIS, payload, where=where)
        ids = [payload["coordinator"]["id"], *(c["id"] for c in payload["clients"]),
               *(v["id"] for v in payload["validators"])]
        repeated = sorted(name for name, count in Counter(ids).items() if count > 1)
        if repeated:
            raise MalformedRecord(f"{where}: participant ids must be unique across roles, {repeated} repeat")
        normalisation = payload["normalisation"]
        return cls(payload["federation_id"], payload["settings"], payload["quorum"],
                   Rewards(**payload["rewards"]), RegisteredParty(**payload["coordinator"]),
                   tuple(RegisteredClient(**c) for c in payload["clients"]),
                   tuple(RegisteredParty(**v) for v in payload["validators"]), payload["initial_model_cid"],
                   Normalisation(normalisation["source"], normalisation["records"], tuple(normalisation["mean"]),
                                 tuple(normalisation["scale"])))

    @classmethod
    def of(cls, entry: Entry, *, where: str = "genesis") -> GenesisRecord:
        """The record of a genesis entry; MalformedRecord for an entry of another type."""
        if entry.type != GENESIS:
            raise MalformedRecord(f"{where}: a {entry.type} entry, not the genesis entry")
        return cls.from_json(entry.payload, where=where)
