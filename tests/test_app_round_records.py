"""The typed payloads of a round's entries: exact round trips, named refusals, and the
records both round engines write parse back."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bfl_private.ledger.entries import ABORT, ATTESTATION, ROUND_CLOSE, ROUND_OPEN, SUBMISSION
from bfl_private.ledger.errors import MalformedRecord
from bfl_private.ledger.store import Ledger
from bfl_private.round_records import (
    Attestation,
    RoundAbortRecord,
    RoundClosing,
    RoundOpening,
    Submission,
    with_refusals,
)
from bfl_private.runner import RoundOptions, run_command

ids = st.lists(st.from_regex(r"[a-z]{1,8}-[0-9]{2}", fullmatch=True), max_size=5, unique=True).map(tuple)
text = st.text(max_size=20)
numbers = st.floats(min_value=0, max_value=1e6, allow_nan=False)
objects = st.dictionaries(st.text(max_size=5), st.integers(), max_size=3)

RECORDS = st.one_of(
    st.builds(RoundOpening, ids, text, objects, text, objects),
    st.builds(Submission, text, text, st.integers(1, 10**6), objects),
    st.builds(RoundClosing, text, text, text, ids, ids, st.dictionaries(text, text, max_size=3),
              st.dictionaries(text, numbers, max_size=3)),
    st.builds(RoundAbortRecord, text, text, ids, st.dictionaries(text, numbers, max_size=3)),
    st.builds(Attestation, text, text, st.integers(0, 1_000_000), st.sampled_from(["accept", "reject"])),
)


@given(RECORDS)
def test_every_record_survives_its_json(record) -> None:
    assert type(record).from_json(record.to_json(), where="test") == record


@given(RECORDS, st.sampled_from(["drop", "extra"]))
def test_a_missing_or_extra_field_is_refused_by_name(record, change: str) -> None:
    payload = record.to_json()
    if change == "drop":
        payload.pop(next(iter(payload)))
    else:
        payload["unexpected"] = 1
    with pytest.raises(MalformedRecord, match=f"a {type(record).__name__} has exactly the fields"):
        type(record).from_json(payload, where="test")


@pytest.mark.parametrize("record, field, value, message", [
    (Attestation("v", "c", 5, "accept"), "quality_ppm", 1_000_001, "quality_ppm"),
    (Attestation("v", "c", 5, "accept"), "verdict", "maybe", "verdict"),
    (Submission("h", "c", 3, {}), "data_weight", True, "data_weight"),
    (RoundClosing("a", "m", "t", ("h",), (), {}, {"h": 1.0}), "cumulative_epsilon", {"h": "1"}, "cumulative_epsilon"),
    (RoundAbortRecord("mask", "r", ("h",), {}), "survivors", "h", "survivors"),
])
def test_a_wrong_type_is_refused_by_name(record, field: str, value, message: str) -> None:
    with pytest.raises(MalformedRecord, match=message):
        type(record).from_json({**record.to_json(), field: value}, where="test")


def test_refusals_follow_the_reason_in_one_order() -> None:
    assert with_refusals("too few", {}) == "too few"
    assert with_refusals("too few", {"b": "k below genesis", "a": "old model"}) == \
        "too few; participants refused the round: a: old model; b: k below genesis"


def test_what_the_engine_writes_parses_back(tmp_path: Path) -> None:
    run_command(tmp_path / "fed", RoundOptions(epsilon=1.0, rounds=2, clients=4, seed=1, dropout=0.3), quiet=True)
    kinds = {ROUND_OPEN: RoundOpening, SUBMISSION: Submission, ROUND_CLOSE: RoundClosing, ABORT: RoundAbortRecord,
             ATTESTATION: Attestation}
    with Ledger.open(tmp_path / "fed") as ledger:
        entries = [e for e in ledger.entries() if e.type in kinds]
    assert {e.type for e in entries} >= {ROUND_OPEN, SUBMISSION, ATTESTATION}
    for entry in entries:
        assert kinds[entry.type].from_json(entry.payload, where=entry.type).to_json() == entry.payload
