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

from bfl_private.audit import audit
from bfl_private.coordinator import Federation
from bfl_private.rounds.hospital import PARTICIPATION_FILE, Hospital
from bfl_private.rounds.loopback import LoopbackTransport
from bfl_private.rounds.engine import RoundEngine
from bfl_private.flower.setup import export_hospitals
from bfl_private.ledger.entries import ROUND_CLOSE, SUBMISSION
from bfl_private.privacy.accounting import SkellamRecord, privacy_record_from_json
from bfl_private.privacy.skellam import ShareParameters
from bfl_private.runner import RoundOptions, run_command


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A distributed-DP federation after one in-process round."""
    directory = tmp_path_factory.mktemp("flower-distributed")
    report = run_command(directory / "federation", RoundOptions(epsilon=1.0, rounds=1, dp="distributed",
                                                                protocol="masking", budget=100.0), quiet=True)
    assert [r.status for r in report.rounds] == ["accepted"]
    return directory


@pytest.fixture
def deployment(made: Path, tmp_path: Path):
    shutil.copytree(made, tmp_path / "copy")
    federation = Federation.open(tmp_path / "copy" / "federation")
    folders = export_hospitals(federation, tmp_path / "copy" / "hospitals")
    hospitals = {1000 + i: Hospital.from_node_config({"hospital-dir": str(folders[c])})
                 for i, c in enumerate(sorted(folders))}
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


def test_hospitals_refuse_a_plan_with_weaker_noise_parameters(deployment) -> None:
    federation, hospitals = deployment
    plan = federation.plan(epsilon=1.0, rounds=1, skip_exhausted=False)
    shares = plan.distributed.shares
    # A coarser grid: each hospital's rounded gradient would carry less of the noise the
    # record claims relative to its sensitivity. Genesis fixes the scale, so they refuse.
    weaker = dataclasses.replace(plan.distributed, shares=ShareParameters(
        scale=shares.scale * 4, clipping_norm=shares.clipping_norm, beta=shares.beta,
        sample_rate=shares.sample_rate, share_variance=shares.share_variance))
    before = {h.name: h.history() for h in hospitals.values()}
    summary = RoundEngine(federation, dataclasses.replace(plan, distributed=weaker), LoopbackTransport(hospitals)).run()
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
