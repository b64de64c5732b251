"""Dealer-free threshold Paillier keys from TNO's distributed key generation."""
from __future__ import annotations

import dataclasses
import itertools
import math

import gmpy2
import pytest
from bfl_private.protocols.errors import ConfigurationError, MalformedInput, TooManyDropouts
from bfl_private.protocols.paillier_dkg import check_verification_keys, generate_shares
from bfl_private.protocols.threshold_paillier import (
    DISTRIBUTED,
    BadPartialDecryption,
    KeyShare,
    combine,
    partial_decrypt,
)
from phe.paillier import PaillierPublicKey

VALIDATORS = [f"validator-{i}" for i in range(4)]
CONTEXT = b"round 1"


@pytest.fixture(scope="module")
def shares() -> list[KeyShare]:
    return generate_shares(VALIDATORS, bits=256, corruption_threshold=1)  # test size: fast, insecure


@pytest.mark.slow
def test_distributed_key_is_recorded_as_such_with_a_quorum_of_2t_plus_1(shares):
    key = shares[0].public_key
    assert key.key_generation == DISTRIBUTED == "distributed-tno-passive"
    assert key.quorum == 3 and sorted(key.parties) == VALIDATORS and key.n.bit_length() >= 256
    assert sorted(s.party for s in shares) == VALIDATORS and all(s.public_key == key for s in shares)


@pytest.mark.slow
def test_every_quorum_decrypts_phe_ciphertexts_and_their_sums(shares):
    key = shares[0].public_key
    public = PaillierPublicKey(key.n)
    values = [0, 1, 12345, public.n - 1]
    ciphertexts = [public.raw_encrypt(m) for m in values]
    total = ciphertexts[1] * ciphertexts[2] % public.nsquare
    partials = [partial_decrypt(s, [*ciphertexts, total], context=CONTEXT) for s in shares]
    for subset in itertools.combinations(partials, key.quorum):
        assert combine(key, [*ciphertexts, total], list(subset), context=CONTEXT) == [*values, 12346]


@pytest.mark.slow
def test_fewer_than_a_quorum_cannot_decrypt_and_a_tampered_partial_is_named(shares):
    key = shares[0].public_key
    ciphertexts = [PaillierPublicKey(key.n).raw_encrypt(7)]
    partials = [partial_decrypt(s, ciphertexts, context=CONTEXT) for s in shares]
    with pytest.raises(TooManyDropouts):
        combine(key, ciphertexts, partials[:2], context=CONTEXT)
    victim = partials[1]
    shifted = dataclasses.replace(victim, values=(victim.values[0] * (1 + key.n) % key.nsquare,))
    with pytest.raises(BadPartialDecryption) as caught:
        combine(key, ciphertexts, [partials[0], shifted, partials[2]], context=CONTEXT)
    assert caught.value.party == victim.party


@pytest.mark.slow
def test_a_verification_key_not_of_its_share_is_caught(shares):
    key = shares[0].public_key
    check_verification_keys(key)  # the honest keys are one sharing
    lie = int(gmpy2.powmod(key.base, key.delta * (shares[0].share + 1), key.nsquare))
    forged = dataclasses.replace(key, verification_keys=(lie, *key.verification_keys[1:]))
    with pytest.raises(MalformedInput, match="not of one sharing"):
        check_verification_keys(forged)


@pytest.mark.slow
def test_integer_shares_of_either_sign_survive_serialisation(shares):
    for share in shares:
        assert KeyShare.from_private_bytes(share.to_private_bytes()) == share
    assert math.gcd(shares[0].public_key.theta, shares[0].public_key.n) == 1


def test_too_few_parties_for_the_threshold_are_refused():
    with pytest.raises(ConfigurationError, match="at least 5"):
        generate_shares(VALIDATORS, bits=512, corruption_threshold=2)
