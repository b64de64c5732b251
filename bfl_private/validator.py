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

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .artifacts import get_model
from .data import FederatedDataset, Split
from .federation import accuracy
from .flower.errors import StageMessageError
from .ledger.beacon import beacon_message, opening_digest
from .ledger.entries import ATTESTATION, ROUND_CLOSE, ROUND_OPEN, Entry
from .ledger.errors import SemanticCheckError, VerificationError
from .ledger.identity import SigningIdentity, VerifyingKey
from .ledger.store import Ledger, ProposedBlock
from .participant_checks import ParticipantView, check_opening
from .primitives.errors import BflError
from .round_checks import (
    PaillierKeyPin,
    PrivacyHistories,
    RoundView,
    check_round_aggregate,
    check_round_model,
    check_round_randomness,
    registered_records,
)
from .settings import FederationSettings

PPM = 1_000_000
BEACON_MEMORY_VERSION = 1


class BeaconRefused(BflError):
    """A validator does not sign the beacon of a round opening (see :meth:`Validator.sign_beacon`)."""


class SecondOpening(BeaconRefused):
    """A second, different opening of a round id whose beacon this validator already signed:
    signing it would let the coordinator choose between two seeds."""


class BeaconMemory:
    """(federation id, round id) -> SHA-256 of the one opening this validator signed a beacon
    for, kept in a JSON file written before the signature leaves, so a restart cannot be
    used to sign a second opening of the same round. Keyed by federation too, so one file
    may serve a validator of several federations."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def signed(self) -> dict[tuple[str, int], str]:
        if not self.path.exists():
            return {}
        try:
            record = json.loads(self.path.read_text(encoding="utf-8"))
            if record.get("v") != BEACON_MEMORY_VERSION or not isinstance(record.get("openings"), dict):
                raise ValueError(f"not a version {BEACON_MEMORY_VERSION} beacon record")
            return {(key.rsplit("/", 1)[0], int(key.rsplit("/", 1)[1])): str(digest)
                    for key, digest in record["openings"].items()}
        except (OSError, ValueError, TypeError, AttributeError, IndexError) as exc:
            raise BeaconRefused(f"{self.path}: unreadable beacon record, nothing is signed: {exc}") from exc

    def remember(self, federation_id: str, round_id: int, digest: str) -> None:
        openings = {**self.signed(), (federation_id, round_id): digest}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump({"v": BEACON_MEMORY_VERSION,
                       "openings": {f"{f}/{r}": h for (f, r), h in sorted(openings.items())}}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)


class Validator:
    def __init__(self, identity: SigningIdentity, holdout: Split, *, settings: FederationSettings, data: FederatedDataset,
                 beacon_memory: Path) -> None:
        """``beacon_memory``: this validator's file of the round openings it signed beacons for."""
        self.identity = identity
        self.holdout = holdout
        self.settings = settings
        self.n_features = data.n_features
        self.n_classes = data.n_classes
        self.histories = PrivacyHistories()
        self.paillier_key = PaillierKeyPin()
        self.beacons = BeaconMemory(beacon_memory)

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
            opening.verify(VerifyingKey.from_vkey(ledger.genesis().payload["coordinator"]["vkey"]), where=where)
            if state.open_round is not None or opening.round != state.last_round + 1:
                raise BeaconRefused(f"{where}: the ledger's next round is {state.last_round + 1}"
                                    f"{' (one is in progress)' if state.open_round is not None else ''}")
            check_opening(opening, settings=self.settings, participant=self.identity.name,
                          view=ParticipantView(model_cid=state.model_cid, last_round=state.last_round))
        except (StageMessageError, VerificationError) as exc:  # a refusal by name, or a malformed opening
            raise BeaconRefused(f"{where}: {type(exc).__name__}: {exc}") from exc
        digest = opening_digest(opening)
        federation = state.federation_id
        signed = self.beacons.signed().get((federation, opening.round))
        if signed is not None and signed != digest.hex():
            raise SecondOpening(f"{where}: already signed the beacon of another opening of this round "
                                f"({signed[:16]}...); one opening per round id")
        if signed is None:
            self.beacons.remember(federation, opening.round, digest.hex())
        return self.identity.sign(beacon_message(federation, opening.round, digest))

    def _quality_ppm(self, params: np.ndarray) -> int:
        value = accuracy(self.settings.training.model, params, self.holdout,
                         n_features=self.n_features, n_classes=self.n_classes)
        return round(value * PPM)

    def check_round(self, entries: Sequence[Entry], ledger: Ledger) -> RoundView:
        """Recompute the round closed in ``entries`` against the ledger so far."""
        view = RoundView.of(entries)
        if view is None:
            raise SemanticCheckError("no closed round to check among the proposed entries")
        check_round_aggregate(view, ledger.blobs, state=ledger.state, genesis=ledger.genesis(),
                              paillier_key=self.paillier_key.sync(ledger).n)
        check_round_model(view, ledger.blobs, settings=self.settings, records=registered_records(ledger.state))
        self.histories.sync(ledger).extended(entries).check_claims(entries)
        return view

    def attest(self, entries: Sequence[Entry], ledger: Ledger) -> Entry:
        """Check the round, then sign this validator's quality figure and verdict."""
        view = self.check_round(entries, ledger)
        base_quality = self._quality_ppm(get_model(ledger.blobs, view.opened.payload["base_model_cid"]))
        quality = self._quality_ppm(get_model(ledger.blobs, view.close.payload["new_model_cid"]))
        tolerance = round(self.settings.quality_tolerance * PPM)
        verdict = "accept" if quality >= base_quality - tolerance else "reject"
        return Entry.create(self.identity, ATTESTATION, view.round, {
            "validator": self.identity.name,
            "model_cid": view.close.payload["new_model_cid"],
            "quality_ppm": quality,
            "verdict": verdict,
        })

    def cosign(self, proposed: ProposedBlock, ledger: Ledger) -> bytes:
        """Sign the header only if replaying the contracts gives the same header and any
        round the block closes carries this validator's own attestation (it checked it)."""
        replayed = ledger.propose(proposed.entries, time=proposed.header.time)
        if replayed.header.signing_bytes() != proposed.header.signing_bytes():
            raise SemanticCheckError(f"block {proposed.header.height}: the proposed header is not what the entries give")
        check_round_randomness(proposed.entries, genesis=ledger.genesis(), blobs=ledger.blobs,
                               where=f"block {proposed.header.height}")
        mine = self.identity.public.key_id_hex
        if any(e.type == ROUND_CLOSE for e in proposed.entries) and not any(
            e.type == ATTESTATION and e.author == mine for e in proposed.entries
        ):
            raise SemanticCheckError(f"block {proposed.header.height}: closes a round this validator has not checked")
        return self.identity.sign(proposed.header.signing_bytes())
