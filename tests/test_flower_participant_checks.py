"""Hospitals check what a round opening asks of them (issue 15 item 3), over Flower's code path.

A server holding the coordinator key signs an opening that weakens the hospitals'
protection (k or t below genesis, a smaller cohort, another protocol, a stale or skipped
round, a wrong base model) and sends it instead of the one it commits. Each hospital
refuses by name before it trains, records the refusal in its participation record, and
the round's abort (or close) names it; the ledger still verifies.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from flower_transports import synced_federation
from test_flower_round import make_federation

from bfl_private.audit import audit
from bfl_private.coordinator import Federation
from bfl_private.rounds.hospital import Hospital
from bfl_private.rounds.loopback import LoopbackTransport
from bfl_private.rounds.engine import RoundEngine
from bfl_private.ledger.cid import cid_for
from bfl_private.ledger.entries import ABORT, ROUND_CLOSE, ROUND_OPEN, Entry
from bfl_private.participant_checks import AlreadySubmitted

Rewrite = Callable[[dict[str, Any], int], tuple[dict[str, Any], int]]


class RewritingTransport(LoopbackTransport):
    """Shows ``victims`` (all when None) a re-signed, rewritten round opening."""

    def __init__(self, hospitals: Mapping[int, Hospital], *, federation: Federation, rewrite: Rewrite,
                 victims: set[str] | None = None) -> None:
        super().__init__(hospitals)
        self.coordinator = federation.coordinator.identity
        self.rewrite, self.victims = rewrite, victims

    def exchange(self, stage: str, requests, *, round_id: int):  # type: ignore[no-untyped-def]
        if stage in ("advertise", "encrypt"):
            requests = {n: self._rewritten(r) if self.victims is None or self.hospitals[n].name in self.victims
                        else r for n, r in requests.items()}
        return super().exchange(stage, requests, round_id=round_id)

    def _rewritten(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        opened = Entry.from_bytes(fields["round-open"], where="test")
        payload, round_id = self.rewrite(dict(opened.payload), opened.round)
        entry = Entry.create(self.coordinator, ROUND_OPEN, round_id, payload)
        return {**fields, "round-open": entry.to_bytes(), "round": round_id}


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory):
    """A federation (genesis: SecAgg, the complete graph) whose hospitals sync its ledger,
    after one honest round (recorded)."""
    federation, hospitals, plan, recorder = synced_federation(tmp_path_factory.mktemp("participant-checks"))
    yield federation, hospitals, plan, recorder
    federation.close()


def _entries(federation: Federation, round_id: int, kind: str) -> list[Mapping[str, Any]]:
    return [e.payload for e in federation.ledger.entries() if e.round == round_id and e.type == kind]


def _participants(payload: dict[str, Any], r: int) -> tuple[dict[str, Any], int]:
    return {**payload, "participants": payload["participants"][:2]}, r


CASES: list[tuple[str, Rewrite, str]] = [
    ("k below genesis", lambda p, r: ({**p, "protocol_params": {**p["protocol_params"], "neighbours": 2}}, r),
     "WeakParameters"),
    ("t below k's rule", lambda p, r: ({**p, "protocol_params": {**p["protocol_params"], "threshold": 2}}, r),
     "WeakParameters"),
    ("a smaller cohort", _participants, "TooSmallCohort"),
    ("another protocol", lambda p, r: ({**p, "protocol": "plain"}, r), "UnknownProtocol"),
    ("a closed round", lambda p, r: (p, r - 1), "StaleRound"),
    ("a round submitted in", lambda p, r: (p, 1), "AlreadySubmitted"),
    ("a skipped round", lambda p, r: (p, r + 1), "StaleRound"),
    ("a wrong base model", lambda p, r: ({**p, "base_model_cid": cid_for(b"another model")}, r), "WrongBaseModel"),
]


@pytest.mark.parametrize(("what", "rewrite", "error"), CASES, ids=[c[0] for c in CASES])
def test_a_weakened_opening_is_refused_by_name_and_recorded(fed, what: str, rewrite: Rewrite, error: str) -> None:
    federation, hospitals, plan, _ = fed
    spent = {h.name: len(h.history()) for h in hospitals.values()}
    lines: list[str] = []
    driver = RoundEngine(federation, plan, RewritingTransport(hospitals, federation=federation, rewrite=rewrite),
                         log=lines.append)
    summary = driver.run()
    assert summary.status == "aborted", lines
    refusing = {h.name for h in hospitals.values()} if what != "a smaller cohort" else \
        set(driver.participants[:2])
    assert set(driver.declined) == refusing and all(error in r for r in driver.declined.values())
    abort = _entries(federation, summary.round, ABORT)[0]
    assert all(f"{c}: refused the round" in abort["reason"] for c in refusing) and error in abort["reason"]
    for hospital in hospitals.values():
        assert len(hospital.history()) == spent[hospital.name], "a refused opening costs no ε"
        if hospital.name in refusing:
            assert hospital.participation()["refused"][-1]["error"] == error
    assert audit(federation.directory).ok


def test_one_hospital_shown_a_weak_opening_is_named_in_the_close(fed) -> None:
    federation, hospitals, plan, _ = fed
    victim = sorted(h.name for h in hospitals.values())[1]
    weak = CASES[0][1]
    summary = RoundEngine(federation, plan, RewritingTransport(hospitals, federation=federation, rewrite=weak,
                                                               victims={victim})).run()
    assert summary.status != "aborted" and victim not in summary.survivors
    close = _entries(federation, summary.round, ROUND_CLOSE)[0]
    assert "WeakParameters" in close["rejected"][victim] and victim not in close["dropouts"]
    assert audit(federation.directory).ok


def test_a_repeated_advertise_after_submission_is_refused(fed) -> None:
    """The issue's replay: advertise again for a round the hospital submitted in, on a fresh
    Context.state: no retraining, no second spend for the round id."""
    _, hospitals, _, recorder = fed
    node = min(hospitals)
    before = hospitals[node].history()
    with pytest.raises(AlreadySubmitted, match="already submitted in round"):
        hospitals[node].handle(dict(recorder.requests["advertise"][node]), None)
    assert hospitals[node].history() == before
    assert hospitals[node].participation()["refused"][-1]["error"] == "AlreadySubmitted"


def test_the_hospitals_take_part_in_the_next_honest_round(fed) -> None:
    federation, hospitals, plan, _ = fed
    summary = RoundEngine(federation, plan, LoopbackTransport(hospitals)).run()
    assert summary.status != "aborted" and len(summary.survivors) == len(hospitals)
    assert audit(federation.directory).ok


def test_without_a_ledger_copy_round_one_starts_from_the_genesis_model(tmp_path: Path) -> None:
    federation, hospitals = make_federation(tmp_path)
    try:
        plan = federation.plan(epsilon=2.0, rounds=1, skip_exhausted=False)
        wrong = CASES[-1][1]
        driver = RoundEngine(federation, plan, RewritingTransport(hospitals, federation=federation, rewrite=wrong))
        assert driver.run().status == "aborted"
        assert all("WrongBaseModel" in r for r in driver.declined.values()) and len(driver.declined) == len(hospitals)
        assert audit(federation.directory).ok
    finally:
        federation.close()
