"""The protocols' typed transcripts: each parses what its protocol writes and writes back
exactly the same JSON (so old ledgers verify), and refuses malformed input by name."""
from __future__ import annotations

import copy

import numpy as np
import pytest
from bfl_private.ledger.canonical import canonical_bytes, parse_canonical
from bfl_private.protocols.base import parse_transcript, recompute_total
from bfl_private.protocols.ckks import CkksKeyHolder, CkksProtocol, CkksTranscript
from bfl_private.protocols.errors import ConfigurationError, MalformedInput, ProtocolError
from bfl_private.protocols.masking import (
    MaskingProtocol,
    MaskingTranscript,
    secure_sum,
    transcript_with_codec,
)
from bfl_private.protocols.paillier import PaillierKeyHolder, PaillierProtocol, PaillierTranscript
from bfl_private.protocols.plain import PlainProtocol, PlainTranscript
from bfl_private.protocols.quantize import FixedPointCodec
from hypothesis import given, settings
from hypothesis import strategies as st
from known_answer_vectors import known_answers

RECORDS = {"masking": MaskingTranscript, "paillier": PaillierTranscript, "ckks": CkksTranscript,
           "plain": PlainTranscript}
SEED = b"s" * 32


def _updates(clients: int = 5, length: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"c{i}": rng.uniform(-0.5, 0.5, length) for i in range(clients)}


def _codec() -> FixedPointCodec:
    return FixedPointCodec(clip=1.0, bits=16, max_summands=6)


@pytest.fixture(scope="module")
def rounds():
    """One real round per protocol, run in-process on small inputs (masking with a client
    dropped after sharing, so that a mask key is revealed)."""
    paillier = PaillierKeyHolder.generate(bits=1024)
    ckks = CkksKeyHolder.generate()
    protocols = {
        "masking": (MaskingProtocol(_codec()), {"c3": "mask"}),
        "paillier": (PaillierProtocol(public_key=paillier.public_key, key_holder=paillier, codec=_codec(),
                                      workers=1), {}),
        "ckks": (CkksProtocol(public_context=ckks.public_context, key_holder=ckks, clip=1.0, max_summands=6), {}),
        "plain": (PlainProtocol(bound=1.0), {}),
    }
    return {name: protocol.aggregate(_updates(), round_id=7, round_seed=SEED, drop=drop)
            for name, (protocol, drop) in protocols.items()}


@pytest.mark.parametrize("protocol", sorted(RECORDS))
def test_a_real_transcript_round_trips_to_the_same_json(rounds, protocol):
    result = rounds[protocol]
    record = RECORDS[protocol].from_json(result.transcript, where="round 7")
    assert record.to_json() == result.transcript
    assert canonical_bytes(record.to_json()) == canonical_bytes(result.transcript)
    assert RECORDS[protocol].from_json(record.to_json(), where="round 7") == record
    assert np.array_equal(recompute_total(protocol, record.to_json(), result.submissions), result.total)
    assert parse_transcript(protocol, result.transcript, where="round 7") == record
    assert record.summed == result.included


def test_a_transcript_is_parsed_as_the_record_of_its_round_s_protocol(rounds):
    with pytest.raises(MalformedInput, match="round 7: a paillier transcript has the fields"):
        parse_transcript("paillier", rounds["plain"].transcript, where="round 7")
    with pytest.raises(ConfigurationError, match="unknown protocol 'other'"):
        parse_transcript("other", rounds["plain"].transcript, where="round 7")


def test_the_masking_record_reads_its_fields(rounds):
    record = MaskingTranscript.from_json(rounds["masking"].transcript, where="round 7")
    assert (record.round, record.round_seed, record.clients) == (7, SEED, ("c0", "c1", "c2", "c3", "c4"))
    assert record.survivors == ("c0", "c1", "c2", "c4") and set(record.dropped_mask_keys) == {"c3"}
    assert all(len(key) == 32 for key in record.identity_keys.values())
    assert record.decoder() == _codec()


def test_a_masking_transcript_without_a_codec_round_trips_and_gains_one_as_committed():
    vectors = [np.arange(5, dtype=np.uint32) * i for i in range(4)]
    transcript = secure_sum(vectors, seed=SEED).transcript
    record = MaskingTranscript.from_json(transcript, where="secure_sum")
    assert record.codec is None and "codec" not in record.to_json() and record.to_json() == transcript
    with pytest.raises(MalformedInput, match="lacks its 'codec'"):
        record.decoder()
    assert transcript_with_codec(transcript, _codec()) == {**transcript, "codec": _codec().to_json()}


def test_a_plain_transcript_without_a_bound_still_parses_and_sums_unchecked(rounds):
    result = rounds["plain"]
    older = {k: v for k, v in result.transcript.items() if k != "bound"}
    record = PlainTranscript.from_json(older, where="old round")
    assert record.bound is None and record.to_json() == older
    with pytest.raises(MalformedInput, match="bound must be a finite number, got None"):
        PlainTranscript.from_json({**older, "bound": None}, where="old round")
    assert np.array_equal(recompute_total("plain", older, result.submissions), result.total)


# --- frozen transcripts -------------------------------------------------------------------------


def _frozen_transcripts():
    for answers in known_answers("ledgers"):
        for name, ledger in answers.data.items():
            blobs = answers.ledger(name) / "blobs"
            for frozen in ledger["rounds"]:
                data = (blobs / frozen["transcript_cid"]).read_bytes()
                yield pytest.param(frozen["protocol"], data, id=f"{answers.version}/{name}/{frozen['transcript_cid']}")
    for answers in known_answers("transcripts"):
        frozen = answers.data
        yield pytest.param(frozen["protocol"], canonical_bytes(frozen["transcript"]), id=answers.id)


@pytest.mark.parametrize(("protocol", "data"), list(_frozen_transcripts()))
def test_frozen_transcripts_round_trip_to_identical_canonical_json(protocol, data):
    record = RECORDS[protocol].from_json(parse_canonical(data, where="frozen"), where="frozen")
    assert canonical_bytes(record.to_json()) == data


def test_the_frozen_threshold_decryption_is_read_as_its_record():
    (answers,) = [a for a in known_answers("ledgers") if "paillier-distributed" in a.data]
    frozen = answers.data["paillier-distributed"]["rounds"][0]
    data = (answers.ledger("paillier-distributed") / "blobs" / frozen["transcript_cid"]).read_bytes()
    record = PaillierTranscript.from_json(parse_canonical(data, where="frozen"), where="frozen")
    assert record.proofs is None and record.threshold_decryption is not None
    assert record.threshold_decryption.public_key.n == record.public_key.n


# --- malformed transcripts --------------------------------------------------------------------------


def _changed(transcript, **changes):
    changed = copy.deepcopy(dict(transcript))
    for key, value in changes.items():
        if value is None:
            del changed[key]
        else:
            changed[key] = value
    return changed


MALFORMED = [
    ("missing field", {"round": None}, r"missing \['round'\]"),
    ("extra field", {"surplus": 1}, r"unexpected \['surplus'\]"),
    ("bool for int", {"round": True}, "round must be an integer, got bool"),
    ("wrong type", {"round": "7"}, "round must be an integer, got str"),
    ("names not strings", {"included": [1, 2]}, "must be a list of strings"),
    ("another protocol", {"protocol": "other"}, "not a .* transcript"),
    ("not an object", None, "must be a JSON object, got list"),
]


@pytest.mark.parametrize("protocol", sorted(RECORDS))
@pytest.mark.parametrize(("case", "changes", "message"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_transcripts_are_refused_by_name(rounds, protocol, case, changes, message):
    transcript = rounds[protocol].transcript
    if changes is None:
        bad = [dict(transcript)]
    else:
        if protocol == "masking" and "included" in changes:  # masking names its summed clients survivors
            changes = {"survivors": changes["included"]}
        bad = _changed(transcript, **changes)
    with pytest.raises(MalformedInput, match=f"round 9: .*{message}"):
        RECORDS[protocol].from_json(bad, where="round 9")
    if changes is not None:  # the auditor's recomputation refuses it the same way
        with pytest.raises(MalformedInput, match=message):
            recompute_total(protocol, bad, rounds[protocol].submissions)


@pytest.mark.parametrize(("path", "value", "message"), [
    (("advertisements", "c0", "surplus"), "00", r"advertisement of 'c0'.*unexpected \['surplus'\]"),
    (("self_mask_seeds", "c0"), "AB" * 32, "self-mask seed of 'c0': value must be lower-case hex"),
    (("identity_keys", "c1"), "00" * 31, "identity key of 'c1': expected 32 bytes"),
    (("dropped", "c3"), 3, "dropped of 'c3': stage must be a string"),
    (("neighbours",), False, "neighbours must be an integer, got bool"),
    (("codec",), [1], "codec parameters must be an object"),
    (("codec",), None, "codec parameters must be an object"),
    (("version",), 1, "version 1 is not 2"),
])
def test_malformed_masking_fields_are_refused_by_name(rounds, path, value, message):
    bad = copy.deepcopy(dict(rounds["masking"].transcript))
    target = bad
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(MalformedInput, match=message):
        MaskingTranscript.from_json(bad, where="round 9")


def test_a_paillier_transcript_carries_exactly_one_proof_of_its_decryption(rounds):
    transcript = rounds["paillier"].transcript
    with pytest.raises(MalformedInput, match="exactly one of 'proofs' and 'threshold_decryption'"):
        PaillierTranscript.from_json(_changed(transcript, proofs=None), where="round 9")
    with pytest.raises(MalformedInput, match="exactly one of"):
        PaillierTranscript.from_json(_changed(transcript, threshold_decryption={}), where="round 9")
    with pytest.raises(MalformedInput, match="'plaintexts' must be a list of 1 hex strings"):
        PaillierTranscript.from_json(_changed(transcript, plaintexts=[]), where="round 9")
    with pytest.raises(MalformedInput, match="layout slots must be an integer, got bool"):
        PaillierTranscript.from_json(_changed(transcript, layout={**transcript["layout"], "slots": True}),
                                     where="round 9")
    with pytest.raises(MalformedInput, match=r"public key has the fields .*missing \['key_id'\]"):
        PaillierTranscript.from_json(_changed(transcript, public_key={"n": transcript["public_key"]["n"]}),
                                     where="round 9")


def test_a_ckks_transcript_never_claims_a_provable_decryption(rounds):
    transcript = rounds["ckks"].transcript
    with pytest.raises(MalformedInput, match="never provable"):
        CkksTranscript.from_json(_changed(transcript, decryption_provable=True), where="round 9")
    with pytest.raises(MalformedInput, match="clip must be a finite number"):
        CkksTranscript.from_json(_changed(transcript, clip=True), where="round 9")
    with pytest.raises(MalformedInput, match="public_context is not base64"):
        CkksTranscript.from_json(_changed(transcript, public_context="@@"), where="round 9")


# --- properties ------------------------------------------------------------------------------


JSON = st.recursive(st.none() | st.booleans() | st.integers(min_value=-2**53 + 1, max_value=2**53 - 1) | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=8)


@settings(max_examples=100, deadline=None)
@given(round_id=st.integers(min_value=0, max_value=2**53 - 1), included=st.lists(st.text(max_size=10), unique=True),
       bound=st.none() | st.floats(min_value=1e-6, max_value=1e6))
def test_any_plain_record_round_trips(round_id, included, bound):
    record = PlainTranscript(round_id, tuple(sorted(included)), bound)
    assert PlainTranscript.from_json(parse_canonical(canonical_bytes(record.to_json()), where="p"), where="p") \
        == record


@pytest.mark.parametrize("protocol", sorted(RECORDS))
def test_any_field_replaced_by_any_json_is_read_or_refused_by_name(rounds, protocol):
    """Whatever value a field holds, parsing either gives a record that writes it back or
    raises a protocol error: never an unnamed exception."""
    transcript = rounds[protocol].transcript

    @settings(max_examples=60, deadline=None)
    @given(field=st.sampled_from(sorted(transcript)), value=JSON)
    def check(field, value):
        changed = {**transcript, field: value}
        try:
            record = RECORDS[protocol].from_json(changed, where="round 9")
        except ProtocolError:
            return
        assert canonical_bytes(record.to_json()) == canonical_bytes(changed)

    check()
