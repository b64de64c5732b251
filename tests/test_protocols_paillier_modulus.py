"""The Paillier modulus proof (GRSB 2019): an honest key passes, a malformed modulus cannot."""
from __future__ import annotations

import gmpy2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from phe.paillier import generate_paillier_keypair

from bfl_private.protocols.paillier import PaillierKeyHolder, PublishedKey, public_key_to_json
from bfl_private.protocols.paillier_modulus import (
    ALPHA,
    ROOTS,
    ModulusProof,
    ModulusProofError,
    challenges,
    prove_modulus,
    verify_modulus,
)
from bfl_private.settings import ProtocolSettings, SettingsError


@pytest.fixture(scope="module")
def holder() -> PaillierKeyHolder:
    return PaillierKeyHolder.generate(bits=2048)


def _prime(bits: int, seed: int) -> int:
    return int(gmpy2.next_prime(gmpy2.mpz(1 << (bits - 1)) + seed * 7919))


def test_an_honest_key_proves_and_round_trips_through_json(holder: PaillierKeyHolder) -> None:
    published = holder.publish()
    assert len(published.proof.roots) == ROOTS == 7 and ALPHA ** ROOTS >= 2**128
    again = PublishedKey.from_json(published.to_json(), key_bits=2048)
    assert again.public_key.n == holder.public_key.n and again.proof == published.proof


def test_the_key_size_is_genesis_policy(holder: PaillierKeyHolder) -> None:
    with pytest.raises(ModulusProofError.__mro__[1], match="genesis policy is 3072"):
        PublishedKey.from_json(holder.publish().to_json(), key_bits=3072)
    with pytest.raises(SettingsError, match="paillier_key_bits"):
        ProtocolSettings(paillier_key_bits=1024)
    assert ProtocolSettings().paillier_key_bits == 3072


def test_p_squared_q_cannot_be_proven() -> None:
    """The issue's attack: with n = p^2 q a key holder opened one ciphertext to another total."""
    p, q = _prime(512, 1), _prime(1024, 2)
    n = p * p * q
    with pytest.raises(ModulusProofError, match="two distinct primes"):
        prove_modulus(p * p, q)  # the honest prover's own check
    # Whatever roots a cheater publishes, they are not n-th roots of the hashed challenges
    # (at most 1/p of Z_n^* has any): the best it can do is guess.
    guesses = ModulusProof(tuple(pow(rho, 65537, n) for rho in challenges(n)))
    with pytest.raises(ModulusProofError, match="not an n-th root"):
        verify_modulus(n, guesses)


@settings(max_examples=20, deadline=None)
@given(index=st.integers(0, ROOTS - 1), delta=st.integers(1, 2**64))
def test_any_changed_root_fails(holder: PaillierKeyHolder, index: int, delta: int) -> None:
    proof = holder.publish().proof
    roots = list(proof.roots)
    roots[index] = (roots[index] + delta) % holder.public_key.n
    with pytest.raises(ModulusProofError):
        verify_modulus(holder.public_key.n, ModulusProof(tuple(roots)))


def test_a_proof_for_another_modulus_fails(holder: PaillierKeyHolder) -> None:
    other = PaillierKeyHolder.generate(bits=2048)
    with pytest.raises(ModulusProofError, match="not an n-th root"):
        verify_modulus(holder.public_key.n, other.publish().proof)


def test_prime_even_and_small_factor_moduli_are_refused(holder: PaillierKeyHolder) -> None:
    proof = holder.publish().proof
    with pytest.raises(ModulusProofError, match="prime"):
        verify_modulus(_prime(2048, 3), proof)
    with pytest.raises(ModulusProofError, match="odd"):
        verify_modulus(holder.public_key.n * 2, proof)
    with pytest.raises(ModulusProofError, match="below 2"):
        verify_modulus(holder.public_key.n * 65537, proof)


@pytest.mark.parametrize("record, why", [
    (None, "must be a JSON object"),
    ({"public_key": {"n": "zz"}}, "hex"),
    ("proof", "must be a grsb19"),
    ({"scheme": "grsb19-nth-roots/v1", "alpha_bits": 19, "roots": ["ab"] * 6}, "exactly 7"),
    ({"scheme": "grsb19-nth-roots/v1", "alpha_bits": 19, "roots": ["AB"] * 7}, "lower-case hex"),
    ({"scheme": "grsb19-nth-roots/v1", "alpha_bits": 12, "roots": ["ab"] * 7}, "alpha_bits 19"),
])
def test_malformed_records_are_refused_by_name(holder: PaillierKeyHolder, record, why: str) -> None:
    published = holder.publish().to_json()
    if record is None:
        data = None
    elif isinstance(record, dict) and "public_key" in record:
        data = {**published, **record}
    else:
        data = {**published, "modulus_proof": record}
    with pytest.raises(ModulusProofError.__mro__[1], match=why):
        PublishedKey.from_json(data, key_bits=2048)


def test_phe_keys_prove_too() -> None:
    public, private = generate_paillier_keypair(n_length=2048)
    proof = prove_modulus(private.p, private.q)
    verify_modulus(public.n, proof)
    PublishedKey.from_json({"public_key": public_key_to_json(public), "modulus_proof": proof.to_json()}, key_bits=2048)
