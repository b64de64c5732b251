"""The in-process engine's simulated participants check the opening they are shown, as
Flower hospitals do (issue 15 item 3); and the check itself, rule by rule."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from bfl_private.audit import audit
from bfl_private.coordinator import COORDINATOR, Federation
from bfl_private.ledger.cid import cid_for
from bfl_private.ledger.entries import ABORT, ROUND_CLOSE, ROUND_OPEN, Entry
from bfl_private.participant_checks import (
    AlreadySubmitted,
    ParticipantView,
    StaleRound,
    TooSmallCohort,
    UnknownProtocol,
    WeakParameters,
    WrongBaseModel,
    check_opening,
    minimum_cohort,
)
from bfl_private.settings import FederationSettings, PrivacySettings, ProtocolSettings

Rewrite = Callable[[dict[str, Any], int], tuple[dict[str, Any], int]]


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory):
    base = FederationSettings(n_clients=5)
    settings = dataclasses.replace(base, training=dataclasses.replace(base.training, local_steps=1))
    federation = Federation.create(tmp_path_factory.mktemp("in-process-checks") / "fed", settings, model_seed=0)
    plan = federation.plan(epsilon=2.0, rounds=10, skip_exhausted=False)
    yield federation, plan
    federation.close()


def _show(monkeypatch: pytest.MonkeyPatch, federation: Federation, rewrite: Rewrite,
          victims: set[str] | None = None) -> None:
    """The coordinator shows (victims of) the participants a re-signed, rewritten opening."""
    coordinator = federation.coordinator.identity

    def shown(self: Federation, opening: Entry, client: str) -> Entry:
        if victims is not None and client not in victims:
            return opening
        payload, round_id = rewrite(dict(opening.payload), opening.round)
        return Entry.create(coordinator, ROUND_OPEN, round_id, payload)

    monkeypatch.setattr(Federation, "_shown_opening", shown)


def _run(federation: Federation, plan) -> Any:
    return federation.run_round(plan, protocol="masking", dropout=0.0, malicious=0, rng=np.random.default_rng(0))


def _entries(federation: Federation, round_id: int, kind: str) -> list[dict[str, Any]]:
    return [e.payload for e in federation.ledger.entries() if e.round == round_id and e.type == kind]


CASES: list[tuple[str, Rewrite, str]] = [
    ("k below genesis", lambda p, r: ({**p, "protocol_params": {**p["protocol_params"], "neighbours": 2}}, r),
     "WeakParameters"),
    ("t below k's rule", lambda p, r: ({**p, "protocol_params": {**p["protocol_params"], "threshold": 2}}, r),
     "WeakParameters"),
    ("a smaller cohort", lambda p, r: ({**p, "participants": p["participants"][:2]}, r), "TooSmallCohort"),
    ("another protocol", lambda p, r: ({**p, "protocol": "plain"}, r), "UnknownProtocol"),
    ("a closed round", lambda p, r: (p, r - 1), "StaleRound"),
    ("a wrong base model", lambda p, r: ({**p, "base_model_cid": cid_for(b"another model")}, r), "WrongBaseModel"),
]


def test_an_honest_round_passes_every_participant_check(fed) -> None:
    federation, plan = fed
    summary = _run(federation, plan)
    assert summary.status != "aborted" and len(summary.survivors) == 5 and summary.rejected == {}


@pytest.mark.parametrize(("what", "rewrite", "error"), CASES, ids=[c[0] for c in CASES])
def test_participants_refuse_a_weakened_opening_by_name(fed, monkeypatch, what: str, rewrite: Rewrite,
                                                        error: str) -> None:
    federation, plan = fed
    _show(monkeypatch, federation, rewrite)
    summary = _run(federation, plan)
    assert summary.status == "aborted"
    assert set(summary.rejected) == set(plan.clients) and all(error in r for r in summary.rejected.values())
    abort = _entries(federation, summary.round, ABORT)[0]
    assert abort["cumulative_epsilon"] == {}, "nobody trained"
    assert all(f"{c}: refused the round opening: {error}" in abort["reason"] for c in plan.clients)
    assert audit(federation.directory).ok


def test_one_participant_shown_a_weak_opening_is_rejected_by_name(fed, monkeypatch) -> None:
    federation, plan = fed
    victim = sorted(plan.clients)[0]
    _show(monkeypatch, federation, CASES[0][1], victims={victim})
    summary = _run(federation, plan)
    assert summary.status != "aborted" and victim not in summary.survivors
    close = _entries(federation, summary.round, ROUND_CLOSE)[0]
    assert "WeakParameters" in close["rejected"][victim] and victim not in close["dropouts"]
    assert audit(federation.directory).ok


# --- the check, rule by rule ------------------------------------------------------------------


def _opening(settings: FederationSettings, **changes: Any) -> Entry:
    from bfl_private.ledger.identity import SigningIdentity

    payload = {"participants": [f"h{i}" for i in range(5)], "protocol": "masking",
               "protocol_params": {"codec": {}, "neighbours": None}, "base_model_cid": cid_for(b"model"),
               "privacy_plan": {}}
    round_id = changes.pop("round", 4)
    payload.update(changes)
    return Entry.create(SigningIdentity.from_private_bytes(COORDINATOR, b"\1" * 32), ROUND_OPEN, round_id, payload)


VIEW = ParticipantView(model_cid=cid_for(b"model"), last_round=3, opened=frozenset({2}), submitted=frozenset({2}))


@pytest.mark.parametrize(("settings", "changes", "error"), [
    (FederationSettings(), {}, None),
    (FederationSettings(), {"protocol": "plain"}, UnknownProtocol),
    (FederationSettings(protocol=ProtocolSettings(name="plain")), {"protocol": "plain"}, None),
    (FederationSettings(privacy=PrivacySettings(mode="distributed")), {"protocol": "ckks"}, UnknownProtocol),
    (FederationSettings(), {"protocol_params": {"neighbours": 3}}, WeakParameters),
    (FederationSettings(), {"protocol_params": {"neighbours": 4}}, None),  # k = N - 1: the complete graph
    (FederationSettings(protocol=ProtocolSettings(neighbours=4)), {"protocol_params": {"neighbours": 2}},
     WeakParameters),
    (FederationSettings(), {"protocol_params": {"neighbours": None, "threshold": 2}}, WeakParameters),
    (FederationSettings(), {"protocol_params": {"neighbours": None, "threshold": 3}}, None),
    (FederationSettings(), {"participants": ["h0", "h1"]}, TooSmallCohort),
    (FederationSettings(), {"base_model_cid": cid_for(b"other")}, WrongBaseModel),
    (FederationSettings(), {"round": 3}, StaleRound),
    (FederationSettings(), {"round": 5}, StaleRound),
    (FederationSettings(), {"round": 2}, AlreadySubmitted),
])
def test_the_check_rule_by_rule(settings: FederationSettings, changes: dict[str, Any], error) -> None:
    opening = _opening(settings, **changes)
    if error is None:
        check_opening(opening, settings=settings, participant="h0", view=VIEW)
    else:
        with pytest.raises(error, match="h0 refuses round"):
            check_opening(opening, settings=settings, participant="h0", view=VIEW)


def test_minimum_cohorts() -> None:
    assert minimum_cohort(FederationSettings(), "masking") == 3
    assert minimum_cohort(FederationSettings(protocol=ProtocolSettings(neighbours=6)), "masking") == 6
    assert minimum_cohort(FederationSettings(), "paillier") == 2
    distributed = FederationSettings(n_clients=10, privacy=PrivacySettings(mode="distributed", collusion_threshold=3))
    assert minimum_cohort(distributed, "masking") == 5
