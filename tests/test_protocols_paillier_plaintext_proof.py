"""Proofs of plaintext knowledge: bound to round and sender, so a replay cannot carry one."""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from phe.paillier import generate_paillier_keypair

from bfl_private.protocols.paillier import key_id
from bfl_private.protocols.paillier_plaintext_proof import (
    PlaintextProofError,
    encrypt_with_proof,
    submission_context,
    verify_plaintext_proof,
)

PUBLIC, PRIVATE = generate_paillier_keypair(n_length=1024)
CONTEXT = submission_context(round_id=3, client="hospital-01", key_fingerprint=key_id(PUBLIC))


@settings(max_examples=20, deadline=None)
@given(plaintext=st.integers(0, PUBLIC.n - 1), index=st.integers(0, 50))
def test_an_honest_proof_verifies_and_the_ciphertext_decrypts(plaintext: int, index: int) -> None:
    ciphertext, proof = encrypt_with_proof(PUBLIC, plaintext, context=CONTEXT, index=index)
    verify_plaintext_proof(PUBLIC, ciphertext, proof, context=CONTEXT, index=index)
    assert PRIVATE.raw_decrypt(ciphertext) == plaintext


@pytest.mark.parametrize("other", [
    submission_context(round_id=4, client="hospital-01", key_fingerprint=key_id(PUBLIC)),  # a later round
    submission_context(round_id=3, client="hospital-02", key_fingerprint=key_id(PUBLIC)),  # another sender
])
def test_a_replay_in_another_round_or_name_fails(other: bytes) -> None:
    ciphertext, proof = encrypt_with_proof(PUBLIC, 42, context=CONTEXT, index=0)
    with pytest.raises(PlaintextProofError, match="does not verify"):
        verify_plaintext_proof(PUBLIC, ciphertext, proof, context=other, index=0)
    with pytest.raises(PlaintextProofError):
        verify_plaintext_proof(PUBLIC, ciphertext, proof, context=CONTEXT, index=1)  # moved to another slot


def test_a_re_randomised_replay_fails() -> None:
    ciphertext, proof = encrypt_with_proof(PUBLIC, 42, context=CONTEXT, index=0)
    fresh, _ = encrypt_with_proof(PUBLIC, 0, context=CONTEXT, index=0)
    rerandomised = ciphertext * fresh % PUBLIC.nsquare  # same plaintext, new ciphertext
    with pytest.raises(PlaintextProofError):
        verify_plaintext_proof(PUBLIC, rerandomised, proof, context=CONTEXT, index=0)


@pytest.mark.parametrize("field", ["commitment", "z", "w"])
def test_a_changed_proof_value_fails(field: str) -> None:
    ciphertext, proof = encrypt_with_proof(PUBLIC, 7, context=CONTEXT, index=0)
    changed = dataclasses.replace(proof, **{field: getattr(proof, field) + 1})
    with pytest.raises(PlaintextProofError):
        verify_plaintext_proof(PUBLIC, ciphertext, changed, context=CONTEXT, index=0)
