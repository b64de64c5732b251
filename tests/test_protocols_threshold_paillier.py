"""Threshold Paillier: quorum decryption of phe ciphertexts, checkable partials, bad input."""
from __future__ import annotations

import dataclasses
import itertools
import json
import math

import gmpy2
import numpy as np
import pytest
from bfl_private.protocols.base import recompute_total
from bfl_private.protocols.errors import (
    DecryptionProofError,
    MalformedInput,
    TooManyDropouts,
    WrongKey,
)
from bfl_private.protocols.paillier import PaillierKeyHolder, PaillierProtocol
from bfl_private.protocols.paillier_committee import ShareHolder, ValidatorCommittee
from bfl_private.protocols.quantize import FixedPointCodec
from bfl_private.protocols.threshold_paillier import (
    DEALER,
    BadPartialDecryption,
    KeyShare,
    PartialDecryption,
    ThresholdPublicKey,
    combine,
    deal_key,
    deal_shares,
    interpolate,
    partial_decrypt,
    safe_prime,
    safe_prime_pair,
    verify_partial,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from phe.paillier import PaillierPrivateKey, PaillierPublicKey

BITS = 1024  # test-size keys
PARTIES = [f"validator-{i}" for i in range(5)]
QUORUM = 3
CONTEXT = b"round 7"


@pytest.fixture(scope="module")
def primes() -> tuple[int, int]:
    return safe_prime_pair(BITS)


@pytest.fixture(scope="module")
def keypair(primes) -> tuple[PaillierPublicKey, PaillierPrivateKey]:
    p, q = primes
    public = PaillierPublicKey(p * q)
    return public, PaillierPrivateKey(public, p, q)


@pytest.fixture(scope="module")
def shares(primes) -> list[KeyShare]:
    return deal_shares(*primes, parties=PARTIES, quorum=QUORUM)


def _partials(shares, ciphertexts, context=CONTEXT):
    return [partial_decrypt(s, ciphertexts, context=context) for s in shares]


def test_safe_primes_are_safe():
    p = safe_prime(256)
    assert p.bit_length() == 256 and gmpy2.is_prime(p) and gmpy2.is_prime((p - 1) // 2)


def test_every_quorum_decrypts_phe_ciphertexts_to_what_phe_decrypts(keypair, shares):
    public, private = keypair
    ciphertexts = [public.encrypt(m).ciphertext(be_secure=True) for m in (31337, 0)] + [public.raw_encrypt(public.n - 1)]
    partials = _partials(shares, ciphertexts)
    key = shares[0].public_key
    expected = [private.raw_decrypt(c) for c in ciphertexts]
    assert expected == [31337, 0, public.n - 1]
    for subset in itertools.combinations(partials, QUORUM):
        assert combine(key, ciphertexts, list(subset), context=CONTEXT) == expected


def test_key_records_its_provenance_as_a_trusted_dealer(shares):
    assert shares[0].public_key.key_generation == DEALER == "trusted-dealer"


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sums=st.lists(st.lists(st.integers(min_value=0, max_value=2**200), min_size=1, max_size=5),
                     min_size=1, max_size=4),
       data=st.data())
def test_homomorphic_sums_decrypt_exactly_from_any_quorum(keypair, shares, sums, data):
    public, _ = keypair
    totals = []
    for values in sums:
        total = 1
        for value in values:
            total = total * public.raw_encrypt(value) % public.nsquare
        totals.append(total)
    subset = data.draw(st.sets(st.sampled_from(range(len(PARTIES))), min_size=QUORUM, max_size=len(PARTIES)))
    partials = _partials([shares[i] for i in sorted(subset)], totals)
    assert combine(shares[0].public_key, totals, partials, context=CONTEXT) == [sum(v) % public.n for v in sums]


def test_fewer_than_a_quorum_cannot_decrypt(keypair, shares):
    public, _ = keypair
    ciphertexts = [public.raw_encrypt(42)]
    partials = _partials(shares[: QUORUM - 1], ciphertexts)
    with pytest.raises(TooManyDropouts, match="quorum of 3") as caught:
        combine(shares[0].public_key, ciphertexts, partials, context=CONTEXT)
    assert (caught.value.required, caught.value.available, caught.value.stage) == (QUORUM, QUORUM - 1, "decrypt")


def test_below_quorum_shares_interpolated_as_if_a_quorum_do_not_give_the_plaintext(keypair, shares):
    """The algebra, not just the refusal: combining quorum-1 partials with the coefficients
    of that smaller set yields something that is not a decryption at all."""
    public, _ = keypair
    ciphertexts = [public.raw_encrypt(42)]
    key = dataclasses.replace(shares[0].public_key, quorum=QUORUM - 1)
    partials = _partials(shares[: QUORUM - 1], ciphertexts)  # valid partials, just too few
    with pytest.raises(DecryptionProofError, match="not of the form 1 \\+ k n"):
        interpolate(key, partials)


def test_a_duplicated_party_does_not_count_twice(keypair, shares):
    public, _ = keypair
    ciphertexts = [public.raw_encrypt(1)]
    partials = _partials(shares[:2], ciphertexts)
    with pytest.raises(MalformedInput, match="two partial decryptions from 'validator-0'"):
        combine(shares[0].public_key, ciphertexts, partials + partials[:1], context=CONTEXT)


@pytest.mark.parametrize("field", ["value", "last value", "challenge", "response", "dropped value", "huge response",
                                   "negative response"])
def test_a_tampered_partial_is_detected_and_its_party_named(keypair, shares, field):
    public, _ = keypair
    ciphertexts = [public.raw_encrypt(99), public.raw_encrypt(100), public.raw_encrypt(101)]
    partials = _partials(shares[:QUORUM], ciphertexts)
    victim = partials[1]
    shift = (1 + public.n)  # a valid-looking group element: shifts the plaintext by one
    if field == "value":
        tampered = dataclasses.replace(victim, values=(victim.values[0] * shift % public.nsquare, *victim.values[1:]))
    elif field == "last value":
        tampered = dataclasses.replace(victim, values=(*victim.values[:-1], victim.values[-1] * shift % public.nsquare))
    elif field == "dropped value":
        tampered = dataclasses.replace(victim, values=victim.values[:-1])
    elif field == "huge response":  # would cost the verifier a 10^6-bit exponentiation
        tampered = dataclasses.replace(victim, response=1 << 1_000_000)
    elif field == "negative response":
        tampered = dataclasses.replace(victim, response=-victim.response)
    else:
        tampered = dataclasses.replace(victim, **{field: getattr(victim, field) + 1})
    with pytest.raises(BadPartialDecryption, match="validator-1") as caught:
        combine(shares[0].public_key, ciphertexts, [partials[0], tampered, partials[2]], context=CONTEXT)
    assert caught.value.party == "validator-1"


def test_a_partial_made_with_a_wrong_share_fails_its_proof(keypair, shares):
    """A validator that lies about its share (so its partial would shift the plaintext) is caught."""
    public, _ = keypair
    ciphertexts = [public.raw_encrypt(5)]
    liar = object.__new__(KeyShare)  # bypass the constructor's own consistency check
    object.__setattr__(liar, "public_key", shares[2].public_key)
    object.__setattr__(liar, "party", shares[2].party)
    object.__setattr__(liar, "share", shares[2].share + 1)
    with pytest.raises(BadPartialDecryption, match="validator-2"):
        verify_partial(shares[0].public_key, ciphertexts, partial_decrypt(liar, ciphertexts, context=CONTEXT),
                       context=CONTEXT)


def test_a_partial_replayed_under_another_context_or_ciphertext_fails(keypair, shares):
    public, _ = keypair
    ciphertexts, others = [public.raw_encrypt(5)], [public.raw_encrypt(6)]
    partial = partial_decrypt(shares[0], ciphertexts, context=CONTEXT)
    with pytest.raises(BadPartialDecryption):
        verify_partial(shares[0].public_key, ciphertexts, partial, context=b"round 8")
    with pytest.raises(BadPartialDecryption):
        verify_partial(shares[0].public_key, others, partial, context=CONTEXT)


def test_a_partial_from_a_stranger_is_refused(keypair, shares):
    public, _ = keypair
    ciphertexts = [public.raw_encrypt(5)]
    partial = dataclasses.replace(partial_decrypt(shares[0], ciphertexts, context=CONTEXT), party="mallory")
    with pytest.raises(MalformedInput, match="'mallory' holds no share"):
        verify_partial(shares[0].public_key, ciphertexts, partial, context=CONTEXT)


@pytest.mark.parametrize("value", [0, -1, "n", "nsquare"])
def test_out_of_group_values_are_refused_by_name(keypair, shares, value):
    public, _ = keypair
    ciphertexts = [public.raw_encrypt(5)]
    partial = partial_decrypt(shares[0], ciphertexts, context=CONTEXT)
    bad = {"n": public.n, "nsquare": public.nsquare}.get(value, value)
    with pytest.raises(BadPartialDecryption, match="validator-0.*Z_"):
        verify_partial(shares[0].public_key, ciphertexts, dataclasses.replace(partial, values=(bad,)), context=CONTEXT)
    with pytest.raises(MalformedInput, match="ciphertext 0"):
        verify_partial(shares[0].public_key, [bad], partial, context=CONTEXT)
    with pytest.raises(MalformedInput, match="no ciphertexts"):
        partial_decrypt(shares[0], [], context=CONTEXT)


def test_keys_shares_and_partials_round_trip_through_json(keypair, shares):
    public, _ = keypair
    key = shares[0].public_key
    assert ThresholdPublicKey.from_json(json.loads(json.dumps(key.to_json()))) == key
    assert KeyShare.from_private_bytes(shares[3].to_private_bytes()) == shares[3]
    partial = partial_decrypt(shares[1], [public.raw_encrypt(3), public.raw_encrypt(4)], context=CONTEXT)
    assert PartialDecryption.from_json(json.loads(json.dumps(partial.to_json()))) == partial


def test_a_share_that_does_not_match_its_verification_key_is_refused(shares):
    record = json.loads(shares[1].to_private_bytes())
    record["share"] = format(shares[1].share + 1, "x")
    with pytest.raises(WrongKey, match="validator-1"):
        KeyShare.from_private_bytes(json.dumps(record).encode())


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.update(quorum=0), "quorum"),
    (lambda r: r.update(quorum=6), "quorum"),
    (lambda r: r.update(parties=["a", "a", "b", "c", "d"]), "distinct"),
    (lambda r: r["verification_keys"].pop(), "one verification key per party"),
    (lambda r: r["verification_keys"].__setitem__(0, "0"), "verification key of 'validator-0'"),
    (lambda r: r.update(theta="0"), "theta"),
    (lambda r: r.update(n="10"), "odd modulus"),
    (lambda r: r.update(n="XYZ"), "hex"),
    (lambda r: r.update(key_generation="magic"), "unknown key generation"),
    (lambda r: r.update(quorum=True), "integer"),
])
def test_malformed_public_keys_are_refused_with_a_reason(shares, mutate, message):
    record = shares[0].public_key.to_json()
    record = json.loads(json.dumps(record))
    mutate(record)
    with pytest.raises(MalformedInput, match=message):
        ThresholdPublicKey.from_json(record)


@pytest.mark.parametrize("data", [b"", b"[]", b"{}", b"\xff", b'{"format": "bfl-private/threshold-paillier-share/v1"}'])
def test_malformed_share_files_are_refused(data):
    with pytest.raises(MalformedInput):
        KeyShare.from_private_bytes(data)


def test_dealer_refuses_unsafe_primes_and_bad_quorums(keypair, primes):
    p, q = primes
    with pytest.raises(ValueError, match="distinct"):
        deal_shares(p, p, parties=PARTIES, quorum=2)
    plain = int(gmpy2.next_prime(p))
    while gmpy2.is_prime((plain - 1) // 2):
        plain = int(gmpy2.next_prime(plain))
    with pytest.raises(ValueError, match="safe primes"):
        deal_shares(plain, q, parties=PARTIES, quorum=2)
    with pytest.raises(ValueError, match="quorum"):
        deal_shares(p, q, parties=PARTIES, quorum=6)


def test_no_share_is_the_secret_exponent(keypair, shares):
    """With quorum >= 2 no s_i equals d = lambda (lambda^-1 mod n)."""
    _, private = keypair
    n = private.public_key.n
    lam = math.lcm(private.p - 1, private.q - 1)
    d = lam * int(gmpy2.invert(lam, n))
    assert all(s.share % (n * lam) != d for s in shares)


def test_quorum_of_one_is_plain_decryption_by_one_party(keypair, primes):
    public, _ = keypair
    single = deal_shares(*primes, parties=["only"], quorum=1)
    ciphertexts = [public.raw_encrypt(7)]
    assert combine(single[0].public_key, ciphertexts, _partials(single, ciphertexts), context=CONTEXT) == [7]


def test_deal_key_makes_a_modulus_of_the_asked_size():
    shares = deal_key(bits=512, parties=PARTIES[:3], quorum=2)
    assert shares[0].public_key.n.bit_length() == 512


# ---------------------------------------------------------------- the committee in a Paillier round


class TamperingHolder(ShareHolder):
    """A validator that publishes a partial for a plaintext shifted by one."""

    def partial_decryptions(self, submissions, *, layout, claimed, round_id):
        honest = super().partial_decryptions(submissions, layout=layout, claimed=claimed, round_id=round_id)
        n2 = self.share.public_key.nsquare
        shifted = honest.values[0] * (1 + self.share.public_key.n) % n2
        return dataclasses.replace(honest, values=(shifted, *honest.values[1:]))


def _committee(shares, holder_type=None):
    holder_type = holder_type or {}
    return ValidatorCommittee(shares[0].public_key,
                              [holder_type.get(s.party, ShareHolder)(s) for s in shares])


def _protocol(committee):
    codec = FixedPointCodec(clip=1.0, bits=16, max_summands=6)
    return PaillierProtocol(public_key=committee.public_key, key_holder=committee, codec=codec, workers=1)


def _updates(clients=4, length=300, seed=0):
    rng = np.random.default_rng(seed)
    return {f"client-{i}": rng.normal(0.0, 0.3, length) for i in range(clients)}


@pytest.fixture(scope="module")
def committee_round(shares):
    return _protocol(_committee(shares)).aggregate(_updates(), round_id=3, round_seed=b"s" * 32,
                                                   rng=np.random.default_rng(1))


def test_committee_round_gives_the_key_holders_total_and_the_auditor_recombines(keypair, shares, committee_round):
    _, private = keypair
    holder = PaillierKeyHolder(private)
    single = PaillierProtocol(public_key=holder.public_key, key_holder=holder,
                              codec=FixedPointCodec(clip=1.0, bits=16, max_summands=6), workers=1)
    reference = single.aggregate(_updates(), round_id=3, round_seed=b"s" * 32, rng=np.random.default_rng(1))
    assert np.array_equal(committee_round.total, reference.total)  # same stochastic rounding seed, exact sums
    transcript = json.loads(json.dumps(committee_round.transcript))
    parties = [p["party"] for p in transcript["threshold_decryption"]["partials"]]
    assert "proofs" not in transcript and parties == PARTIES[:QUORUM]
    assert np.array_equal(recompute_total("paillier", transcript, committee_round.submissions), committee_round.total)


def test_a_tampering_validator_is_named_skipped_and_the_round_still_decrypts(shares, committee_round):
    committee = _committee(shares, {"validator-1": TamperingHolder})
    result = _protocol(committee).aggregate(_updates(), round_id=4, round_seed=b"s" * 32,
                                            rng=np.random.default_rng(1))
    record = result.transcript["threshold_decryption"]
    assert list(record["refused"]) == ["validator-1"] and "fail their proof" in record["refused"]["validator-1"]
    assert [p["party"] for p in record["partials"]] == ["validator-0", "validator-2", "validator-3"]
    assert np.array_equal(result.total, committee_round.total)
    assert np.array_equal(recompute_total("paillier", json.loads(json.dumps(result.transcript)), result.submissions),
                          result.total)


def test_without_a_quorum_of_honest_validators_the_round_aborts_with_its_inputs(shares):
    liars = {p: TamperingHolder for p in PARTIES[:3]}
    with pytest.raises(TooManyDropouts, match="2 of the 3 share holders") as caught:
        _protocol(_committee(shares, liars)).aggregate(_updates(), round_id=5, round_seed=b"s" * 32)
    assert sorted(caught.value.received) == sorted(_updates())  # sent, so charged
    gone = ValidatorCommittee(shares[0].public_key, [ShareHolder(s) for s in shares[:2]])
    with pytest.raises(TooManyDropouts, match="0 of the 3|2 of the 3"):
        _protocol(gone).aggregate(_updates(), round_id=5, round_seed=b"s" * 32)


def test_validators_refuse_to_decrypt_a_single_submission(shares):
    with pytest.raises(TooManyDropouts):
        _protocol(_committee(shares)).aggregate(_updates(clients=1), round_id=6, round_seed=b"s" * 32)


def test_committee_needs_the_round_it_decrypts_for(shares, committee_round):
    committee = _committee(shares)
    layout = _protocol(committee).layout(300)
    with pytest.raises(ValueError, match="round_id"):
        committee.decrypt_aggregate(dict(committee_round.submissions), layout=layout)


@pytest.mark.parametrize("tamper, error, message", [
    (lambda t: t["threshold_decryption"]["partials"][2]["values"].__setitem__(0, "2"), BadPartialDecryption, "validator-2"),
    (lambda t: t["threshold_decryption"]["partials"].pop(0), TooManyDropouts, "quorum of 3"),
    (lambda t: t["plaintexts"].__setitem__(0, format(int(t["plaintexts"][0], 16) + 1, "x")), DecryptionProofError,
     "ciphertext 0"),
    # replayed into another round: the submissions' plaintext proofs name round 3 (and so do the partials)
    (lambda t: t.update(round=4), MalformedInput, "in round 4"),
    (lambda t: t["threshold_decryption"]["partials"][1]["values"].pop(), BadPartialDecryption, "validator-1"),
    (lambda t: t["threshold_decryption"]["public_key"].update(quorum=1), BadPartialDecryption, "validator-0"),
    (lambda t: t["threshold_decryption"]["partials"].append(t["threshold_decryption"]["partials"][0]), MalformedInput, "two partial"),
    (lambda t: t["threshold_decryption"].update(partials={}), MalformedInput, "partials"),
    (lambda t: t["threshold_decryption"].update(refused=[]), MalformedInput, "refused"),
    (lambda t: t["threshold_decryption"]["partials"][0].update(values="ab"), MalformedInput, "values"),
    (lambda t: t.update(round="3"), MalformedInput, "round"),
])
def test_auditor_refuses_a_tampered_threshold_record(committee_round, tamper, error, message):
    transcript = json.loads(json.dumps(committee_round.transcript))
    tamper(transcript)
    with pytest.raises(error, match=message):
        recompute_total("paillier", transcript, committee_round.submissions)


def test_auditor_refuses_a_threshold_key_for_another_modulus(committee_round):
    foreign = deal_key(bits=BITS, parties=PARTIES, quorum=QUORUM)[0].public_key
    transcript = json.loads(json.dumps(committee_round.transcript))
    transcript["threshold_decryption"]["public_key"] = foreign.to_json()
    with pytest.raises(WrongKey, match="threshold key's modulus"):
        recompute_total("paillier", transcript, committee_round.submissions)
