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

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .artifacts import get_model
from .data import FederatedDataset, Split
from .federation import accuracy
from .ledger.entries import ATTESTATION, ROUND_CLOSE, Entry
from .ledger.errors import SemanticCheckError
from .ledger.store import Ledger, ProposedBlock
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


class Validator(ValidatorParty):
    """One validator, built from its own folder ``DIR/parties/<name>/`` (its keys and any
    per-validator state live there, see :mod:`bfl_private.parties`)."""

    def __init__(self, directory: Path, name: str, holdout: Split, *, settings: FederationSettings,
                 data: FederatedDataset) -> None:
        super().__init__(directory, name)
        self.holdout = holdout
        self.settings = settings
        self.n_features = data.n_features
        self.n_classes = data.n_classes
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

    def cosign(self, proposed: ProposedBlock, ledger: Ledger) -> bytes:
        """Sign the header only if replaying the contracts gives the same header and any
        round the block closes carries this validator's own attestation (it checked it)."""
        replayed = ledger.propose(proposed.entries, time=proposed.header.time)
        if replayed.header.signing_bytes() != proposed.header.signing_bytes():
            raise SemanticCheckError(f"block {proposed.header.height}: the proposed header is not what the entries give")
        mine = self.identity.public.key_id_hex
        if any(e.type == ROUND_CLOSE for e in proposed.entries) and not any(
            e.type == ATTESTATION and e.author == mine for e in proposed.entries
        ):
            raise SemanticCheckError(f"block {proposed.header.height}: closes a round this validator has not checked")
        return self.identity.sign(proposed.header.signing_bytes())
