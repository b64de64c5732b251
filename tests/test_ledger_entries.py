"""Signed canonical entries: round trips, schema refusals, signature binding."""
from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bfl_private.ledger.canonical import canonical_bytes
from bfl_private.ledger.cid import cid_for
from bfl_private.ledger.entries import (
    ATTESTATION,
    GENESIS,
    ROUND_CLOSE,
    SIGNATURE_CONTEXT,
    SUBMISSION,
    Entry,
    verify_signatures,
)
from bfl_private.ledger.errors import MalformedRecord, SignatureError
from bfl_private.ledger.identity import SigningIdentity

ALICE = SigningIdentity.from_private_bytes("client-0", bytes(range(32)))
MALLORY = SigningIdentity.from_private_bytes("client-0", bytes(range(1, 33)))
CID = cid_for(b"update")


def submission(**changes: object) -> dict:
    payload = {"client": "client-0", "blob_cid": CID, "data_weight": 10,
               "privacy": {"noise_multiplier": 1.1, "steps": 20}}
    payload.update(changes)
    return payload


def test_round_trip_is_byte_exact_and_verifies() -> None:
    entry = Entry.create(ALICE, SUBMISSION, 3, submission())
    again = Entry.from_bytes(entry.to_bytes(), where="test")
    assert again.to_bytes() == entry.to_bytes()
    assert (again.type, again.author, again.round) == (SUBMISSION, ALICE.public.key_id_hex, 3)
    assert again.payload == submission()
    again.verify(ALICE.public, where="test")
    record = json.loads(entry.to_bytes())
    assert set(record) == {"author", "payload", "round", "sig", "type", "v"}
    assert canonical_bytes(record) == entry.to_bytes()


def test_signature_is_bound_to_the_key_and_the_content() -> None:
    entry = Entry.create(ALICE, SUBMISSION, 3, submission())
    with pytest.raises(SignatureError, match="checked against key"):
        entry.verify(MALLORY.public, where="entry 7")
    # Same author id, other content, original signature: must not verify.
    record = json.loads(entry.to_bytes())
    record["round"] = 4
    moved = Entry.from_bytes(canonical_bytes(record), where="entry 7")
    with pytest.raises(SignatureError, match="entry 7"):
        moved.verify(ALICE.public, where="entry 7")
    # A signature by another key under the author's id.
    forged = Entry.create(MALLORY, SUBMISSION, 3, submission())
    record = json.loads(entry.to_bytes())
    record["sig"] = base64.b64encode(forged.signature).decode()
    with pytest.raises(SignatureError, match="does not verify"):
        Entry.from_bytes(canonical_bytes(record), where="e").verify(ALICE.public, where="e")


def test_verify_signatures_names_an_unknown_author() -> None:
    entry = Entry.create(ALICE, SUBMISSION, 1, submission())
    with pytest.raises(SignatureError, match="entry 12 .*not registered"):
        verify_signatures([entry], {}, first_index=12)


@pytest.mark.parametrize(
    ("entry_type", "round_", "payload", "message"),
    [
        (SUBMISSION, 1, submission(blob_cid="bafyNOTACID"), "blob_cid: not a valid CID"),
        (SUBMISSION, 1, submission(data_weight=0), "data_weight"),
        (SUBMISSION, 1, submission(data_weight=True), "data_weight"),
        (SUBMISSION, 1, submission(client="bad id!"), "client"),
        (SUBMISSION, 1, submission(extra=1), "unknown fields \\['extra'\\]"),
        (SUBMISSION, 0, submission(), "round 0 is for the genesis entry"),
        (SUBMISSION, -1, submission(), "round"),
        (ATTESTATION, 1, {"validator": "v", "model_cid": CID, "quality_ppm": 1_000_001,
                          "verdict": "accept"}, "quality_ppm"),
        (ATTESTATION, 1, {"validator": "v", "model_cid": CID, "quality_ppm": 5,
                          "verdict": "maybe"}, "verdict"),
        (ROUND_CLOSE, 1, {"aggregate_cid": CID, "new_model_cid": CID, "transcript_cid": None,
                          "survivors": ["a", "a"], "dropouts": [], "rejected": {},
                          "cumulative_epsilon": {"a": 1.0}}, "must not repeat"),
        (ROUND_CLOSE, 1, {"aggregate_cid": CID, "new_model_cid": CID, "transcript_cid": None,
                          "survivors": ["a"], "dropouts": [], "rejected": {},
                          "cumulative_epsilon": {"a": -0.5}}, "cumulative_epsilon"),
        ("transfer", 1, {}, "unknown entry type"),
        (GENESIS, 0, {"federation_id": "f"}, "missing fields"),
    ],
)
def test_schema_refusals_name_the_field(entry_type: str, round_: int, payload: dict,
                                        message: str) -> None:
    with pytest.raises(MalformedRecord, match=message):
        Entry.create(ALICE, entry_type, round_, payload)


def test_non_finite_numbers_are_refused() -> None:
    with pytest.raises(MalformedRecord):
        Entry.create(ALICE, SUBMISSION, 1, submission(privacy={"epsilon": float("nan")}))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b.replace(b'{"author"', b'{ "author"'),  # not canonical
        lambda b: b[:-1],  # truncated
        lambda b: b.replace(b'"v":1', b'"v":2'),  # unknown version
        lambda b: b.replace(b'"sig":"', b'"sig":"AAAA'),  # signature of the wrong size
        lambda b: b"[]",
    ],
)
def test_malformed_bytes_are_refused(mutate) -> None:
    data = Entry.create(ALICE, SUBMISSION, 1, submission()).to_bytes()
    with pytest.raises(MalformedRecord, match="entry 9"):
        Entry.from_bytes(mutate(data), where="entry 9")


@settings(max_examples=40, deadline=None)
@given(
    weight=st.integers(min_value=1, max_value=2**40),
    round_=st.integers(min_value=1, max_value=10**6),
    privacy=st.dictionaries(st.sampled_from(["sig", "type", "v", "x", "é"]) | st.text(max_size=8),
                            st.floats(min_value=-1e15, max_value=1e15) | st.integers(
                                min_value=-2**53 + 1, max_value=2**53 - 1), max_size=4),
    position=st.integers(min_value=0),
    bit=st.integers(min_value=0, max_value=7),
)
def test_any_single_bit_flip_is_refused(weight: int, round_: int, privacy: dict,
                                        position: int, bit: int) -> None:
    entry = Entry.create(ALICE, SUBMISSION, round_,
                         submission(data_weight=weight, privacy=privacy))
    data = bytearray(entry.to_bytes())
    parsed = Entry.from_bytes(bytes(data), where="e")
    assert parsed.to_bytes() == bytes(data)
    unsigned = {k: v for k, v in json.loads(bytes(data)).items() if k != "sig"}
    assert parsed.signed_bytes() == SIGNATURE_CONTEXT + canonical_bytes(unsigned)
    data[position % len(data)] ^= 1 << bit
    with pytest.raises((MalformedRecord, SignatureError)):
        Entry.from_bytes(bytes(data), where="e").verify(ALICE.public, where="e")
