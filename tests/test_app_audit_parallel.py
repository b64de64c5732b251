"""The audit's speed-ups change nothing it decides: memoised privacy records are still
checked against each round's plan, and one process or two give the same report."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from ledger_fixtures import Federation as LedgerFederation
from ledger_fixtures import RefusingPool

from bfl_private.audit import audit
from bfl_private.ledger.entries import GENESIS, ROUND_OPEN, SUBMISSION
from bfl_private.ledger.errors import SemanticCheckError
from bfl_private.round_checks import PrivacyHistories, planned_record
from bfl_private.settings import FederationSettings

SETTINGS = FederationSettings()


def entry(kind: str, round_: int, payload: dict) -> SimpleNamespace:
    return SimpleNamespace(type=kind, round=round_, payload=payload)


def genesis() -> SimpleNamespace:
    """A genesis entry of these settings (its registry is not what these tests are about)."""
    return entry(GENESIS, 0, {**LedgerFederation().genesis().payload, "settings": SETTINGS.to_json()})


def opening(round_: int, sigma: object) -> SimpleNamespace:
    return entry(ROUND_OPEN, round_, {"privacy_plan": {"noise_multipliers": {"a": sigma, "b": sigma}}})


def submission(round_: int, client: str, privacy: dict) -> SimpleNamespace:
    return entry(SUBMISSION, round_, {"client": client, "privacy": privacy})


def test_a_record_seen_before_is_still_checked_against_each_rounds_plan() -> None:
    record = planned_record(SETTINGS, noise_multiplier=1.5).to_json()
    histories = PrivacyHistories()
    histories.add([genesis(), opening(1, 1.5),
                   submission(1, "a", record), submission(1, "b", dict(record))])
    assert histories.records["a"] is not histories.records["b"]
    assert histories.records["a"][0] is histories.records["b"][0]  # parsed once
    # The same record under a plan with another σ understates ε: refused, memo or not.
    with pytest.raises(SemanticCheckError, match="noise_multiplier 1.5 recorded, 2.0 required"):
        histories.add([opening(2, 2.0), submission(2, "a", record)])
    # An int where the plan has a float is the same σ; a bool is no σ at all.
    histories = PrivacyHistories()
    histories.add([genesis(), opening(1, 1.5),
                   submission(1, "a", record)])
    with pytest.raises(SemanticCheckError, match="no noise multiplier"):
        histories.add([opening(2, True), submission(2, "a", record)])


def test_a_malformed_record_is_refused_every_time() -> None:
    record = {**planned_record(SETTINGS, noise_multiplier=1.5).to_json(), "steps": 3.0}
    histories = PrivacyHistories()
    histories.add([genesis(), opening(1, 1.5)])
    for client in ("a", "b"):
        with pytest.raises(SemanticCheckError, match="'steps' must be an integer"):
            histories.add([submission(1, client, record)], first_index=7)
    assert histories.records == {}


@pytest.fixture(scope="module")
def ledger(tmp_path_factory) -> Path:
    from bench.audit_ledger import build_ledger

    directory = tmp_path_factory.mktemp("audit") / "ledger"
    build_ledger(directory, clients=300, rounds=2)
    return directory


def test_one_process_or_two_give_the_same_audit(ledger: Path) -> None:
    one, two = audit(ledger, workers=1), audit(ledger, workers=2)
    assert one.ok and two.ok and one.report.entries > 512
    assert one.to_json() == two.to_json()


def test_the_plain_range_rule_names_the_first_offender_in_the_transcripts_order() -> None:
    """Checked for all vectors at once, the range rule still refuses the first offender in
    order, and before a later submission that does not even decode."""
    import numpy as np

    from bfl_private.protocols.errors import MalformedInput
    from bfl_private.protocols.plain import encode_submission, recompute_from_submissions

    good = encode_submission(np.full(3, 0.5, np.float32))
    nan = encode_submission(np.array([0.1, np.nan, 0.2], np.float32))
    big = encode_submission(np.array([0.1, 1.5, 0.2], np.float32))
    transcript = {"protocol": "plain", "round": 1, "included": ["a", "b", "c", "d"], "bound": 1.0}
    cases = [({"a": good, "b": big, "c": nan, "d": b"junk"}, "'b' was accepted but has value 1.5"),
             ({"a": good, "b": nan, "c": big, "d": good}, "'b' was accepted but has non-finite"),
             ({"a": good, "b": b"junk", "c": big, "d": good}, "'b' is not a safetensors blob"),
             ({"a": good, "b": good, "c": good, "d": big}, "'d' was accepted")]
    for submissions, message in cases:
        with pytest.raises(MalformedInput, match=message):
            recompute_from_submissions(transcript, submissions)
    total = recompute_from_submissions(transcript, {c: good for c in "abcd"})
    assert total.tolist() == [2.0, 2.0, 2.0]


def test_an_audit_whose_second_process_refuses_work_is_the_same_audit(ledger: Path, monkeypatch) -> None:
    from bfl_private.ledger import verify

    expected = audit(ledger, workers=1).to_json()
    monkeypatch.setattr(verify, "ProcessPoolExecutor", RefusingPool)
    assert audit(ledger, workers=2).to_json() == expected
