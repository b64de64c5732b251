"""A lying Paillier key holder or coordinator: the genesis key must be sound and used.

The key holder publishes its public key and the proof that the modulus is well formed
(GRSB 2019) in genesis; the verifier checks the proof and that every Paillier round ran
under that very key, whose size genesis policy fixes (3072 bits by default).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from bfl_private.audit import audit
from bfl_private.coordinator import Federation
from bfl_private.ledger.errors import SemanticCheckError
from bfl_private.protocol_setup import PAILLIER_KEY
from bfl_private.protocols.paillier import PaillierKeyHolder
from bfl_private.protocols.paillier_modulus import ModulusProof
from bfl_private.settings import FederationSettings, ProtocolSettings


def _settings() -> FederationSettings:
    return dataclasses.replace(FederationSettings(n_clients=3), protocol=ProtocolSettings(paillier_key_bits=2048))


def test_genesis_publishes_a_proven_key_of_the_policy_size(tmp_path: Path) -> None:
    fed = Federation.create(tmp_path / "fed", FederationSettings(n_clients=3), model_seed=0)
    try:
        published = fed.ledger.genesis().payload["paillier"]
        assert int(published["public_key"]["n"], 16).bit_length() == 3072  # the default policy
        assert published["modulus_proof"]["scheme"] == "grsb19-nth-roots/v1"
    finally:
        fed.close()
    assert audit(tmp_path / "fed").ok


def test_a_genesis_key_whose_proof_fails_fails_the_verifier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    honest = PaillierKeyHolder.publish

    def forged(self: PaillierKeyHolder):  # a key holder that publishes a proof it cannot make
        published = honest(self)
        roots = (published.proof.roots[0] + 1, *published.proof.roots[1:])
        return dataclasses.replace(published, proof=ModulusProof(roots))

    monkeypatch.setattr(PaillierKeyHolder, "publish", forged)
    Federation.create(tmp_path / "fed", _settings(), model_seed=0).close()
    report = audit(tmp_path / "fed").report
    assert not report.ok and report.failure.number == 8
    assert "genesis: the published Paillier key is not sound" in report.failure.detail


def test_a_round_under_another_key_than_genesis_published_is_refused(tmp_path: Path) -> None:
    fed = Federation.create(tmp_path / "fed", _settings(), model_seed=0)
    try:
        # The key holder (or whoever holds its folder) swaps in a key of its own making.
        fed.keys.store(PAILLIER_KEY, PaillierKeyHolder.generate(bits=2048).to_private_bytes())
        plan = fed.plan(epsilon=1.0, rounds=1, skip_exhausted=False)
        with pytest.raises(SemanticCheckError, match="other than the one genesis published"):
            fed.run_round(plan, protocol="paillier", dropout=0.0, malicious=0, rng=np.random.default_rng())
    finally:
        fed.close()
