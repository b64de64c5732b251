"""Signed ledger entries: one canonical JSON record per Merkle leaf.

An entry says *who* (the author's C2SP key id), *what* (its type and payload) and *when*
(the round), and carries the author's Ed25519 signature. Its wire form, which is also the
Merkle leaf data (RFC 9162 §2.1.1), is the RFC 8785 canonical JSON object::

    {"author": "<key id, 8 hex>", "payload": {...}, "round": <int>,
     "sig": "<base64 Ed25519 signature>", "type": "<entry type>", "v": 1}

The signature covers ``b"bfl-private/entry/v1\\n"`` followed by the canonical JSON of the
same object without ``"sig"``; the prefix keeps an entry signature from ever being valid as
a block cosignature or any other message signed by the same key.

Payload schemas (checked here, on creation and on parsing; the contracts check meaning).
``id`` strings match ``[A-Za-z0-9._-]{1,64}``; ``cid`` is a CIDv1 string (see cid.py);
``number`` is a finite JSON number (int or float); unknown fields are refused.

``genesis`` (round 0, author: the coordinator) — block 0, alone::

    federation_id: id
    settings: object           opaque federation parameters (dataset, model, protocol, ...)
    quorum: int                validator signatures a block needs; at least the BFT
                               quorum n - floor((n-1)/3) of n validators, at most n
    rewards: {reward_per_round: int, penalty_invalid: int, penalty_dropout: int,
              validator_reward: int}            all >= 0
    coordinator: {id: id, vkey: str}            vkey: C2SP signed-note verifier key
    clients: [{id: id, vkey: str, epsilon_budget: number > 0, delta: number in (0, 1),
               data_weight: int >= 1}]           non-empty
    validators: [{id: id, vkey: str}]           non-empty
    initial_model_cid: cid | null
    normalisation: {source: str, records: int, mean: [number], scale: [number > 0]}

``round_open`` (round r >= 1, author: coordinator)::

    participants: [id]         non-empty, no repeats
    protocol: str              e.g. "masking"
    protocol_params: object    opaque
    base_model_cid: cid | null the model the round starts from
    privacy_plan: object       opaque

``round_beacon`` (round r, author: coordinator), right after the round's opening, under
the ``validator-beacon-v1`` rule (see beacon.py)::

    opening_sha256: str        64 hex digits: SHA-256 of the round_open entry's bytes
    signatures: {id: str}      validator -> base64 Ed25519 signature of the beacon message

``submission`` (round r, author: the client's own key)::

    client: id
    blob_cid: cid              the protected update in the blob store
    data_weight: int >= 1      records behind this update (<= the registered weight)
    privacy: object            opaque privacy record (noise multiplier, steps, ...)

``round_close`` (round r, author: coordinator)::

    aggregate_cid: cid
    new_model_cid: cid
    transcript_cid: cid | null
    survivors: [id]            survivors, dropouts and rejected partition the participants
    dropouts: [id]
    rejected: {id: str}        client -> reason its submission was refused
    cumulative_epsilon: {id: number >= 0}   lifetime epsilon spent after this round

``attestation`` (round r, author: a validator)::

    validator: id
    model_cid: cid             must be the round's new_model_cid
    quality_ppm: int           quality figure (e.g. held-out accuracy) in parts per million
    verdict: "accept" | "reject"

``abort`` (round r, author: coordinator)::

    stage: str
    reason: str
    survivors: [id]
    cumulative_epsilon: {id: number >= 0}   privacy already spent, may be empty
"""
from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .canonical import canonical_bytes, parse_canonical
from .cid import parse_cid
from .errors import MalformedRecord, SignatureError, VerificationError
from .identity import SigningIdentity, VerifyingKey
from .merkle import leaf_hash

ENTRY_VERSION = 1
SIGNATURE_CONTEXT = b"bfl-private/entry/v1\n"

GENESIS = "genesis"
ROUND_OPEN = "round_open"
ROUND_BEACON = "round_beacon"
SUBMISSION = "submission"
ROUND_CLOSE = "round_close"
ATTESTATION = "attestation"
ABORT = "abort"

_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_KEY_ID = re.compile(r"[0-9a-f]{8}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_ENVELOPE = {"author", "payload", "round", "sig", "type", "v"}

Checker = Callable[[Any, str], None]


# --- field checkers: each raises MalformedRecord naming the field path ------------------


def _fail(where: str, what: str, value: Any) -> None:
    raise MalformedRecord(f"{where}: {what}, got {value!r:.80}")


def _id(value: Any, where: str) -> None:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        _fail(where, "must be an id matching [A-Za-z0-9._-]{1,64}", value)


def _str(value: Any, where: str) -> None:
    if not isinstance(value, str) or not value or len(value) > 4096:
        _fail(where, "must be a non-empty string of at most 4096 characters", value)


def _sha256_hex(value: Any, where: str) -> None:
    if not isinstance(value, str) or not _SHA256_HEX.fullmatch(value):
        _fail(where, "must be 64 lowercase hex digits (a SHA-256)", value)


def _object(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        _fail(where, "must be a JSON object", value)


def _int(low: int, high: int | None = None) -> Checker:
    def check(value: Any, where: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (
            high is not None and value > high
        ):
            _fail(where, f"must be an integer in [{low}, {high if high is not None else '...'}]", value)

    return check


def _number(*, low: float, high: float | None = None, low_open: bool = False) -> Checker:
    def check(value: Any, where: str) -> None:
        ok = (
            not isinstance(value, bool)
            and isinstance(value, (int, float))
            and math.isfinite(value)
            and (value > low if low_open else value >= low)
            and (high is None or value < high)
        )
        if not ok:
            bounds = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'})"
            _fail(where, f"must be a finite number in {bounds}", value)

    return check


def _cid(value: Any, where: str) -> None:
    if not isinstance(value, str):
        _fail(where, "must be a CID string", value)
    try:
        parse_cid(value)
    except VerificationError as exc:
        raise MalformedRecord(f"{where}: not a valid CID: {exc}") from None


def _optional(check: Checker) -> Checker:
    def optional(value: Any, where: str) -> None:
        if value is not None:
            check(value, where)

    return optional


def _one_of(*choices: str) -> Checker:
    def check(value: Any, where: str) -> None:
        if value not in choices:
            _fail(where, f"must be one of {', '.join(choices)}", value)

    return check


def _ids(*, nonempty: bool) -> Checker:
    def check(value: Any, where: str) -> None:
        if not isinstance(value, list) or (nonempty and not value):
            _fail(where, f"must be a {'non-empty ' if nonempty else ''}list of ids", value)
        for i, item in enumerate(value):
            _id(item, f"{where}[{i}]")
        if len(set(value)) != len(value):
            _fail(where, "must not repeat an id", value)

    return check


def _map(values: Checker) -> Checker:
    def check(value: Any, where: str) -> None:
        _object(value, where)
        for key, item in value.items():
            _id(key, f"{where} key")
            values(item, f"{where}[{key!r}]")

    return check


def _record(fields: Mapping[str, Checker]) -> Checker:
    def check(value: Any, where: str) -> None:
        _object(value, where)
        missing = sorted(set(fields) - set(value))
        extra = sorted(set(value) - set(fields))
        if missing or extra:
            raise MalformedRecord(
                f"{where}: missing fields {missing}, unknown fields {extra}"
            )
        for name, checker in fields.items():
            checker(value[name], f"{where}.{name}")

    return check


def _list_of(item: Checker, *, nonempty: bool) -> Checker:
    def check(value: Any, where: str) -> None:
        if not isinstance(value, list) or (nonempty and not value):
            _fail(where, f"must be a {'non-empty ' if nonempty else ''}list", value)
        for i, element in enumerate(value):
            item(element, f"{where}[{i}]")

    return check


_EPSILON = _number(low=0.0)
_MEMBER = {"id": _id, "vkey": _str}

PAYLOAD_SCHEMAS: dict[str, Checker] = {
    GENESIS: _record({
        "federation_id": _id,
        "settings": _object,
        "quorum": _int(1),
        "rewards": _record({
            "reward_per_round": _int(0),
            "penalty_invalid": _int(0),
            "penalty_dropout": _int(0),
            "validator_reward": _int(0),
        }),
        "coordinator": _record(_MEMBER),
        "clients": _list_of(_record({
            **_MEMBER,
            "epsilon_budget": _number(low=0.0, low_open=True),
            "delta": _number(low=0.0, high=1.0, low_open=True),
            "data_weight": _int(1),
        }), nonempty=True),
        "validators": _list_of(_record(_MEMBER), nonempty=True),
        "initial_model_cid": _optional(_cid),
        # Feature standardisation every party applies: constants from a public source,
        # never from client records, published so an auditor sees what was used.
        "normalisation": _record({
            "source": _str,
            "records": _int(0),
            "mean": _list_of(_number(low=-math.inf), nonempty=True),
            "scale": _list_of(_number(low=0.0, low_open=True), nonempty=True),
        }),
    }),
    ROUND_OPEN: _record({
        "participants": _ids(nonempty=True),
        "protocol": _str,
        "protocol_params": _object,
        "base_model_cid": _optional(_cid),
        "privacy_plan": _object,
    }),
    ROUND_BEACON: _record({
        "opening_sha256": _sha256_hex,
        "signatures": _map(_str),
    }),
    SUBMISSION: _record({
        "client": _id,
        "blob_cid": _cid,
        "data_weight": _int(1),
        "privacy": _object,
    }),
    ROUND_CLOSE: _record({
        "aggregate_cid": _cid,
        "new_model_cid": _cid,
        "transcript_cid": _optional(_cid),
        "survivors": _ids(nonempty=True),
        "dropouts": _ids(nonempty=False),
        "rejected": _map(_str),
        "cumulative_epsilon": _map(_EPSILON),
    }),
    ATTESTATION: _record({
        "validator": _id,
        "model_cid": _cid,
        "quality_ppm": _int(0, 1_000_000),
        "verdict": _one_of("accept", "reject"),
    }),
    ABORT: _record({
        "stage": _str,
        "reason": _str,
        "survivors": _ids(nonempty=False),
        "cumulative_epsilon": _map(_EPSILON),
    }),
}

#: The fields of each payload that name blobs, for the verifier's CID check.
BLOB_FIELDS: dict[str, tuple[str, ...]] = {
    GENESIS: ("initial_model_cid",),
    ROUND_OPEN: ("base_model_cid",),
    ROUND_BEACON: (),
    SUBMISSION: ("blob_cid",),
    ROUND_CLOSE: ("aggregate_cid", "new_model_cid", "transcript_cid"),
    ATTESTATION: ("model_cid",),
    ABORT: (),
}


def validate_payload(entry_type: str, payload: Any, *, where: str) -> None:
    """Check ``payload`` against the schema of ``entry_type``; raise MalformedRecord if not."""
    schema = PAYLOAD_SCHEMAS.get(entry_type)
    if schema is None:
        raise MalformedRecord(f"{where}: unknown entry type {entry_type!r}")
    schema(payload, f"{where} {entry_type} payload")


def _check_envelope(entry_type: Any, author: Any, round_: Any, where: str) -> None:
    if not isinstance(author, str) or not _KEY_ID.fullmatch(author):
        _fail(f"{where} author", "must be a key id of 8 lowercase hex digits", author)
    _int(0)(round_, f"{where} round")
    if (entry_type == GENESIS) != (round_ == 0):
        raise MalformedRecord(f"{where}: round 0 is for the genesis entry alone, got {entry_type} "
                              f"in round {round_}")


@dataclass(frozen=True, eq=False)
class Entry:
    """One signed, canonical ledger record. Build with :meth:`create` or :meth:`from_bytes`."""

    type: str
    author: str
    """Key id (C2SP signed note, 8 hex digits) of the Ed25519 key that signed the entry."""
    round: int
    payload: Mapping[str, Any]
    signature: bytes
    _bytes: bytes = field(repr=False)

    @staticmethod
    def _unsigned(entry_type: str, author: str, round_: int, payload: Any) -> dict[str, Any]:
        return {"author": author, "payload": payload, "round": round_, "type": entry_type,
                "v": ENTRY_VERSION}

    @classmethod
    def create(
        cls, identity: SigningIdentity, entry_type: str, round: int, payload: Mapping[str, Any]
    ) -> Entry:
        """Validate ``payload`` for ``entry_type`` and sign the entry with ``identity``."""
        where = f"new {entry_type} entry"
        author = identity.public.key_id_hex
        payload = parse_canonical(canonical_bytes(dict(payload)), where=where)
        _check_envelope(entry_type, author, round, where)
        validate_payload(entry_type, payload, where=where)
        unsigned = cls._unsigned(entry_type, author, round, payload)
        signature = identity.sign(SIGNATURE_CONTEXT + canonical_bytes(unsigned))
        data = canonical_bytes({**unsigned, "sig": base64.b64encode(signature).decode("ascii")})
        return cls(entry_type, author, round, payload, signature, data)

    @classmethod
    def from_bytes(cls, data: bytes, *, where: str) -> Entry:
        """Parse an entry's canonical bytes; raise MalformedRecord naming ``where`` if invalid.

        Only structure is checked here; :meth:`verify` checks the signature.
        """
        record = parse_canonical(data, where=where)
        if not isinstance(record, dict) or set(record) != _ENVELOPE:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise MalformedRecord(f"{where}: an entry has exactly the fields "
                                  f"{sorted(_ENVELOPE)}, got {keys}")
        if record["v"] != ENTRY_VERSION:
            raise MalformedRecord(f"{where}: unsupported entry version {record['v']!r}")
        entry_type, author, round_ = record["type"], record["author"], record["round"]
        _check_envelope(entry_type, author, round_, where)
        validate_payload(entry_type, record["payload"], where=where)
        sig = record["sig"]
        try:
            signature = base64.b64decode(sig, validate=True) if isinstance(sig, str) else b""
        except binascii.Error:
            signature = b""
        if len(signature) != 64:
            raise MalformedRecord(f"{where}: sig must be a base64 64-byte Ed25519 signature")
        if base64.b64encode(signature).decode("ascii") != sig:
            # Non-zero padding bits decode to the same signature: one signed entry would have
            # several byte strings and leaf hashes. Only the canonical spelling is an entry.
            raise MalformedRecord(f"{where}: sig is not the canonical base64 of its signature (padding bits set)")
        return cls(entry_type, author, round_, record["payload"], signature, bytes(data))

    @cached_property
    def _signed(self) -> bytes:
        # The canonical bytes of the entry without "sig" are its canonical bytes with the
        # member cut out: RFC 8785 sorts keys (author, payload, round, sig, type, v), the
        # last ',"sig":"' is the envelope's, and base64 has no escapes. This avoids a second
        # RFC 8785 serialisation per verified entry (tests check it against one).
        cut = self._bytes.rfind(b',"sig":"')
        end = self._bytes.index(b'"', cut + len(b',"sig":"'))
        return SIGNATURE_CONTEXT + self._bytes[:cut] + self._bytes[end + 1:]

    def signed_bytes(self) -> bytes:
        """The exact message the author signed (context prefix + canonical unsigned entry)."""
        return self._signed

    def to_bytes(self) -> bytes:
        """Canonical JSON including the signature: the Merkle leaf data of this entry."""
        return self._bytes

    def leaf_hash(self) -> bytes:
        """RFC 9162 §2.1.1 leaf hash of :meth:`to_bytes`."""
        return leaf_hash(self._bytes)

    def verify(self, key: VerifyingKey, *, where: str) -> None:
        """Check the signature under ``key``, which must be the key the entry names.

        Raises :class:`~bfl_private.ledger.errors.SignatureError` (never returns False).
        """
        if key.key_id_hex != self.author:
            raise SignatureError(f"{where}: entry names key {self.author}, "
                                 f"was checked against key {key.key_id_hex}")
        try:
            key.verify(self.signature, self.signed_bytes())
        except SignatureError as exc:
            raise SignatureError(f"{where}: {self.type} signature by key {self.author} "
                                 f"does not verify: {exc}") from None


def verify_signatures(
    entries: Sequence[Entry], keys: Mapping[str, VerifyingKey], *, first_index: int
) -> None:
    """Check every entry's signature under the registered key its author id names.

    ``keys`` maps key id (hex) to key, e.g. ``LedgerState.keys()`` or
    ``contracts.genesis_keys``. Raises SignatureError naming the entry's log index.
    """
    for offset, entry in enumerate(entries):
        where = f"entry {first_index + offset} ({entry.type}, round {entry.round})"
        key = keys.get(entry.author)
        if key is None:
            raise SignatureError(f"{where}: author key id {entry.author} is not registered")
        entry.verify(key, where=where)
