"""The in-process round's hospitals are the Flower hospitals' code (one engine, see
``bfl_private.simulated_hospitals``): an honest round passes every participant check and
each hospital keeps its own record in its party folder; openings rewritten on the way are
refused by name in ``test_flower_participant_checks`` (same code). And the check itself,
rule by rule (issue 15 item 3)."""
from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest

from bfl_private.audit import audit
from bfl_private.coordinator import COORDINATOR, Federation
from bfl_private.ledger.cid import cid_for
from bfl_private.ledger.entries import ROUND_OPEN, Entry
from bfl_private.rounds.hospital import PARTICIPATION_FILE
from bfl_private.parties import party_folder
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


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory):
    base = FederationSettings(n_clients=5)
    settings = dataclasses.replace(base, training=dataclasses.replace(base.training, local_steps=1))
    federation = Federation.create(tmp_path_factory.mktemp("in-process-checks") / "fed", settings, model_seed=0)
    plan = federation.plan(epsilon=2.0, rounds=10, skip_exhausted=False)
    yield federation, plan
    federation.close()


def _run(federation: Federation, plan) -> Any:
    return federation.run_round(plan, protocol="masking", dropout=0.0, malicious=0, rng=np.random.default_rng(0))


def _entries(federation: Federation, round_id: int, kind: str) -> list[dict[str, Any]]:
    return [e.payload for e in federation.ledger.entries() if e.round == round_id and e.type == kind]


def test_an_honest_round_passes_every_participant_check(fed) -> None:
    federation, plan = fed
    summary = _run(federation, plan)
    assert summary.status != "aborted" and len(summary.survivors) == 5 and summary.rejected == {}
    assert audit(federation.directory).ok
    for client in plan.clients:  # each hospital's own record, in its own folder, readable by it alone
        record = party_folder(federation.directory, client) / PARTICIPATION_FILE
        assert oct(record.stat().st_mode & 0o777) == "0o600"
        kept = json.loads(record.read_text())
        assert summary.round in kept["opened"] and summary.round in kept["submitted"] and kept["refused"] == []


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
