"""A lying dealer or coordinator: the federation's Paillier key must be proven and kept.

The trusted dealer that makes the validators' threshold key also proves its modulus well
formed (GRSB 2019); every Paillier round announces the key with that proof at the size
genesis fixes, the first such round pins it, and validators and the verifier refuse a
round whose key is unproven or another.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from bfl_private.audit import audit
from bfl_private.coordinator import Federation
from bfl_private.ledger.entries import ROUND_OPEN
from bfl_private.parties import PAILLIER_DEALER, PAILLIER_MODULUS_PROOF_FILE, PAILLIER_SHARE_FILE, party_folder
from bfl_private.protocols import paillier_modulus
from bfl_private.protocols.paillier_modulus import ModulusProof
from bfl_private.settings import FederationSettings, ProtocolSettings, validator_ids
from bfl_private.validator_service import QuorumNotReached


def _settings() -> FederationSettings:
    return dataclasses.replace(FederationSettings(n_clients=3), protocol=ProtocolSettings(paillier_key_bits=2048))


def _round(fed: Federation):
    plan = fed.plan(epsilon=0.5, rounds=1, skip_exhausted=False)
    return fed.run_round(plan, protocol="paillier", dropout=0.0, malicious=0, rng=np.random.default_rng())


def test_a_paillier_round_announces_a_proven_key_of_the_policy_size(tmp_path: Path) -> None:
    fed = Federation.create(tmp_path / "fed", _settings(), model_seed=0)
    try:
        _round(fed)
        opened = next(e for e in fed.ledger.entries() if e.type == ROUND_OPEN)
        params = opened.payload["protocol_params"]
        assert int(params["public_key"]["n"], 16).bit_length() == 2048  # the genesis policy
        assert params["modulus_proof"]["scheme"] == "grsb19-nth-roots/v1"
    finally:
        fed.close()
    assert audit(tmp_path / "fed").ok


def test_a_key_whose_proof_fails_is_refused_by_the_validators(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    honest = paillier_modulus.prove_modulus

    def forged(p: int, q: int) -> ModulusProof:  # a dealer that publishes a proof it cannot make
        proof = honest(p, q)
        return ModulusProof((proof.roots[0] + 1, *proof.roots[1:]))

    monkeypatch.setattr(paillier_modulus, "prove_modulus", forged)
    fed = Federation.create(tmp_path / "fed", _settings(), model_seed=0)
    try:
        with pytest.raises(QuorumNotReached, match="announced Paillier key is not sound"):
            _round(fed)
    finally:
        fed.close()


def test_a_later_round_under_another_key_is_refused(tmp_path: Path) -> None:
    fed = Federation.create(tmp_path / "fed", _settings(), model_seed=0)
    try:
        _round(fed)
        # The dealer's proof and the validators' shares gone, the dealer deals a fresh key.
        (party_folder(fed.directory, PAILLIER_DEALER) / PAILLIER_MODULUS_PROOF_FILE).unlink()
        for validator in validator_ids(4):
            (party_folder(fed.directory, validator) / PAILLIER_SHARE_FILE).unlink()
        with pytest.raises(QuorumNotReached, match="another key than the federation's"):
            _round(fed)
    finally:
        fed.close()
