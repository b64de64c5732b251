"""Validators: check a round themselves, attest the new model's quality, then co-sign.

Proof-of-Quality: a validator co-signs a block only after it has

1. replayed the contracts over the block's entries and reached the same header;
2. recomputed the round's aggregate from the committed blobs and the transcript, the new
   model from the previous one, and every cumulative ε claim (``round_checks``);
3. evaluated the previous and the new model on its own held-out data.

Before a round runs, a validator also signs the beacon of its opening, which fixes the
round's seed (:meth:`Validator.sign_beacon`, :mod:`bfl_private.ledger.beacon`), and it
co-signs no block whose rounds' beacons and seeds do not check out.

Its attestation carries its quality figure (accuracy in parts per million) and its verdict:
``accept`` unless the new model is worse than the previous one by more than the genesis
tolerance. The contracts advance the model only if a quorum accepts.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .artifacts import get_model
from .data import Split
from .federation import accuracy
from .rounds.errors import StageMessageError
from .keyring import KeyringError
from .ledger.beacon import RANDOMNESS_BEACON, beacon_message, opening_digest
from .ledger.blocks import BlockHeader
from .ledger.entries import ATTESTATION, ROUND_CLOSE, ROUND_OPEN, Entry
from .ledger.errors import SemanticCheckError, VerificationError
from .ledger.genesis import GenesisRecord
from .ledger.store import Ledger
from .participant_checks import ParticipantView, check_opening
from .parties import ValidatorParty
from .primitives.errors import BflError
from .round_records import Attestation
from .round_checks import (
    PaillierKeyPin,
    PrivacyHistories,
    RoundView,
    check_distributed_round,
    check_round_aggregate,
    check_round_model,
    check_round_randomness,
    registered_records,
)
from .settings import FederationSettings

PPM = 1_000_000
COSIGNED_FILE = "last-cosigned.json"
"""In the validator's folder: the height and header hash of the last block it cosigned."""
BEACONS_FILE = "beacons.json"
"""In the validator's folder: the one opening per round it signed a beacon for."""
BEACON_MEMORY_VERSION = 1
PROPOSAL_CONTEXT = b"bfl-private/block-proposal/v1\n"


def proposal_message(header: BlockHeader) -> bytes:
    """What the coordinator signs to propose ``header`` to the validators."""
    return PROPOSAL_CONTEXT + header.signing_bytes()


def _digest(entries: Sequence[Entry]) -> bytes:
    """SHA-256 over the entries' canonical bytes, in order."""
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(hashlib.sha256(entry.to_bytes()).digest())
    return digest.digest()


class BeaconRefused(BflError):
    """A validator does not sign the beacon of a round opening (see :meth:`Validator.sign_beacon`)."""


class SecondOpening(BeaconRefused):
    """A second, different opening of a round id whose beacon this validator already signed:
    signing it would let the coordinator choose between two seeds."""


class Validator(ValidatorParty):
    """One validator, built from its own folder ``DIR/parties/<name>/``: its keys, and what
    it has signed (the last block it cosigned, the opening of each round it signed a beacon
    for), written before a signature leaves, so that no restart lets it sign two blocks at
    one height or two openings of one round (see :mod:`bfl_private.parties`)."""

    def __init__(self, directory: Path, name: str, holdout: Split, *, settings: FederationSettings,
                 n_features: int, n_classes: int) -> None:
        super().__init__(directory, name)
        self._cosigned = self._load_cosigned()
        self._attested: dict[int, tuple[bytes, Entry]] = {}
        """Round -> digest of the entries this validator attested and its attestation (the
        ledger's next round only)."""
        self.holdout = holdout
        self.settings = settings
        self.n_features = n_features
        self.n_classes = n_classes
        self.histories = PrivacyHistories()
        self.paillier_key = PaillierKeyPin()

    def sign_beacon(self, opening: Entry, ledger: Ledger) -> bytes:
        """This validator's beacon signature on ``opening``, refused (:class:`BeaconRefused`,
        by name) unless it is a coordinator-signed opening of the ledger's next round that a
        participant would accept (genesis' protocol rules, the current model), and the only
        opening of that round id this validator signs."""
        where = f"validator {self.identity.name}, beacon of round {opening.round}"
        state = ledger.state
        try:
            if opening.type != ROUND_OPEN:
                raise BeaconRefused(f"{where}: a {opening.type} entry, not a round opening")
            opening.verify(GenesisRecord.of(ledger.genesis()).coordinator.key(), where=where)
            if state.open_round is not None or opening.round != state.last_round + 1:
                raise BeaconRefused(f"{where}: the ledger's next round is {state.last_round + 1}"
                                    f"{' (one is in progress)' if state.open_round is not None else ''}")
            check_opening(opening, settings=self.settings, participant=self.identity.name,
                          view=ParticipantView(model_cid=state.model_cid, last_round=state.last_round))
            # A distributed-DP plan every hospital would refuse gets no seed either.
            check_distributed_round(opening, self.settings, registered_records(state))
        except (StageMessageError, VerificationError) as exc:  # a refusal by name, or a malformed opening
            raise BeaconRefused(f"{where}: {type(exc).__name__}: {exc}") from exc
        digest = opening_digest(opening)
        federation = state.federation_id
        openings = self._signed_openings()
        signed = openings.get(f"{federation}/{opening.round}")
        if signed is not None and signed != digest.hex():
            raise SecondOpening(f"{where}: already signed the beacon of another opening of this round "
                                f"({signed[:16]}...); one opening per round id")
        if signed is None:
            openings[f"{federation}/{opening.round}"] = digest.hex()
            self.keep(BEACONS_FILE, json.dumps({"v": BEACON_MEMORY_VERSION, "openings": openings},
                                               sort_keys=True).encode())
        return self.identity.sign(beacon_message(federation, opening.round, digest))

    def _signed_openings(self) -> dict[str, str]:
        """"federation/round" -> SHA-256 of the one opening this validator signed a beacon for
        (keyed by federation too, so one folder may serve a validator of several federations)."""
        data = self.kept(BEACONS_FILE)
        if data is None:
            return {}
        try:
            record = json.loads(data)
            if record.get("v") != BEACON_MEMORY_VERSION or not isinstance(record.get("openings"), dict):
                raise ValueError(f"not a version {BEACON_MEMORY_VERSION} beacon record")
            return {str(key): str(value) for key, value in record["openings"].items()}
        except (ValueError, TypeError, AttributeError) as exc:
            # Fail closed: forgetting what it signed would let it sign a second opening.
            raise BeaconRefused(f"{self.name} {BEACONS_FILE}: unreadable beacon record, nothing is signed: "
                                f"{exc}") from None

    def _quality_ppm(self, params: np.ndarray) -> int:
        value = accuracy(self.settings.training.model, params, self.holdout,
                         n_features=self.n_features, n_classes=self.n_classes)
        return round(value * PPM)

    def check_round(self, entries: Sequence[Entry], ledger: Ledger) -> RoundView:
        """Recompute the round closed in ``entries`` against the ledger so far."""
        view = RoundView.of(entries)
        if view is None:
            raise SemanticCheckError("no closed round to check among the proposed entries")
        check_round_aggregate(view, ledger.blobs, state=ledger.state, genesis=GenesisRecord.of(ledger.genesis()),
                              paillier_key=self.paillier_key.sync(ledger).n)
        check_round_model(view, ledger.blobs, settings=self.settings, records=registered_records(ledger.state))
        self.histories.sync(ledger).extended(entries).check_claims(entries)
        return view

    def attest(self, entries: Sequence[Entry], ledger: Ledger) -> Entry:
        """Check the round, then sign this validator's quality figure and verdict.

        The round must be the ledger's next one, its entries signed by the parties genesis
        registers and accepted by the contracts (a dry run of the block), its seed the one its
        opening and beacon fix; then its aggregate, model and ε claims are recomputed. The
        same entries asked again get the same attestation without the work (a replay costs
        nothing); :meth:`cosign_header` relies on it."""
        state = ledger.state
        round_id = entries[0].round if entries else None
        if round_id != state.last_round + 1 or any(e.round != round_id for e in entries):
            raise SemanticCheckError(f"asked to attest round {round_id}; the ledger's next round is "
                                     f"{state.last_round + 1}, and every entry must be of it")
        digest = _digest(entries)
        self._attested = {r: known for r, known in self._attested.items() if r == round_id}
        if round_id in self._attested and self._attested[round_id][0] == digest:
            return self._attested[round_id][1]
        assert ledger.head is not None  # a round follows genesis
        ledger.propose(entries, time=ledger.head.time)  # signatures, registry and contracts; writes nothing
        check_round_randomness(entries, genesis=GenesisRecord.of(ledger.genesis()), blobs=ledger.blobs,
                               where=f"round {round_id}")
        view = self.check_round(entries, ledger)
        base_quality = self._quality_ppm(get_model(ledger.blobs, view.opening.base_model_cid))
        quality = self._quality_ppm(get_model(ledger.blobs, view.closing.new_model_cid))
        tolerance = round(self.settings.quality_tolerance * PPM)
        verdict = "accept" if quality >= base_quality - tolerance else "reject"
        attestation = self.entry(ATTESTATION, view.round, Attestation(
            validator=self.name, model_cid=view.closing.new_model_cid, quality_ppm=quality,
            verdict=verdict).to_json())
        self._attested[view.round] = (digest, attestation)
        return attestation

    def _load_cosigned(self) -> tuple[int, str] | None:
        record = self.kept(COSIGNED_FILE)
        if record is None:
            return None  # has cosigned no block since genesis
        try:
            parsed = json.loads(record)
            return int(parsed["height"]), str(parsed["header_sha256"])
        except (ValueError, KeyError, TypeError) as exc:
            # Fail closed: forgetting what it signed would let it sign a conflicting block.
            raise KeyringError(f"{self.name} {COSIGNED_FILE}: unreadable record of the last cosigned block: "
                               f"{exc}") from None

    def _remember_cosigned(self, header: BlockHeader) -> None:
        """Refuse a second, different header at a height already cosigned (or an older
        height), then remember this one before signing it: otherwise a proposer could collect
        a quorum for two conflicting blocks at one height, a fork of honest signatures."""
        digest = header.hash().hex()
        if self._cosigned is not None:
            height, cosigned = self._cosigned
            if header.height < height or (header.height == height and digest != cosigned):
                raise SemanticCheckError(f"block {header.height}: this validator has already cosigned another "
                                         f"header at height {height}; it signs one block per height")
        self._cosigned = (header.height, digest)
        self.keep(COSIGNED_FILE, json.dumps({"height": header.height, "header_sha256": digest}).encode())

    def cosign_header(self, header: BlockHeader, entries: Sequence[Entry], ledger: Ledger, *,
                      proposer_signature: bytes) -> bytes:
        """Sign ``header`` only if the coordinator proposed it (``proposer_signature``),
        replaying the contracts over ``entries`` gives that header, any round the block
        closes carries this validator's own attestation of exactly those round entries,
        and it has signed no other header at that height."""
        # The genesis block names the coordinator's key itself.
        genesis = GenesisRecord.of(ledger.genesis() if ledger.size else entries[0])
        genesis.coordinator.key().verify(proposer_signature, proposal_message(header))
        if not ledger.size and FederationSettings.from_json(genesis.settings).round_randomness != RANDOMNESS_BEACON:
            # Omitting the rule would make every seed the coordinator's choice (the legacy rule).
            raise SemanticCheckError(f"block {header.height}: a new genesis must name round_randomness "
                                     f"{RANDOMNESS_BEACON!r}")
        replayed = ledger.propose(entries, time=header.time)
        if replayed.header.signing_bytes() != header.signing_bytes():
            raise SemanticCheckError(f"block {header.height}: the proposed header is not what the entries give")
        if ledger.size:  # the genesis block opens no round
            check_round_randomness(entries, genesis=genesis, blobs=ledger.blobs, where=f"block {header.height}")
        mine = self.identity.public.key_id_hex
        for close in (e for e in entries if e.type == ROUND_CLOSE):
            own = [e for e in entries if e.type == ATTESTATION and e.author == mine and e.round == close.round]
            if not own:
                raise SemanticCheckError(f"block {header.height}: closes a round this validator has not checked")
            round_entries = [e for e in entries if e.round == close.round and e.type != ATTESTATION]
            # The attestation binds only the model, so the round's entries as the block has
            # them (its close: ε claims, survivors, aggregate) are attested here: a block
            # whose close was swapped after the attestations fails the checks, and one that
            # passes gives this same (deterministic) attestation. Free when they are the
            # entries it attested; checked in full otherwise (e.g. after a restart).
            if self.attest(round_entries, ledger).to_bytes() != own[0].to_bytes():
                raise SemanticCheckError(f"block {header.height}: closes round {close.round} with entries this "
                                         f"validator does not attest as they are")
        self._remember_cosigned(header)
        return self.identity.sign(header.signing_bytes())
