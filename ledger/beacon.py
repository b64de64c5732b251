"""Round randomness nobody can steer: the validators' beacon on a round opening.

The SecAgg+ neighbour graph (who holds whose shares) is drawn from a public round seed.
A seed the coordinator can influence lets it grind until its colluders surround a target,
so under the ``validator-beacon-v1`` rule (named in genesis' settings as
``round_randomness``) the seed is fixed only after everything else about the round:

1. the coordinator signs the ``round_open`` (participants, protocol, parameters, base
   model);
2. each validator signs :func:`beacon_message` — the federation, the round id and the
   SHA-256 of that opening's canonical bytes — with its Ed25519 identity key, at most one
   opening per round id (:class:`bfl_private.validator.BeaconSigner`); RFC 8032 signatures
   are deterministic and unpredictable without the key, so the coordinator can neither
   compute the seed before it fixes the opening nor re-roll it by asking again;
3. the seed is :func:`round_seed` = SHA-256(domain, opening hash, the signatures of the
   first ``quorum`` validators in genesis order among those the beacon carries).

The coordinator records the signatures as a ``round_beacon`` entry right after the
opening. Which quorum subset is used is the coordinator's remaining choice (it may leave
out answers): at most C(n, quorum) seeds per opening, e.g. 3 for 3 validators of quorum 2.
A coordinator colluding with a quorum of validators can still steer the seed.

One implementation: the coordinator, the Flower server and hospitals, the validators and
the verifier all call :func:`round_seed`.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .contracts import min_quorum
from .entries import ROUND_BEACON, ROUND_OPEN, Entry
from .errors import MalformedRecord, SemanticCheckError, SignatureError
from .genesis import GenesisRecord
from .identity import VerifyingKey

RANDOMNESS_BEACON = "validator-beacon-v1"
"""Genesis ``settings.round_randomness`` of federations whose round seeds come from the beacon."""
RANDOMNESS_LEGACY = "legacy-head-hash"
"""Ledgers whose genesis names no rule: seed = SHA-256(previous header hash, round id),
which the coordinator can steer through the block time it picks."""
BEACON_CONTEXT = b"bfl-private/round-beacon/v1"
SEED_CONTEXT = b"bfl-private/round-seed/v1"
_HEX64 = re.compile(r"[0-9a-f]{64}")


class BeaconError(SemanticCheckError):
    """A round beacon that does not give the round's seed: wrong opening or round, a bad or
    unregistered signature, or fewer signers than the quorum."""


def opening_digest(opening: Entry) -> bytes:
    """SHA-256 of the round opening's canonical bytes (its coordinator signature included)."""
    return hashlib.sha256(opening.to_bytes()).digest()


def beacon_message(federation_id: str, round_id: int, digest: bytes) -> bytes:
    """What a validator signs for round ``round_id``'s opening of SHA-256 ``digest``.

    The federation id is length-prefixed (ids are 1-64 ASCII characters), so no two
    (federation, round) pairs share a message, and the domain tag keeps the signature from
    being valid as an entry or block signature of the same key."""
    fid = federation_id.encode("ascii")
    return BEACON_CONTEXT + bytes([len(fid)]) + fid + round_id.to_bytes(8, "big") + digest


@dataclass(frozen=True)
class BeaconPolicy:
    """What genesis fixes for beacons: the federation, its validators in genesis order, the quorum."""

    federation_id: str
    validators: tuple[tuple[str, VerifyingKey], ...]
    quorum: int

    @classmethod
    def from_genesis(cls, genesis: GenesisRecord) -> BeaconPolicy:
        validators = tuple((v.id, v.key()) for v in genesis.validators)
        # Never below the BFT quorum, whatever a genesis that skipped the contracts says.
        return cls(genesis.federation_id, validators, max(genesis.quorum, min_quorum(len(validators))))


@dataclass(frozen=True)
class RoundBeacon:
    """The ``round_beacon`` payload: the opening's hash and each answering validator's signature."""

    opening_sha256: bytes
    signatures: Mapping[str, bytes]
    """Validator id -> Ed25519 signature of :func:`beacon_message`."""

    def to_json(self) -> dict[str, Any]:
        return {"opening_sha256": self.opening_sha256.hex(),
                "signatures": {v: base64.b64encode(s).decode("ascii") for v, s in sorted(self.signatures.items())}}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], *, where: str) -> RoundBeacon:
        digest = obj.get("opening_sha256") if isinstance(obj, Mapping) else None
        signatures = obj.get("signatures") if isinstance(obj, Mapping) else None
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest) or not isinstance(signatures, Mapping):
            raise MalformedRecord(f"{where}: a round beacon is opening_sha256 (64 hex) and signatures by validator")
        decoded = {}
        for validator, text in signatures.items():
            try:
                raw = base64.b64decode(text, validate=True) if isinstance(text, str) else b""
            except binascii.Error:
                raw = b""
            if len(raw) != 64 or base64.b64encode(raw).decode("ascii") != text:
                raise MalformedRecord(f"{where}: signature of {validator!r} is not canonical base64 of 64 bytes")
            decoded[str(validator)] = raw
        return cls(bytes.fromhex(digest), decoded)

    @classmethod
    def of(cls, entry: Entry, *, where: str) -> RoundBeacon:
        if entry.type != ROUND_BEACON:
            raise BeaconError(f"{where}: a {entry.type} entry, not a round beacon")
        return cls.from_json(entry.payload, where=where)


def round_seed(beacon: RoundBeacon, *, opening: Entry, policy: BeaconPolicy, where: str) -> bytes:
    """The round's seed from its ``beacon``, after checking that the beacon is for exactly
    this ``opening`` and carries valid signatures by at least ``quorum`` genesis validators.

    Raises :class:`BeaconError` naming ``where`` and what is wrong."""
    if opening.type != ROUND_OPEN:
        raise BeaconError(f"{where}: the beacon must follow a round opening, not a {opening.type} entry")
    digest = opening_digest(opening)
    if beacon.opening_sha256 != digest:
        raise BeaconError(f"{where}: the beacon is for opening {beacon.opening_sha256.hex()[:16]}..., "
                          f"not round {opening.round}'s opening {digest.hex()[:16]}...")
    keys = dict(policy.validators)
    unknown = sorted(set(beacon.signatures) - set(keys))
    if unknown:
        raise BeaconError(f"{where}: beacon signatures by {unknown}, who are not genesis validators")
    message = beacon_message(policy.federation_id, opening.round, digest)
    for validator, signature in sorted(beacon.signatures.items()):
        try:
            keys[validator].verify(signature, message)
        except SignatureError:
            raise BeaconError(f"{where}: the beacon signature of validator {validator!r} does not verify "
                              f"for round {opening.round} of {policy.federation_id}") from None
    # The first quorum in genesis order: which answers count is not the coordinator's to order.
    used = [beacon.signatures[validator] for validator, _ in policy.validators
            if validator in beacon.signatures][:policy.quorum]
    if len(used) < policy.quorum:
        raise BeaconError(f"{where}: {len(used)} validator beacon signatures, the quorum is {policy.quorum}")
    return hashlib.sha256(SEED_CONTEXT + digest + b"".join(used)).digest()


def beacon_after(entries: Sequence[Entry], index: int, *, where: str) -> RoundBeacon:
    """The beacon recorded right after the opening at ``entries[index]``."""
    following = entries[index + 1] if index + 1 < len(entries) else None
    if following is None or following.type != ROUND_BEACON or following.round != entries[index].round:
        raise BeaconError(f"{where}: no round_beacon entry right after the round opening "
                          f"(genesis fixes round_randomness = {RANDOMNESS_BEACON})")
    return RoundBeacon.of(following, where=where)
