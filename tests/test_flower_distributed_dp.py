"""Distributed DP over the Flower round (loopback transport): the hospitals compute their
own integer shares, the server steps its optimiser on the noisy sum, and the ledger the
round writes verifies. A hospital refuses a plan that breaks genesis before it computes
anything, so a server cannot have it release a share with less noise than promised.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

import bfl_private.validator as validator_module
from bfl_private.audit import audit
from bfl_private.config import GenesisChoice
from bfl_private.coordinator import Federation
from bfl_private.rounds.hospital import PARTICIPATION_FILE, Hospital
from bfl_private.rounds.loopback import LoopbackTransport
from bfl_private.rounds.engine import RoundEngine
from bfl_private.flower.setup import export_hospitals
from bfl_private.ledger.entries import ABORT, ROUND_CLOSE, SUBMISSION
from bfl_private.privacy.accounting import SkellamRecord, privacy_record_from_json
from bfl_private.privacy.skellam import ShareParameters
from bfl_private.runner import RoundOptions, run_command
from bfl_private.validator_service import QuorumNotReached


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A distributed-DP federation after one in-process round."""
    directory = tmp_path_factory.mktemp("flower-distributed")
    report = run_command(directory / "federation", RoundOptions(epsilon=1.0, rounds=1, dp="distributed",
                                                                protocol="masking", budget=100.0), quiet=True)
    assert [r.status for r in report.rounds] == ["accepted"]
    return directory


@pytest.fixture(scope="module")
def made_strict(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same with t = 1: N - t = 9 shares, while masking (7 of 9 neighbours) unmasks 8."""
    directory = tmp_path_factory.mktemp("flower-distributed-strict")
    run_command(directory / "federation", RoundOptions(
        epsilon=1.0, rounds=1, dp="distributed", protocol="masking", budget=100.0,
        genesis=(GenesisChoice("privacy.collusion_threshold", 1, "test"),)), quiet=True)
    return directory


def _deployment(made: Path, tmp_path: Path):
    shutil.copytree(made, tmp_path / "copy")
    federation = Federation.open(tmp_path / "copy" / "federation")
    folders = export_hospitals(federation, tmp_path / "copy" / "hospitals")
    hospitals = {1000 + i: Hospital.from_node_config({"hospital-dir": str(folders[c])})
                 for i, c in enumerate(sorted(folders))}
    return federation, hospitals


@pytest.fixture
def deployment(made: Path, tmp_path: Path):
    federation, hospitals = _deployment(made, tmp_path)
    yield federation, hospitals
    federation.close()


@pytest.fixture
def strict_deployment(made_strict: Path, tmp_path: Path):
    federation, hospitals = _deployment(made_strict, tmp_path)
    yield federation, hospitals
    federation.close()


def test_a_distributed_round_over_flower_verifies(deployment) -> None:
    federation, hospitals = deployment
    plan = federation.plan(epsilon=1.0, rounds=1, skip_exhausted=False)
    assert plan.distributed is not None
    before = {h.name: h.history() for h in hospitals.values()}  # export_hospitals copies each one's past spend
    summary = RoundEngine(federation, plan, LoopbackTransport(hospitals, drop={"hospital-03": "mask"})).run()
    assert summary.status == "accepted", summary
    assert "hospital-03" in summary.dropouts and len(summary.survivors) == len(hospitals) - 1
    planned = federation.planned_records(plan, sorted(plan.clients))
    round_entries = [e for e in federation.ledger.entries() if e.round == summary.round]
    signed = {e.payload["client"]: e.payload["privacy"] for e in round_entries if e.type == SUBMISSION}
    assert sorted(signed) == sorted(summary.survivors)
    for hospital in hospitals.values():
        added = hospital.history()[len(before[hospital.name]):]
        if hospital.name in signed:
            record = privacy_record_from_json(signed[hospital.name], where="test")
            assert isinstance(record, SkellamRecord) and record == planned[hospital.name]
            assert added == [record]  # the hospital's own history holds what it signed
        else:
            assert added == []
    close = next(e for e in round_entries if e.type == ROUND_CLOSE)
    assert close.payload["dropouts"] == ["hospital-03"]
    report = audit(federation.directory)
    assert report.ok, report.to_json()


def _weaker(plan):
    """The plan on a coarser grid: each hospital's rounded gradient would carry less of the
    noise the record claims relative to its sensitivity. Genesis fixes the scale."""
    shares = plan.distributed.shares
    return dataclasses.replace(plan, distributed=dataclasses.replace(plan.distributed, shares=ShareParameters(
        scale=shares.scale * 4, clipping_norm=shares.clipping_norm, beta=shares.beta,
        sample_rate=shares.sample_rate, share_variance=shares.share_variance)))


def test_validators_seed_no_round_whose_plan_breaks_genesis(deployment) -> None:
    federation, hospitals = deployment
    plan = federation.plan(epsilon=1.0, rounds=1, skip_exhausted=False)
    head = federation.ledger.head.hash()
    with pytest.raises(QuorumNotReached, match="scale"):
        RoundEngine(federation, _weaker(plan), LoopbackTransport(hospitals)).run()
    assert federation.ledger.head.hash() == head


def test_hospitals_refuse_a_plan_with_weaker_noise_parameters(deployment, monkeypatch) -> None:
    # Validators that beacon without checking the plan: the hospitals are left to refuse.
    monkeypatch.setattr(validator_module, "check_distributed_round", lambda *a, **k: None)
    federation, hospitals = deployment
    plan = federation.plan(epsilon=1.0, rounds=1, skip_exhausted=False)
    before = {h.name: h.history() for h in hospitals.values()}
    summary = RoundEngine(federation, _weaker(plan), LoopbackTransport(hospitals)).run()
    assert summary.status == "aborted"
    assert set(summary.rejected) == set(plan.clients)
    assert all("WeakParameters" in reason and "scale" in reason for reason in summary.rejected.values())
    for hospital in hospitals.values():
        assert hospital.history() == before[hospital.name]  # nothing computed, nothing spent
        refused = json.loads(hospital.history_path.with_name(PARTICIPATION_FILE).read_text())["refused"]
        assert [r["error"] for r in refused] == ["WeakParameters"]
    # The coordinator signed an opening genesis forbids: the auditor names it.
    report = audit(federation.directory)
    assert not report.ok and "scale" in json.dumps(report.to_json())


def test_no_hospital_helps_unmask_fewer_than_n_minus_t_shares(strict_deployment) -> None:
    """Ten hospitals, t = 1: masking alone would unmask 8 survivors (each keeps 7 of its 9
    neighbours, its threshold), but their sum carries 8/9 of the noise every record claims.
    Each survivor refuses to acknowledge such a set, so no sum is ever decoded."""
    federation, hospitals = strict_deployment
    plan = federation.plan(epsilon=1.0, rounds=1, skip_exhausted=False)
    gone = {name: "mask" for name in sorted(plan.clients)[:2]}
    lines: list[str] = []
    summary = RoundEngine(federation, plan, LoopbackTransport(hospitals, drop=gone), log=lines.append).run()
    assert summary.status == "aborted"
    survivors = sorted(set(plan.clients) - set(gone))
    for hospital in hospitals.values():
        if hospital.name in survivors:
            refusal = hospital.participation()["refused"][-1]
            assert refusal["error"] == "TooFewSurvivors" and "N - t = 9" in refusal["reason"]
    abort = next(e for e in federation.ledger.entries() if e.type == ABORT and e.round == summary.round)
    assert abort.payload["stage"] == "unmask", lines  # the protocol names its consistency check so
    # their masked inputs had left them: each survivor is charged, as the abort records
    assert sorted(abort.payload["cumulative_epsilon"]) == survivors
    assert audit(federation.directory).ok


def test_hospitals_refuse_a_plan_for_another_dimension(deployment, monkeypatch) -> None:
    monkeypatch.setattr(validator_module, "check_distributed_round", lambda *a, **k: None)
    federation, hospitals = deployment
    plan = federation.plan(epsilon=1.0, rounds=1, skip_exhausted=False)
    small = dataclasses.replace(plan, distributed=dataclasses.replace(plan.distributed, dimension=1))
    before = {h.name: h.history() for h in hospitals.values()}
    summary = RoundEngine(federation, small, LoopbackTransport(hospitals)).run()
    assert summary.status == "aborted"
    assert all("dimension 1" in why for why in summary.rejected.values()) and set(summary.rejected) == set(plan.clients)
    assert all(h.history() == before[h.name] for h in hospitals.values())  # no false record was signed
