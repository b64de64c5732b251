"""The ledger's contracts: one deterministic state machine replayed over every entry.

``Ledger.propose``, every validator, the verifier and any auditor apply exactly this code
to the same entries and must reach the same state, whose SHA-256 over its RFC 8785 bytes
is the block's state root. Only integers, strings and comparisons of recorded numbers are
used, so the replay is bit-for-bit reproducible (and portable to an EVM contract).

Rules (each refusal is a :class:`ContractViolation` naming the entry and the rule):

Registry (``genesis``, first and only entry of block 0): ids unique across roles; every
verifier key parses (C2SP signed note) and key ids are unique, so an entry's author key id
names exactly one participant; the genesis author is the coordinator;
``n - floor((n-1)/3) <= quorum <= n`` for n validators (2f+1 of 3f+1).

Rounds: ``round_open`` by the coordinator when no round is in progress, numbered
last + 1, participants registered clients, ``base_model_cid`` equal to the current model
(when there is one). ``round_beacon`` by the coordinator, once per round, right after the
opening: the round open with no submission yet (its signatures are checked by the
verifier and the validators, see beacon.py). ``submission`` by the client's own key, for the open round only (a
replay from an earlier round is refused), from a listed participant, once, with
``data_weight`` at most its registered weight. ``round_close`` / ``abort`` by the
coordinator for the open round only; survivors, dropouts and rejected partition the
participants, every survivor submitted and every other submitter is rejected. ``attestation`` by a registered validator,
once per round, for the closed round's ``new_model_cid``.

Privacy budgets (``round_close`` and ``abort``): each ``cumulative_epsilon`` value is for a
participant, never below that client's recorded spend and never above its lifetime
budget; every submitter has one (the spending rule: a client is charged once its protected
update has left it, whether the round then closes, rejects it or aborts).

Model chain and rewards, at the end of the block holding a closed round: the round is
accepted iff at least ``quorum`` validators attested ``accept``. Then the current model
becomes ``new_model_cid`` and its quality Q (ppm) is the median of the accepting quality
figures (the lower-middle mean, floored, for an even count). Rewards, integers only:

* accepted round: survivor i gets ``reward_per_round * w_i * Q // (W * 1_000_000)``, with
  w_i its submission's ``data_weight`` and W the survivors' total; a rejected round mints
  nothing for survivors and keeps the old model;
* each client in ``rejected`` loses ``penalty_invalid``, each in ``dropouts`` loses
  ``penalty_dropout`` (balances never go below 0);
* each validator that attested gets ``validator_reward``.

An aborted round mints and penalises nothing; it records the privacy spent.
"""
from __future__ import annotations

import bisect
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from .canonical import canonical_bytes, parse_canonical
from .entries import (
    ABORT,
    ATTESTATION,
    GENESIS,
    ROUND_BEACON,
    ROUND_CLOSE,
    ROUND_OPEN,
    SUBMISSION,
    Entry,
)
from .errors import ContractViolation, MalformedRecord
from .genesis import GenesisRecord
from .identity import VerifyingKey

STATE_VERSION = 1
PPM = 1_000_000


def min_quorum(validators: int) -> int:
    """Byzantine quorum ``n - f`` with ``f = floor((n-1)/3)``: 2f+1 of 3f+1 validators."""
    return validators - (validators - 1) // 3


def genesis_keys(genesis: GenesisRecord, *, where: str = "genesis") -> dict[str, VerifyingKey]:
    """Key id -> verifying key of every participant genesis registers.

    Raises MalformedRecord for an unparsable or non-canonical verifier key (so each key has
    one spelling and one key id in the state) and ContractViolation when two
    participants share a key id (their entries could not be told apart).
    """
    keys: dict[str, VerifyingKey] = {}
    for member in genesis.members:
        key = member.key()
        if key.vkey() != member.vkey:
            raise MalformedRecord(f"{where}: verifier key of {member.id!r} is not in "
                                  f"canonical form {key.vkey()!r}")
        if key.key_id_hex in keys:
            raise ContractViolation(f"{where}: key id {key.key_id_hex} of {member.id!r} "
                                    f"is already registered")
        keys[key.key_id_hex] = key
    return keys


def _member(ordered: Sequence[str], name: str) -> bool:
    """Membership in a sorted list in O(log n) (participant lists can be long)."""
    position = bisect.bisect_left(ordered, name)
    return position < len(ordered) and ordered[position] == name


def _median_ppm(values: Sequence[int]) -> int:
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) // 2


def _json_copy(value: Any) -> Any:
    """Deep copy of a JSON value; several times faster than copy.deepcopy on the state,
    which is copied every block."""
    if isinstance(value, dict):
        return {key: _json_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_copy(item) for item in value]
    return value


class LedgerState:
    """The contract state after some prefix of the log; immutable, canonical, hashable.

    Build with :meth:`empty` (before genesis) or :meth:`from_bytes`; advance with
    :meth:`apply_block`, which returns a new state and leaves this one untouched.
    """

    __slots__ = ("_bytes", "_data", "_keys")

    def __init__(self, data: dict[str, Any]) -> None:
        """Internal: wraps an already-validated state dict; use the classmethods."""
        self._data = data
        self._bytes = canonical_bytes(data)
        self._keys: dict[str, VerifyingKey] | None = None

    @classmethod
    def empty(cls) -> LedgerState:
        """The state before the genesis entry."""
        return cls({})

    @classmethod
    def from_bytes(cls, data: bytes, *, where: str) -> LedgerState:
        """Load a stored state (canonical JSON object); MalformedRecord if not one."""
        value = parse_canonical(data, where=where)
        if not isinstance(value, dict) or (value and value.get("v") != STATE_VERSION):
            raise MalformedRecord(f"{where}: not a version-{STATE_VERSION} contract state")
        return cls(value)

    def to_bytes(self) -> bytes:
        """RFC 8785 bytes of the state."""
        return self._bytes

    def root(self) -> bytes:
        """State root carried by block headers: SHA-256 of :meth:`to_bytes`."""
        return hashlib.sha256(self._bytes).digest()

    def as_dict(self) -> dict[str, Any]:
        """A deep copy of the state as plain JSON values (for display and hooks)."""
        return _json_copy(self._data)

    # --- read access --------------------------------------------------------------------

    @property
    def initialised(self) -> bool:
        """True once the genesis entry has been applied."""
        return bool(self._data)

    def _get(self, name: str) -> Any:
        if not self._data:
            raise ContractViolation(f"the ledger has no genesis yet: no {name}")
        return self._data[name]

    @property
    def federation_id(self) -> str:
        return self._get("federation_id")

    @property
    def quorum(self) -> int:
        return self._get("quorum")

    @property
    def model_cid(self) -> str | None:
        """CID of the current (last accepted) global model."""
        return self._get("model_cid")

    @property
    def quality_ppm(self) -> int | None:
        """Quality Q of the current model (median accepting attestation), None before any."""
        return self._get("quality_ppm")

    @property
    def last_round(self) -> int:
        return self._get("last_round")

    @property
    def open_round(self) -> dict[str, Any] | None:
        """The round in progress (status ``open`` or ``closed``), a copy; None if none."""
        return _json_copy(self._get("round"))

    def clients(self) -> dict[str, dict[str, Any]]:
        """Client id -> registration, ``epsilon_spent`` and ``balance`` (a copy)."""
        return _json_copy(self._get("clients"))

    def data_weights(self) -> dict[str, int]:
        """Client id -> registered record count (``data_weight``), without copying the rest."""
        return {name: record["data_weight"] for name, record in self._get("clients").items()}

    def validators(self) -> dict[str, dict[str, Any]]:
        """Validator id -> registration and ``balance`` (a copy)."""
        return _json_copy(self._get("validators"))

    def rounds(self) -> list[dict[str, Any]]:
        """Summary of every finished round, oldest first (a copy): outcome, counts of
        participants / survivors / dropouts / rejected, attestations, model and quality,
        tokens minted. Per-client detail stays in the entries, so the state (hashed every
        block) grows with rounds by a constant, not by the number of clients."""
        return _json_copy(self._get("rounds"))

    def balances(self) -> dict[str, int]:
        """Token balance of every client and validator."""
        members = {**self._get("clients"), **self._get("validators")}
        return {name: record["balance"] for name, record in members.items()}

    def keys(self) -> dict[str, VerifyingKey]:
        """Key id -> verifying key of every registered participant."""
        if self._keys is None:
            self._keys = {
                record["key_id"]: VerifyingKey.from_vkey(record["vkey"])
                for record in (self._get("coordinator"), *self._get("clients").values(),
                               *self._get("validators").values())
            }
        return self._keys

    def validator_keys(self) -> dict[str, VerifyingKey]:
        """Key id -> verifying key of the validators (who sign block certificates)."""
        keys = self.keys()
        return {v["key_id"]: keys[v["key_id"]] for v in self._get("validators").values()}

    # --- transitions ----------------------------------------------------------------------

    def apply_block(self, entries: Sequence[Entry], *, first_index: int) -> LedgerState:
        """The state after ``entries`` (log indices from ``first_index``), then block end.

        Pure: raises ContractViolation naming the first refused entry and rule, and leaves
        this state unchanged either way. Signatures are checked by the caller
        (:func:`~bfl_private.ledger.entries.verify_signatures` with :meth:`keys`).
        """
        data = _json_copy(self._data)
        if not data and (len(entries) != 1 or entries[0].type != GENESIS):
            raise ContractViolation(
                f"entry {first_index}: block 0 must hold exactly one genesis entry"
            )
        if not entries:
            raise ContractViolation(f"entry {first_index}: a block must hold at least one entry")
        for offset, entry in enumerate(entries):
            where = f"entry {first_index + offset} ({entry.type}, round {entry.round})"
            try:
                _RULES[entry.type](data, entry, where)
            except ContractViolation as exc:
                raise ContractViolation(str(exc), entry=first_index + offset) from None
        _finish_round(data)
        state = LedgerState(data)
        state._keys = self._keys  # the registry never changes after genesis
        return state


# --- rules: each mutates the working copy or raises ContractViolation --------------------


def _require(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise ContractViolation(f"{where}: {message}")


def _author_is(entry: Entry, record: Mapping[str, Any], role: str,
               where: str) -> None:
    _require(entry.author == record["key_id"], where,
             f"signed by key {entry.author}, but {role} {record.get('id')!r} holds key "
             f"{record['key_id']}")


def _genesis(data: dict[str, Any], entry: Entry, where: str) -> None:
    _require(not data, where, "genesis after the ledger was initialised")
    try:
        genesis = GenesisRecord.from_json(entry.payload, where=where)
    except MalformedRecord as exc:  # e.g. an id named twice: a registry the contract refuses
        raise ContractViolation(str(exc)) from None
    try:
        keys = genesis_keys(genesis, where=where)
    except MalformedRecord as exc:
        raise ContractViolation(f"{where}: bad verifier key: {exc}") from None
    by_vkey = {key.vkey(): key.key_id_hex for key in keys.values()}
    n = len(genesis.validators)
    _require(min_quorum(n) <= genesis.quorum <= n, where,
             f"quorum {genesis.quorum} of {n} validators is outside "
             f"[{min_quorum(n)}, {n}] (2f+1 of 3f+1)")
    coordinator = {**genesis.coordinator.to_json(), "key_id": by_vkey[genesis.coordinator.vkey]}
    _author_is(entry, coordinator, "coordinator", where)
    data.update({
        "v": STATE_VERSION,
        "federation_id": genesis.federation_id,
        "settings": genesis.settings,
        "quorum": genesis.quorum,
        "rewards": genesis.rewards.to_json(),
        "coordinator": coordinator,
        "clients": {
            c.id: {"key_id": by_vkey[c.vkey], "vkey": c.vkey, "epsilon_budget": c.epsilon_budget,
                   "delta": c.delta, "data_weight": c.data_weight, "epsilon_spent": 0, "balance": 0}
            for c in genesis.clients
        },
        "validators": {
            v.id: {"key_id": by_vkey[v.vkey], "vkey": v.vkey, "balance": 0}
            for v in genesis.validators
        },
        "model_cid": genesis.initial_model_cid,
        "quality_ppm": None,
        "last_round": 0,
        "round": None,
        "rounds": [],
    })


def _current(data: dict[str, Any], entry: Entry, status: str, where: str) -> dict[str, Any]:
    """The round in progress, which must have ``status`` and be the entry's round."""
    _require(bool(data), where, "no genesis yet")
    current = data["round"]
    if current is None:
        raise ContractViolation(f"{where}: no round is in progress "
                                f"(last round was {data['last_round']})")
    _require(entry.round == current["number"], where,
             f"entry is for round {entry.round}, but the round in progress is "
             f"{current['number']} (replayed or misdirected)")
    _require(current["status"] == status, where,
             f"round {current['number']} is {current['status']}, this entry needs it {status}")
    return current


def _round_open(data: dict[str, Any], entry: Entry, where: str) -> None:
    _author_is(entry, data["coordinator"], "coordinator", where)
    _require(data["round"] is None, where,
             f"round {data['round'] and data['round']['number']} is still in progress")
    _require(entry.round == data["last_round"] + 1, where,
             f"next round must be {data['last_round'] + 1}, got {entry.round}")
    p = entry.payload
    unknown = [c for c in p["participants"] if c not in data["clients"]]
    _require(not unknown, where, f"participants {unknown} are not registered clients")
    _require(data["model_cid"] is None or p["base_model_cid"] == data["model_cid"], where,
             f"base model {p['base_model_cid']} is not the current model {data['model_cid']}")
    data["last_round"] = entry.round
    data["round"] = {
        "number": entry.round, "status": "open", "participants": sorted(p["participants"]),
        "protocol": p["protocol"], "base_model_cid": p["base_model_cid"],
        "submissions": {}, "close": None, "attestations": {},
    }


def _round_beacon(data: dict[str, Any], entry: Entry, where: str) -> None:
    _author_is(entry, data["coordinator"], "coordinator", where)
    current = _current(data, entry, "open", where)
    # Right after the opening: before any submission, so no client answered a round whose
    # seed was not yet fixed. The key exists only once a beacon is recorded, so the state
    # (and its root) of a round without one is what it was before beacons existed.
    _require("beacon" not in current, where, f"round {entry.round} already has its beacon")
    _require(not current["submissions"], where,
             f"round {entry.round}'s beacon comes after submissions; it must follow the opening")
    current["beacon"] = entry.payload["opening_sha256"]


def _submission(data: dict[str, Any], entry: Entry, where: str) -> None:
    p = entry.payload
    client = data["clients"].get(p["client"])
    if client is None:
        raise ContractViolation(f"{where}: client {p['client']!r} is not registered")
    _author_is(entry, {**client, "id": p["client"]}, "client", where)
    current = _current(data, entry, "open", where)
    _require(_member(current["participants"], p["client"]), where,
             f"client {p['client']!r} is not a participant of round {entry.round}")
    _require(p["client"] not in current["submissions"], where,
             f"client {p['client']!r} already submitted in round {entry.round}")
    # Record counts are public and fixed at genesis: the weight a submission carries is the
    # registered one, so the aggregate's weight can be checked against the survivors'.
    _require(p["data_weight"] == client["data_weight"], where,
             f"data weight {p['data_weight']} is not the registered {client['data_weight']}")
    current["submissions"][p["client"]] = {"blob_cid": p["blob_cid"],
                                           "data_weight": p["data_weight"]}


def _spend(data: dict[str, Any], current: Mapping[str, Any], spent: Mapping[str, Any],
           where: str) -> None:
    """Budget contract: cumulative epsilon never decreases and never exceeds the budget."""
    for name in sorted(spent):
        value = spent[name]
        _require(_member(current["participants"], name), where,
                 f"cumulative epsilon for {name!r}, who is not a participant")
        client = data["clients"][name]
        _require(value >= client["epsilon_spent"], where,
                 f"cumulative epsilon of {name!r} would decrease from "
                 f"{client['epsilon_spent']} to {value}")
        _require(value <= client["epsilon_budget"], where,
                 f"cumulative epsilon {value} of {name!r} exceeds its lifetime budget "
                 f"{client['epsilon_budget']}")
        client["epsilon_spent"] = value


def _charge_submitters(data: dict[str, Any], current: Mapping[str, Any], spent: Mapping[str, Any],
                       where: str) -> None:
    """The spending rule: a client is charged once its protected update has left it, so
    every submitter of the round has a cumulative epsilon, whatever the outcome."""
    unspent = sorted(set(current["submissions"]) - set(spent))
    _require(not unspent, where, f"submitters {unspent} have no cumulative epsilon")
    _spend(data, current, spent, where)


def _round_close(data: dict[str, Any], entry: Entry, where: str) -> None:
    _author_is(entry, data["coordinator"], "coordinator", where)
    current = _current(data, entry, "open", where)
    p = entry.payload
    groups = [set(p["survivors"]), set(p["dropouts"]), set(p["rejected"])]
    _require(sum(map(len, groups)) == len(set().union(*groups)), where,
             "survivors, dropouts and rejected overlap")
    _require(set().union(*groups) == set(current["participants"]), where,
             "survivors, dropouts and rejected must partition the round's participants")
    missing = sorted(set(p["survivors"]) - set(current["submissions"]))
    _require(not missing, where, f"survivors {missing} did not submit")
    unexplained = sorted(set(current["submissions"]) - set(p["survivors"]) - set(p["rejected"]))
    _require(not unexplained, where, f"{unexplained} submitted but are neither survivors nor rejected")
    _charge_submitters(data, current, p["cumulative_epsilon"], where)
    current["status"] = "closed"
    current["close"] = {key: p[key] for key in ("aggregate_cid", "new_model_cid",
                                                 "transcript_cid", "survivors", "dropouts",
                                                 "rejected")}


def _attestation(data: dict[str, Any], entry: Entry, where: str) -> None:
    p = entry.payload
    validator = data["validators"].get(p["validator"])
    if validator is None:
        raise ContractViolation(f"{where}: validator {p['validator']!r} is not registered")
    _author_is(entry, {**validator, "id": p["validator"]}, "validator", where)
    current = _current(data, entry, "closed", where)
    _require(p["validator"] not in current["attestations"], where,
             f"validator {p['validator']!r} already attested round {entry.round}")
    _require(p["model_cid"] == current["close"]["new_model_cid"], where,
             f"attests model {p['model_cid']}, round {entry.round} produced "
             f"{current['close']['new_model_cid']}")
    current["attestations"][p["validator"]] = {"quality_ppm": p["quality_ppm"],
                                               "verdict": p["verdict"]}


def _abort(data: dict[str, Any], entry: Entry, where: str) -> None:
    _author_is(entry, data["coordinator"], "coordinator", where)
    current = _current(data, entry, "open", where)
    p = entry.payload
    outside = sorted(set(p["survivors"]) - set(current["participants"]))
    _require(not outside, where, f"survivors {outside} are not participants")
    _charge_submitters(data, current, p["cumulative_epsilon"], where)
    data["rounds"].append({
        "round": current["number"], "outcome": "aborted", "stage": p["stage"],
        "reason": p["reason"], "participants": len(current["participants"]),
        "survivors": len(p["survivors"]), "model_cid": data["model_cid"],
    })
    data["round"] = None


def _finish_round(data: dict[str, Any]) -> None:
    """Block end: settle a closed round (model chain, rewards, penalties)."""
    current = data.get("round")
    if current is None or current["status"] != "closed":
        return
    close, rules = current["close"], data["rewards"]
    accepting = [a["quality_ppm"] for a in current["attestations"].values()
                 if a["verdict"] == "accept"]
    accepted = len(accepting) >= data["quorum"]
    minted: dict[str, int] = {}
    if accepted:
        quality = _median_ppm(accepting)
        weights = {c: current["submissions"][c]["data_weight"] for c in close["survivors"]}
        total = sum(weights.values())
        for name in sorted(weights):
            minted[name] = rules["reward_per_round"] * weights[name] * quality // (total * PPM)
            data["clients"][name]["balance"] += minted[name]
        data["model_cid"], data["quality_ppm"] = close["new_model_cid"], quality
    for name in close["rejected"]:
        record = data["clients"][name]
        record["balance"] = max(0, record["balance"] - rules["penalty_invalid"])
    for name in close["dropouts"]:
        record = data["clients"][name]
        record["balance"] = max(0, record["balance"] - rules["penalty_dropout"])
    for name in current["attestations"]:
        data["validators"][name]["balance"] += rules["validator_reward"]
    data["rounds"].append({
        "round": current["number"], "outcome": "accepted" if accepted else "rejected",
        "participants": len(current["participants"]), "survivors": len(close["survivors"]),
        "dropouts": len(close["dropouts"]), "rejected": len(close["rejected"]),
        "new_model_cid": close["new_model_cid"], "model_cid": data["model_cid"],
        "accepts": len(accepting), "attestations": len(current["attestations"]),
        "quality_ppm": data["quality_ppm"] if accepted else None,
        "minted": sum(minted.values()),
    })
    data["round"] = None


_RULES = {
    GENESIS: _genesis,
    ROUND_OPEN: _round_open,
    ROUND_BEACON: _round_beacon,
    SUBMISSION: _submission,
    ROUND_CLOSE: _round_close,
    ATTESTATION: _attestation,
    ABORT: _abort,
}
