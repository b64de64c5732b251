"""Distributed DP in the round engine: shares in the secure sum, accounting, dropouts, audit.

A federation created with ``--dp distributed`` has each hospital send its sampled, clipped,
rounded gradient sum plus a Skellam share inside masking or Paillier; the server's Adam
steps on the noisy sum. These tests check what the ledger then claims against independent
recomputations, that more than t dropouts abort before anything is decoded, and that the
auditor catches a coordinator (with a colluding validator quorum) that understates the
noise, rewrites the plan or decodes a sum of too few shares.
"""
from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bfl_private.rounds.hospital as hospital_module
import bfl_private.rounds.engine as engine_module
import bfl_private.distributed_round as distributed_round
from bfl_private.artifacts import get_model, get_server_state
from bfl_private.audit import audit
from bfl_private.config import GenesisChoice
from bfl_private.coordinator import Federation
from bfl_private.distributed_round import DistributedPlan, ServerState, next_model, plan_round
from bfl_private.ledger.entries import ABORT, ROUND_CLOSE, ROUND_OPEN, SUBMISSION
from bfl_private.ledger.store import Ledger
from bfl_private.privacy.accounting import (
    HistorySummary,
    PrivacyRecord,
    SkellamRecord,
    privacy_record_from_json,
    recorded_epsilon,
)
from bfl_private.privacy.errors import ConfigurationError, MalformedPrivacyRecord
from bfl_private.privacy.skellam import distributed_skellam_epsilon
from bfl_private.protocols.base import ForgedInput
from bfl_private.round_checks import spend_rule_violation
from bfl_private.runner import RoundOptions, run_command
from bfl_private.settings import FederationSettings, PrivacySettings, ProtocolSettings, SettingsError
from bfl_private.validator import Validator
from round_fixtures import ScriptedDrops, rubber_stamp

EPSILON, ROUNDS = 1.0, 3


def run(directory: Path, **overrides: object):
    options = {"epsilon": EPSILON, "rounds": ROUNDS, "dp": "distributed", "protocol": "masking", "budget": 100.0,
               **overrides}
    return run_command(directory, RoundOptions(**options), quiet=True)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("distributed") / "fed"
    report = run(directory)
    assert [r.status for r in report.rounds] == ["accepted"] * ROUNDS
    return directory


@pytest.fixture(scope="module")
def strict_federation(tmp_path_factory) -> Path:
    """t = 1: two dropouts still unmask (SecAgg+'s threshold is 7 of 9 neighbours) but leave
    fewer than N - t = 9 shares, so only the distributed-DP rule stands in the way."""
    directory = tmp_path_factory.mktemp("strict") / "fed"
    run(directory, rounds=1, genesis=(GenesisChoice("privacy.collusion_threshold", 1, "test"),))
    return directory


@pytest.fixture
def copy(federation: Path, tmp_path: Path) -> Path:
    target = tmp_path / "fed"
    shutil.copytree(federation, target)
    return target


@pytest.fixture
def strict_copy(strict_federation: Path, tmp_path: Path) -> Path:
    target = tmp_path / "strict"
    shutil.copytree(strict_federation, target)
    return target


def _round_entries(directory: Path, round_id: int):
    with Ledger.open(directory) as ledger:
        return [e for e in ledger.entries() if e.round == round_id]


def test_every_record_is_the_plans_and_the_charge_is_recomputed_independently(federation: Path) -> None:
    assert audit(federation).ok
    with Ledger.open(federation) as ledger:
        entries = ledger.entries()
        settings = FederationSettings.from_json(ledger.genesis().payload["settings"])
        clients = ledger.state.clients()
    opened = [e for e in entries if e.type == ROUND_OPEN]
    plan = DistributedPlan.from_json(opened[0].payload["privacy_plan"], where="test")
    assert all(e.payload["privacy_plan"] == opened[0].payload["privacy_plan"] for e in opened)
    records = [privacy_record_from_json(e.payload["privacy"], where="test") for e in entries if e.type == SUBMISSION]
    assert len(records) == ROUNDS * settings.n_clients and all(isinstance(r, SkellamRecord) for r in records)
    record = records[0]
    assert (record.participants, record.collusion_threshold) == (settings.n_clients, 2)
    assert record.shares == plan.shares and record.dimension == plan.dimension
    # The N - t honest shares carry the planned noise; ε from the paper's bound, recomputed here.
    spent = distributed_skellam_epsilon(variance=(settings.n_clients - 2) * plan.shares.share_variance,
                                        scale=plan.shares.scale, clipping_norm=settings.privacy.clipping_norm,
                                        dim=plan.dimension, beta=settings.privacy.rounding_beta,
                                        sample_rate=settings.privacy.sample_rate, rounds=ROUNDS,
                                        delta=settings.privacy.delta)
    assert 0.99 * EPSILON < spent <= EPSILON  # tight, and never over
    final = next(e for e in reversed(entries) if e.type == ROUND_CLOSE).payload["cumulative_epsilon"]
    assert set(final) == set(clients)
    assert all(claim == pytest.approx(spent, rel=1e-12) for claim in final.values())
    assert all(v["epsilon_spent"] == pytest.approx(spent, rel=1e-12) for v in clients.values())


def test_the_model_chain_carries_the_optimiser_state(federation: Path) -> None:
    with Ledger.open(federation) as ledger:
        closes = [e for e in ledger.entries() if e.type == ROUND_CLOSE]
        states = [get_server_state(ledger.blobs, c.payload["new_model_cid"]) for c in closes]
        final = get_model(ledger.blobs, closes[-1].payload["new_model_cid"])
    assert [s.steps for s in states] == [1, 2, 3]
    assert final.dtype == np.float32 and np.all(np.isfinite(final))


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 6), st.integers(0, 2**31 - 1), st.sampled_from([0.05, 0.001]))
def test_the_servers_adam_is_torch_adam(steps: int, seed: int, learning_rate: float) -> None:
    rng = np.random.default_rng(seed)
    start = rng.normal(size=7).astype(np.float32)
    parameter = torch.nn.Parameter(torch.from_numpy(start.astype(np.float64)))
    optimiser = torch.optim.Adam([parameter], lr=learning_rate)
    params, state = start, ServerState.initial(7)
    for _ in range(steps):
        gradient = rng.normal(scale=rng.uniform(0.01, 10), size=7)
        parameter.grad = torch.from_numpy(gradient)
        optimiser.step()
        params, state = next_model(params, state, gradient, optimizer="adam", learning_rate=learning_rate)
        # Ours keeps float32 parameters between steps (the model blob); torch here keeps float64.
        parameter.data = torch.from_numpy(params.astype(np.float64))
        np.testing.assert_allclose(state.first_moment, optimiser.state[parameter]["exp_avg"].numpy(), rtol=1e-12)
        np.testing.assert_allclose(state.second_moment, optimiser.state[parameter]["exp_avg_sq"].numpy(), rtol=1e-12)
    assert state.steps == steps


@pytest.mark.parametrize(("ledger", "status"), [("copy", "accepted"), ("strict_copy", "aborted")])
def test_more_than_t_dropouts_abort_and_t_do_not(request: pytest.FixtureRequest, ledger: str, status: str) -> None:
    copy, gone = request.getfixturevalue(ledger), 2  # t = 2 in "copy", 1 in "strict_copy"
    fed = Federation.open(copy)
    try:
        before = {c: v["epsilon_spent"] for c, v in fed.ledger.state.clients().items()}
        plan = fed.plan(epsilon=0.5, rounds=1, skip_exhausted=False)
        participants = sorted(plan.clients)
        summary = fed.run_round(plan, protocol="masking", dropout=1.0, malicious=0,
                                rng=ScriptedDrops(participants, set(participants[:gone]), 2))  # gone at "mask"
        assert summary.status in (status, "rejected" if status == "accepted" else status)
        entries = [e for e in fed.ledger.entries() if e.round == summary.round]
        sent = {e.payload["client"] for e in entries if e.type == SUBMISSION}
        assert sent == set(participants[gone:])
        if status == "aborted":
            abort = next(e for e in entries if e.type == ABORT)
            # each survivor refused to acknowledge 9 - 1 survivors: nothing was unmasked
            assert abort.payload["stage"] == "unmask" and "TooFewSurvivors" in abort.payload["reason"]
            assert "N - t = 9" in abort.payload["reason"]
        after = fed.ledger.state.clients()
        assert all(after[c]["epsilon_spent"] > before[c] for c in sent)  # what left is charged
        assert all(after[c]["epsilon_spent"] == before[c] for c in participants[:gone])
    finally:
        fed.close()
    assert audit(copy).ok


def test_a_forged_ring_input_ends_in_a_block_and_the_ledger_verifies(copy: Path) -> None:
    fed = Federation.open(copy)
    try:
        plan = fed.plan(epsilon=0.5, rounds=1, skip_exhausted=False)
        forger = sorted(plan.clients)[0]
        words = np.random.default_rng().integers(0, 2**32, size=fed.current_model().shape[0], dtype=np.uint64).astype(np.uint32)
        summary = fed.run_round(plan, protocol="masking", dropout=0.0, malicious=0, rng=np.random.default_rng(),
                                forged={forger: ForgedInput(values=words)})
        # Uniform words land far outside the box the records and noise reach: refused, named.
        assert summary.status == "aborted"
        abort = next(e for e in _round_entries(copy, summary.round) if e.type == ABORT)
        assert "past the" in abort.payload["reason"]
    finally:
        fed.close()
    assert audit(copy).ok


def _colluding_validators(monkeypatch: pytest.MonkeyPatch) -> None:
    """Validators that sign whatever they are given: the round, its beacon and its block."""
    import bfl_private.validator as validator_module

    monkeypatch.setattr(Validator, "check_round", lambda self, entries, ledger: None)
    monkeypatch.setattr(Validator, "attest", rubber_stamp)
    monkeypatch.setattr(validator_module, "check_opening", lambda *a, **k: None)
    monkeypatch.setattr(validator_module, "check_distributed_round", lambda *a, **k: None)
    monkeypatch.setattr(validator_module, "check_round_randomness", lambda *a, **k: None)


def test_understated_noise_fails_the_audit_by_name(copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every hospital signs a record claiming twice the noise the plan gives it, and the
    # coordinator (with a colluding validator quorum) lets the records through.
    _colluding_validators(monkeypatch)
    monkeypatch.setattr(engine_module, "spend_rule_violation", lambda *a, **k: None)
    honest = hospital_module.Hospital._train

    def inflated(self, opened, base):
        vector, records, record = honest(self, opened, base)
        return vector, records, dataclasses.replace(record, share_variance=2 * record.share_variance)

    monkeypatch.setattr(hospital_module.Hospital, "_train", inflated)
    run(copy, rounds=1)
    failure = audit(copy).report.failure
    assert (failure.number, failure.name) == (10, "privacy claims")
    assert "share_variance" in failure.detail and "breaks the round's rules" in failure.detail


def test_a_plan_that_ignores_collusion_fails_the_audit(copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Sized for t = 0: each share carries 1/N of the noise, so t colluders learn more than claimed.
    # Honest participants refuse such an opening (WeakParameters, see test_app_participant_checks);
    # here they do not check, so the audit is what must catch it.
    _colluding_validators(monkeypatch)
    from bfl_private.round_checks import distributed_plan

    monkeypatch.setattr(hospital_module, "check_opening", lambda *a, **k: None)
    monkeypatch.setattr(hospital_module.Hospital, "_distributed_plan", lambda self, opened: distributed_plan(opened))
    honest = distributed_round.plan_round

    def no_collusion(settings, **kwargs):
        lax = dataclasses.replace(settings, privacy=dataclasses.replace(settings.privacy, collusion_threshold=0))
        return honest(lax, **kwargs)

    monkeypatch.setattr(distributed_round, "plan_round", no_collusion)
    run(copy, rounds=1)
    failure = audit(copy).report.failure
    assert failure.number == 8 and "collusion_threshold 0 stated, 2 required" in failure.detail


def test_a_sum_of_fewer_than_n_minus_t_shares_fails_the_audit(strict_copy: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _colluding_validators(monkeypatch)
    monkeypatch.setattr(engine_module, "distributed_violation", lambda *a, **k: None)
    # ... and hospitals that help unmask any survivor set (an honest one refuses, TooFewSurvivors)
    monkeypatch.setattr(hospital_module.Hospital, "_check_survivors", lambda self, opened, announcement: None)
    fed = Federation.open(strict_copy)
    try:
        plan = fed.plan(epsilon=0.5, rounds=1, skip_exhausted=False)
        participants = sorted(plan.clients)
        summary = fed.run_round(plan, protocol="masking", dropout=1.0, malicious=0,
                                rng=ScriptedDrops(participants, set(participants[:2]), 2))
        assert summary.status != "aborted"
    finally:
        fed.close()
    failure = audit(strict_copy).report.failure
    assert failure.number == 8 and "needs at least N - t = 9" in failure.detail


@pytest.mark.slow
def test_paillier_validators_refuse_to_decrypt_fewer_than_n_minus_t(tmp_path: Path) -> None:
    directory = tmp_path / "fed"
    report = run(directory, protocol="paillier", rounds=1,
                 genesis=(GenesisChoice("protocol.paillier_key_bits", 2048, "test"),))
    assert report.rounds[0].status == "accepted"
    fed = Federation.open(directory)
    try:
        plan = fed.plan(epsilon=0.5, rounds=1, skip_exhausted=False)
        participants = sorted(plan.clients)
        summary = fed.run_round(plan, protocol="paillier", dropout=1.0, malicious=0,
                                rng=ScriptedDrops(participants, set(participants[:3]), 0))  # never sent
        assert summary.status == "aborted"
        abort = next(e for e in fed.ledger.entries() if e.round == summary.round and e.type == ABORT)
        assert abort.payload["stage"] == "decrypt" and "at least 8 inputs" in abort.payload["reason"]
    finally:
        fed.close()
    assert audit(directory).ok


def test_the_plan_refuses_a_sum_that_could_wrap_and_t_without_honest_noise() -> None:
    settings = FederationSettings(privacy=PrivacySettings(mode="distributed"))
    with pytest.raises(ConfigurationError, match="past the signed 32-bit range"):
        plan_round(settings, records=[2**28] * 10, dimension=10**6, epsilon=1.0, rounds=1)
    with pytest.raises(ConfigurationError, match="fewer than 2 honest shares"):
        plan_round(settings, records=[10] * 3, dimension=62, epsilon=1.0, rounds=1)
    with pytest.raises(SettingsError, match="exact in the integer ring"):
        FederationSettings(privacy=PrivacySettings(mode="distributed"), protocol=ProtocolSettings(name="plain"))
    with pytest.raises(SettingsError, match="zero_out"):
        PrivacySettings(mode="distributed", neighboring_relation="replace_one")


def test_a_share_record_off_the_plan_is_refused_by_name() -> None:
    settings = FederationSettings(privacy=PrivacySettings(mode="distributed"))
    plan = plan_round(settings, records=[40] * 10, dimension=62, epsilon=1.0, rounds=5)
    planned = distributed_round.planned_record(settings, plan, participants=10)
    assert spend_rule_violation(planned, planned=planned) is None
    for field, value in [("share_variance", planned.share_variance / 2), ("participants", 20),
                         ("collusion_threshold", 0), ("scale", planned.scale * 2), ("sample_rate", 0.01)]:
        lie = dataclasses.replace(planned, **{field: value})
        assert field in spend_rule_violation(lie, planned=planned)
    assert recorded_epsilon([planned] * 5) <= 1.0


def test_skellam_records_parse_strictly() -> None:
    settings = FederationSettings(privacy=PrivacySettings(mode="distributed"))
    plan = plan_round(settings, records=[40] * 10, dimension=62, epsilon=1.0, rounds=5)
    record = distributed_round.planned_record(settings, plan, participants=10)
    assert privacy_record_from_json(record.to_json(), where="t") == record
    for broken in ({**record.to_json(), "extra": 1}, {**record.to_json(), "collusion_threshold": 10},
                   {**record.to_json(), "participants": 2.5}, {**record.to_json(), "share_variance": -1.0},
                   {**record.to_json(), "neighboring_relation": "replace_one"}):
        with pytest.raises(MalformedPrivacyRecord, match="where"):
            privacy_record_from_json(broken, where="where")
    local = PrivacyRecord(noise_multiplier=1.0, sample_rate=0.1, steps=1, clipping_norm=1.0)
    with pytest.raises(MalformedPrivacyRecord, match="mixes"):
        recorded_epsilon([record, local])
    with pytest.raises(MalformedPrivacyRecord, match="mixes"):
        HistorySummary.of([record, local]).epsilon()
    # The verifier's folded history gives the very bits the coordinator charged.
    other = dataclasses.replace(record, participants=9)
    history = [record, other, record]
    assert HistorySummary.of(history).epsilon() == recorded_epsilon(history)


def test_the_audit_of_a_distributed_ledger_recomputes_without_torch(federation: Path) -> None:
    code = ("import sys; from bfl_private.audit import audit; result = audit(sys.argv[1]); "
            "assert result.ok; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert any('Distributed DP' in note for note in result.report.notes)")
    subprocess.run([sys.executable, "-c", code, str(federation)], check=True, timeout=120)
