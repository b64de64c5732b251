"""Packed Paillier aggregation: exact sums, headroom refusal, verifiable decryption, bad input."""
from __future__ import annotations

import json

import numpy as np
import phe.util
import pytest
from bfl_private.protocols.base import recompute_total
from bfl_private.protocols.errors import (
    AggregateMismatch,
    ConfigurationError,
    DecryptionProofError,
    HeadroomExceeded,
    MalformedInput,
    SlotOverflow,
    TooManyDropouts,
    WrongKey,
)
from bfl_private.protocols.paillier import (
    PackingLayout,
    PaillierKeyHolder,
    PaillierProtocol,
    decode_submission,
    ProvenCiphertext,
    encode_submission,
    encrypt,
    key_id,
    public_key_from_json,
    recompute_from_submissions,
    verify_decryption,
)
from bfl_private.protocols.paillier_plaintext_proof import (
    PlaintextProofError,
    submission_context,
    verify_plaintext_proof,
)
from bfl_private.protocols.quantize import FixedPointCodec
from hypothesis import given, settings
from hypothesis import strategies as st

BITS = 1024  # test-size keys; one slow test runs the 2048-bit default


@pytest.fixture(scope="module")
def holder() -> PaillierKeyHolder:
    return PaillierKeyHolder.generate(bits=BITS)


@pytest.fixture(scope="module")
def other_holder() -> PaillierKeyHolder:
    return PaillierKeyHolder.generate(bits=BITS)


def _context(holder, client: str, round_id: int = 1) -> bytes:
    return submission_context(round_id=round_id, client=client, key_fingerprint=key_id(holder.public_key))


def _blobs(holder, layout, level_vectors):
    return {
        f"c{i}": encode_submission(holder.public_key, encrypt(holder.public_key, layout.pack(v),
                                                              context=_context(holder, f"c{i}"), workers=1))
        for i, v in enumerate(level_vectors)
    }


def test_phe_uses_gmpy2():
    assert phe.util.HAVE_GMP


def test_slot_count_matches_the_issue_figure():
    layout = PackingLayout(key_bits=2048, value_bits=16, max_summands=15, length=10_000)
    assert (layout.headroom_bits, layout.slot_bits, layout.slots) == (4, 20, 102)
    assert layout.ciphertexts == 99  # ceil(10_000 / 102)
    assert PackingLayout(key_bits=3072, value_bits=16, max_summands=15, length=1).slots == 153


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_pack_unpack_is_the_slotwise_sum(data):
    value_bits = data.draw(st.integers(1, 24))
    max_summands = data.draw(st.integers(1, 64))
    length = data.draw(st.integers(1, 200))
    layout = PackingLayout(key_bits=BITS, value_bits=value_bits, max_summands=max_summands, length=length)
    summands = data.draw(st.integers(1, max_summands))
    seed = data.draw(st.integers(0, 2**32 - 1))
    levels = np.random.default_rng(seed).integers(0, 1 << value_bits, size=(summands, length), dtype=np.uint64)
    packed_sum = [sum(col) for col in zip(*(layout.pack(v) for v in levels))]  # integer sum of plaintexts
    assert np.array_equal(layout.unpack(packed_sum, summands=summands), levels.sum(axis=0))


@settings(max_examples=12, deadline=None)
@given(summands=st.integers(2, 7), length=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_encrypted_packed_sum_is_exact_up_to_the_headroom_limit(holder, summands, length, seed):
    # max_summands = 7 gives 3 headroom bits; every N up to 7 must sum exactly.
    layout = PackingLayout(key_bits=BITS, value_bits=16, max_summands=7, length=length)
    levels = np.random.default_rng(seed).integers(0, 1 << 16, size=(summands, length), dtype=np.uint64)
    levels[0, :] = (1 << 16) - 1  # the worst case for carries
    decryption = holder.decrypt_aggregate(_blobs(holder, layout, levels), layout=layout, round_id=1)
    assert np.array_equal(layout.unpack(decryption.plaintexts, summands=summands), levels.sum(axis=0))


def test_past_the_headroom_is_refused_not_wrapped(holder):
    layout = PackingLayout(key_bits=BITS, value_bits=8, max_summands=3, length=5)
    full = np.full((4, 5), 255, dtype=np.uint64)  # 4 x 255 = 1020 would need 10 bits; slots have 10
    blobs = _blobs(holder, layout, full)
    with pytest.raises(HeadroomExceeded, match="headroom of 3"):
        holder.decrypt_aggregate(blobs, layout=layout, round_id=1)
    with pytest.raises(HeadroomExceeded):
        layout.unpack([0] * layout.ciphertexts, summands=4)


def test_overflowing_slots_are_named_errors():
    layout = PackingLayout(key_bits=BITS, value_bits=8, max_summands=3, length=5)
    with pytest.raises(SlotOverflow, match="index 2"):
        layout.pack(np.array([0, 1, 256, 3, 4]))
    with pytest.raises(SlotOverflow, match="slot 0"):  # 3 x 255 + 1 in slot 0 of a sum of 3
        layout.unpack([3 * 255 + 1], summands=3)
    with pytest.raises(SlotOverflow, match="past"):
        layout.unpack([1 << (layout.slots * layout.slot_bits)], summands=3)
    with pytest.raises(ConfigurationError):
        PackingLayout(key_bits=512, value_bits=8, max_summands=3, length=5)


def test_parallel_encryption_decrypts_to_the_same_plaintexts(holder):
    plaintexts = list(range(1000, 1040))
    proven = encrypt(holder.public_key, plaintexts, context=_context(holder, "c0"), workers=2)
    ciphertexts = [p.ciphertext for p in proven]
    assert len(set(ciphertexts)) == len(ciphertexts)
    assert [holder._private_key.raw_decrypt(c) for c in ciphertexts] == plaintexts
    for index, item in enumerate(proven):  # the forked workers' proofs carry their global index
        verify_plaintext_proof(holder.public_key, item.ciphertext, item.proof, context=_context(holder, "c0"), index=index)


@settings(max_examples=25, deadline=None)
@given(m=st.integers(0, 2**64), dm=st.integers(1, 2**64), dr=st.integers(1, 2**64))
def test_verify_decryption_accepts_the_opening_and_nothing_else(holder, m, dm, dr):
    pk = holder.public_key
    c = pk.raw_encrypt(m)
    r = holder._randomness(c)
    verify_decryption(pk, c, m, r)
    with pytest.raises(DecryptionProofError):
        verify_decryption(pk, c, (m + dm) % pk.n, r)
    with pytest.raises(DecryptionProofError):
        verify_decryption(pk, c, m, (r + dr) % pk.n)


def test_verify_decryption_rejects_out_of_range_and_wrong_types(holder):
    pk = holder.public_key
    c = pk.raw_encrypt(5)
    r = holder._randomness(c)
    for args in [(c, 5 + pk.n, r), (c, 5, r + pk.n), (c, 5, 0), (0, 5, r), (pk.nsquare + c, 5, r), (c, 5.0, r), (c, True, r)]:
        with pytest.raises(DecryptionProofError):
            verify_decryption(pk, *args)


def _protocol(holder, *, bits=12, max_summands=7, clip=1.0):
    return PaillierProtocol(public_key=holder.public_key, key_holder=holder,
                            codec=FixedPointCodec(clip=clip, bits=bits, max_summands=max_summands), workers=1)


def _updates(clients=4, length=300, seed=0):
    rng = np.random.default_rng(seed)
    return {f"client-{i}": rng.normal(0.0, 0.5, length) for i in range(clients)}


def test_protocol_total_is_the_exact_decoded_sum_and_recomputes(holder):
    proto = _protocol(holder)
    updates = _updates()
    result = proto.aggregate(updates, round_id=3, round_seed=b"s" * 32, rng=np.random.default_rng(11))
    # Independent computation: same codec, same rng stream in sorted client order, plain integer sum.
    rng = np.random.default_rng(11)
    levels = sum(proto.codec.encode(updates[c], rng).astype(np.int64) for c in sorted(updates))
    expected = proto.codec.decode_sum(levels.astype(np.uint32), len(updates))
    assert np.array_equal(result.total, expected)
    clipped = sum(np.clip(v, -1.0, 1.0) for v in updates.values())
    assert np.max(np.abs(result.total - clipped)) < len(updates) * proto.codec.step
    assert result.included == tuple(sorted(updates)) and result.decryption_provable
    transcript = json.loads(json.dumps(result.transcript))  # JSON-serialisable and re-readable
    assert np.array_equal(recompute_total("paillier", transcript, result.submissions), result.total)


@pytest.fixture(scope="module")
def round_result(holder):
    return _protocol(holder).aggregate(_updates(clients=3, length=200), round_id=1, round_seed=b"x" * 32,
                                       rng=np.random.default_rng(5))


def _tampered(transcript, key, index, delta):
    copy = json.loads(json.dumps(transcript))
    copy[key][index] = format(int(copy[key][index], 16) + delta, "x")
    return copy


@pytest.mark.parametrize("key,error", [("plaintexts", DecryptionProofError), ("proofs", DecryptionProofError),
                                       ("aggregate", AggregateMismatch)])
def test_recompute_rejects_a_tampered_transcript(round_result, key, error):
    with pytest.raises(error, match="aggregate|ciphertext 0"):
        recompute_from_submissions(_tampered(round_result.transcript, key, 0, 1), round_result.submissions)


def test_recompute_rejects_missing_or_swapped_submissions(holder, round_result):
    subs = dict(round_result.submissions)
    first = min(subs)
    with pytest.raises(MalformedInput, match="without a submission"):
        recompute_from_submissions(round_result.transcript, {c: b for c, b in subs.items() if c != first})
    other = _protocol(holder).aggregate(_updates(clients=3, length=200, seed=9), round_id=2, round_seed=b"y" * 32)
    subs[first] = other.submissions[first]  # a valid ciphertext, but not the one that was summed
    with pytest.raises(PlaintextProofError, match="round 1"):  # it was proven for round 2
        recompute_from_submissions(round_result.transcript, subs)


def test_submission_checks(holder, other_holder, round_result):
    layout = PackingLayout.from_json(round_result.transcript["layout"])
    blob = round_result.submissions["client-0"]
    pk = holder.public_key
    with pytest.raises(MalformedInput, match="not a safetensors blob"):
        decode_submission(blob[: len(blob) // 2], public_key=pk, layout=layout, client="client-0", round_id=1)
    foreign = encode_submission(other_holder.public_key, encrypt(other_holder.public_key, [1] * layout.ciphertexts,
                                                                 context=_context(other_holder, "client-9")))
    with pytest.raises(WrongKey, match="client-9"):
        decode_submission(foreign, public_key=pk, layout=layout, client="client-9", round_id=1)
    proven = encrypt(pk, [1] * layout.ciphertexts, context=_context(holder, "client-0"), workers=1)
    with pytest.raises(MalformedInput, match=r"shapes \(2, 256\) and \(2, 512\), expected uint8 \(3, 256\)"):
        decode_submission(encode_submission(pk, proven[:-1]), public_key=pk, layout=layout, client="client-0", round_id=1)
    for bad in (0, pk.n, holder._private_key.p):  # not units of Z_(n^2)
        forged = [ProvenCiphertext(bad, proven[0].proof), *proven[1:]]
        with pytest.raises(MalformedInput, match="ciphertext 0 is not in"):
            decode_submission(encode_submission(pk, forged), public_key=pk, layout=layout, client="client-0", round_id=1)
    # Proven for client-0 in round 1: refused under any other name or round.
    decode_submission(encode_submission(pk, proven), public_key=pk, layout=layout, client="client-0", round_id=1)
    for client, round_id in (("client-1", 1), ("client-0", 2)):
        with pytest.raises(PlaintextProofError, match="does not verify"):
            decode_submission(encode_submission(pk, proven), public_key=pk, layout=layout, client=client,
                              round_id=round_id)


def test_key_holder_refuses_what_it_did_not_recompute(holder, round_result):
    layout = PackingLayout.from_json(round_result.transcript["layout"])
    subs = round_result.submissions
    aggregate = [int(c, 16) for c in round_result.transcript["aggregate"]]
    with pytest.raises(AggregateMismatch):
        holder.decrypt_aggregate(subs, layout=layout, claimed=[aggregate[0] + 1] + aggregate[1:], round_id=1)
    one = dict(list(subs.items())[:1])
    with pytest.raises(TooManyDropouts, match="at least 2"):
        holder.decrypt_aggregate(one, layout=layout, round_id=1)
    replay = {**subs, "mallory": subs["client-0"]}  # client-0's proofs name client-0, not mallory
    with pytest.raises(PlaintextProofError, match="mallory"):
        holder.decrypt_aggregate(replay, layout=layout, round_id=1)
    assert holder.decrypt_aggregate(subs, layout=layout, claimed=aggregate, round_id=1).aggregate == tuple(aggregate)


def test_private_key_round_trip_and_malformed_keys(holder):
    data = holder.to_private_bytes()
    assert json.loads(data)["format"].startswith("bfl-private/paillier")
    again = PaillierKeyHolder.from_private_bytes(data)
    assert again.public_key.n == holder.public_key.n
    record = json.loads(data)
    for bad in (b"{not json", json.dumps({**record, "format": "x"}).encode(),
                # p + 1 is even, so never prime (p + 2 is prime too for about one key in 500).
                json.dumps({**record, "p": format(int(record["p"], 16) + 1, "x")}).encode(),
                json.dumps({**record, "q": "XYZ"}).encode()):
        with pytest.raises(MalformedInput):
            PaillierKeyHolder.from_private_bytes(bad)
    with pytest.raises(ConfigurationError):
        PaillierKeyHolder.generate(bits=512)
    with pytest.raises(WrongKey):
        public_key_from_json({"n": format(holder.public_key.n, "x"), "key_id": "00" * 32})


def test_protocol_drops_and_wrong_key_holder(holder, other_holder):
    updates = _updates(clients=4, length=50)
    result = _protocol(holder).aggregate(updates, round_id=4, round_seed=b"z" * 32,
                                         drop={"client-1": "mask", "client-2": "unmask"})
    assert result.dropped == ("client-1",)
    assert result.included == ("client-0", "client-2", "client-3")
    assert set(result.submissions) == set(result.included)
    with pytest.raises(WrongKey):
        PaillierProtocol(public_key=holder.public_key, key_holder=other_holder,
                         codec=FixedPointCodec(clip=1.0, bits=12, max_summands=7))
    with pytest.raises(HeadroomExceeded):
        _protocol(holder, max_summands=3).aggregate(updates, round_id=5, round_seed=b"z" * 32)


@pytest.mark.slow
def test_default_3072_bit_round_recomputes():
    holder = PaillierKeyHolder.generate()
    assert holder.public_key.n.bit_length() == 3072  # 128-bit security by default
    proto = PaillierProtocol(public_key=holder.public_key, key_holder=holder,
                             codec=FixedPointCodec(clip=1.0, bits=16, max_summands=15))
    updates = _updates(clients=3, length=500)
    result = proto.aggregate(updates, round_id=1, round_seed=b"q" * 32)
    assert result.transcript["layout"]["slots"] == 153
    assert np.array_equal(recompute_total("paillier", result.transcript, result.submissions), result.total)
    clipped = sum(np.clip(v, -1.0, 1.0) for v in updates.values())
    assert np.max(np.abs(result.total - clipped)) < 3 * proto.codec.step
