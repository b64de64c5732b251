"""The Flower round's server and hospital sides over the in-process loopback transport.

Same code as over Flower (only the transport differs): the ledger written must verify,
dropouts at every stage are handled as in-process, and a tampered submission is refused.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bfl_private.ledger.entries import ABORT, ROUND_CLOSE, SUBMISSION
from flower_transports import TamperingTransport

from bfl_private.audit import audit
from bfl_private.coordinator import CommandPlan, Federation
from bfl_private.rounds.hospital import HISTORY_FILE, Hospital
from bfl_private.rounds.loopback import LoopbackTransport
from bfl_private.rounds.engine import RoundEngine
from bfl_private.flower.setup import export_hospitals
from bfl_private.rounds.stages import STAGES
from bfl_private.settings import FederationSettings

N = 5


def make_federation(directory: Path, *, budget: float = 50.0) -> tuple[Federation, dict[int, Hospital]]:
    base = FederationSettings()
    settings = dataclasses.replace(
        base, n_clients=N, training=dataclasses.replace(base.training, local_steps=2),
        privacy=dataclasses.replace(base.privacy, lifetime_epsilon=budget))
    federation = Federation.create(directory / "federation", settings, model_seed=0)
    folders = export_hospitals(federation, directory / "hospitals")
    hospitals = {1000 + i: Hospital.from_node_config({"hospital-dir": str(folders[c])})
                 for i, c in enumerate(sorted(folders))}
    return federation, hospitals


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Federation, dict[int, Hospital], CommandPlan]:
    federation, hospitals = make_federation(tmp_path_factory.mktemp("flower-round"))
    plan = federation.plan(epsilon=2.0, rounds=10, skip_exhausted=False)
    yield federation, hospitals, plan
    federation.close()


def _round(shared, **drop: str) -> tuple[Any, list[str], RoundEngine]:
    federation, hospitals, plan = shared
    lines: list[str] = []
    driver = RoundEngine(federation, plan, LoopbackTransport(hospitals, drop=drop), log=lines.append)
    return driver.run(), lines, driver


def _entries(federation: Federation, round_id: int) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list[Mapping[str, Any]]] = {}
    for entry in federation.ledger.entries():
        if entry.round == round_id:
            out.setdefault(entry.type, []).append(entry.payload)
    return out


def test_round_closes_and_the_ledger_verifies(shared) -> None:
    federation, hospitals, _ = shared
    summary, _, _ = _round(shared)
    assert summary.status in ("accepted", "rejected") and len(summary.survivors) == N
    entries = _entries(federation, summary.round)
    assert entries[ROUND_CLOSE][0]["dropouts"] == []
    # each hospital's own privacy history holds exactly the record it signed into the ledger
    for hospital in hospitals.values():
        signed = [s["privacy"] for s in entries[SUBMISSION] if s["client"] == hospital.name]
        kept = json.loads((hospital.history_path.parent / HISTORY_FILE).read_text())
        assert signed == [kept[-1]]
    report = audit(federation.directory)
    assert report.ok, report.to_json()


@pytest.mark.parametrize("stage", STAGES)
def test_one_hospital_lost_at_any_stage(shared, stage: str) -> None:
    federation, hospitals, _ = shared
    victim = sorted(h.name for h in hospitals.values())[2]
    summary, _, _ = _round(shared, **{victim: stage})
    close = _entries(federation, summary.round)[ROUND_CLOSE][0]
    if STAGES.index(stage) <= STAGES.index("mask"):
        assert close["dropouts"] == [victim] and victim not in close["survivors"]
    else:  # its masked input was summed already: its self-mask is rebuilt from shares
        assert close["dropouts"] == [] and victim in close["survivors"]
    assert audit(federation.directory).ok


def test_too_many_losses_abort_and_the_abort_is_recorded(shared) -> None:
    federation, hospitals, _ = shared
    names = sorted(h.name for h in hospitals.values())
    summary, lines, _ = _round(shared, **{names[0]: "mask", names[1]: "mask"})
    assert summary.status == "aborted"
    abort = _entries(federation, summary.round)[ABORT][0]
    assert abort["stage"] in ("mask", "unmask") and set(abort["survivors"]).isdisjoint(names[:2])
    assert any("aborted" in line for line in lines)
    # The spending rule: the three whose masked inputs left them are charged by the abort,
    # with the records they signed; the two gone before masking are not.
    sent = {s["client"] for s in _entries(federation, summary.round)[SUBMISSION]}
    assert sent == set(names[2:]) == set(abort["cumulative_epsilon"])
    assert audit(federation.directory).ok


def test_a_submission_that_does_not_name_its_masked_input_is_refused(shared) -> None:
    federation, hospitals, plan = shared
    victim = sorted(h.name for h in hospitals.values())[1]
    driver = RoundEngine(federation, plan, TamperingTransport(hospitals, victim=victim, stage="mask", field="masked-input"))
    summary = driver.run()
    assert summary.dropouts == (victim,)
    assert set(driver.failures) == {victim} and "blob_cid does not name the masked input" in driver.failures[victim]
    assert audit(federation.directory).ok


def test_a_hospital_refuses_to_train_past_its_lifetime_budget(tmp_path: Path) -> None:
    federation, hospitals = make_federation(tmp_path, budget=0.5)
    try:
        # a plan that the coordinator's own budget check would refuse: force it through
        plan = federation.plan(epsilon=0.4, rounds=1, skip_exhausted=False)
        greedy = CommandPlan(5.0, 1, {c: dataclasses.replace(p, noise_multiplier=0.6) for c, p in plan.clients.items()}, {})
        lines: list[str] = []
        summary = RoundEngine(federation, greedy, LoopbackTransport(hospitals), log=lines.append).run()
        assert summary.status == "aborted"
        # refused by name at the opening, before any key is made or anything trained
        assert set(summary.rejected) == {h.name for h in hospitals.values()}
        assert all("OverBudget" in why and "past its lifetime budget" in why for why in summary.rejected.values())
        for hospital in hospitals.values():  # nothing was trained, nothing was spent
            assert hospital.history() == []
            assert hospital.participation()["refused"][-1]["stage"] == "advertise"
        assert audit(federation.directory).ok
    finally:
        federation.close()


def test_masked_totals_match_an_independent_sum(shared) -> None:
    """The posted aggregate is the exact decoded sum of the survivors' encoded payloads."""
    federation, _, _ = shared
    summary, _, _ = _round(shared)
    from bfl_private.artifacts import get_aggregate

    close = _entries(federation, summary.round)[ROUND_CLOSE][0]
    total = get_aggregate(federation.ledger.blobs, close["aggregate_cid"])
    assert total.shape[0] == federation.current_model().shape[0] + 1
    weights = {c: v["data_weight"] for c, v in federation.ledger.state.clients().items()}
    expected_weight = sum(weights[c] for c in close["survivors"]) / max(weights.values())
    assert np.isclose(total[-1], expected_weight, atol=1e-3)


def test_a_hospital_that_shrinks_the_weight_gets_the_round_refused_and_recorded(
        shared, monkeypatch: pytest.MonkeyPatch) -> None:
    """The attack that blew the FedAvg step up ~5e5 in-process, over Flower: the weights
    are public, so the decoded total weight must be the survivors' registered weights."""
    federation, hospitals, _ = shared
    attacker = next(h for h in hospitals.values() if h.name == sorted(h.name for h in hospitals.values())[3])
    honest = attacker._train

    def shrunk(*args: Any) -> Any:
        vector, records, privacy = honest(*args)
        vector[-1] = -vector[-1] + 1e-4  # the sum's weight: everyone else's, cancelled by this one
        return vector, records, privacy

    monkeypatch.setattr(attacker, "_train", shrunk)
    summary, lines, _ = _round(shared)
    assert summary.status == "aborted"
    abort = _entries(federation, summary.round)[ABORT][0]
    assert abort["stage"] == "decode" and "registered weights" in abort["reason"]
    # every hospital whose masked input left it is charged by the abort
    assert set(abort["cumulative_epsilon"]) == {h.name for h in hospitals.values()}
    assert audit(federation.directory).ok
