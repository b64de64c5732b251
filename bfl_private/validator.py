"""Validators: check a round themselves, attest the new model's quality, then co-sign.

Proof-of-Quality: a validator co-signs a block only after it has

1. replayed the contracts over the block's entries and reached the same header;
2. recomputed the round's aggregate from the committed blobs and the transcript, the new
   model from the previous one, and every cumulative ε claim (``round_checks``);
3. evaluated the previous and the new model on its own held-out data.

Its attestation carries its quality figure (accuracy in parts per million) and its verdict:
``accept`` unless the new model is worse than the previous one by more than the genesis
tolerance. The contracts advance the model only if a quorum accepts.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .artifacts import get_model
from .data import Split
from .federation import accuracy
from .keyring import KeyringError
from .ledger.blocks import BlockHeader
from .ledger.entries import ATTESTATION, ROUND_CLOSE, Entry
from .ledger.errors import SemanticCheckError
from .ledger.store import Ledger
from .parties import ValidatorParty
from .round_checks import (
    PaillierKeyPin,
    PrivacyHistories,
    RoundView,
    check_round_aggregate,
    check_round_model,
    registered_records,
)
from .settings import FederationSettings

PPM = 1_000_000
COSIGNED_FILE = "last-cosigned.json"
"""In the validator's folder: the height and header hash of the last block it cosigned."""


class Validator(ValidatorParty):
    """One validator, built from its own folder ``DIR/parties/<name>/``: its keys, and the
    last block it cosigned, so that no restart lets it sign two blocks at one height (see
    :mod:`bfl_private.parties`)."""

    def __init__(self, directory: Path, name: str, holdout: Split, *, settings: FederationSettings,
                 n_features: int, n_classes: int) -> None:
        super().__init__(directory, name)
        self._cosigned = self._load_cosigned()
        self.holdout = holdout
        self.settings = settings
        self.n_features = n_features
        self.n_classes = n_classes
        self.histories = PrivacyHistories()
        self.paillier_key = PaillierKeyPin()

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
        return self.entry(ATTESTATION, view.round, {
            "validator": self.identity.name,
            "model_cid": view.close.payload["new_model_cid"],
            "quality_ppm": quality,
            "verdict": verdict,
        })

    def _load_cosigned(self) -> tuple[int, str] | None:
        with self._acting():
            if not self._keys.holds(COSIGNED_FILE):
                return None  # has cosigned no block since genesis
            record = self._keys.load(COSIGNED_FILE)
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
        with self._acting():
            self._keys.store(COSIGNED_FILE, json.dumps({"height": header.height, "header_sha256": digest}).encode())

    def cosign_header(self, header: BlockHeader, entries: Sequence[Entry], ledger: Ledger) -> bytes:
        """Sign ``header`` only if replaying the contracts over ``entries`` gives that header,
        any round the block closes carries this validator's own attestation (it checked it),
        and it has signed no other header at that height."""
        replayed = ledger.propose(entries, time=header.time)
        if replayed.header.signing_bytes() != header.signing_bytes():
            raise SemanticCheckError(f"block {header.height}: the proposed header is not what the entries give")
        mine = self.identity.public.key_id_hex
        if any(e.type == ROUND_CLOSE for e in entries) and not any(
            e.type == ATTESTATION and e.author == mine for e in entries
        ):
            raise SemanticCheckError(f"block {header.height}: closes a round this validator has not checked")
        self._remember_cosigned(header)
        return self.identity.sign(header.signing_bytes())
