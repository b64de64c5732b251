"""The privacy guarantee the ledger states holds against anyone who reads the ledger.

Fresh secret noise (nothing public replays it), records bound to the round's plan and
genesis, one spending rule (charged once the update has left), and no client data outside
DP (normalisation from a public sample, published in genesis).
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import bfl_private.federation as federation_module
import bfl_private.rounds.engine as engine_module
from bfl_private.artifacts import get_model
from bfl_private.audit import audit
from bfl_private.coordinator import Federation
from bfl_private.data import federation_data
from bfl_private.fedavg import weighted_payload
from bfl_private.federation import train_private
from bfl_private.ledger.entries import ABORT, GENESIS, SUBMISSION
from bfl_private.ledger.store import Ledger
from bfl_private.protocols.plain import decode_submission
from bfl_private.rounds.hospital import Hospital
from bfl_private.runner import RoundOptions, run_command
from bfl_private.settings import FederationSettings
from bfl_private.validator import Validator
from round_fixtures import ScriptedDrops, rubber_stamp

SMALL = {"clients": 4, "rounds": 1, "protocol": "plain"}


def run(directory: Path, **overrides: object):
    return run_command(directory, RoundOptions(**{"epsilon": 1.0, **SMALL, **overrides}), quiet=True)


def submissions(directory: Path) -> dict[tuple[int, str], str]:
    with Ledger.open(directory) as ledger:
        return {(e.round, e.payload["client"]): e.payload["blob_cid"] for e in ledger.entries() if e.type == SUBMISSION}


@pytest.fixture(scope="module")
def plain_federation(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("plain") / "fed"
    run(directory, seed=5)
    return directory


@pytest.fixture
def copy(plain_federation: Path, tmp_path: Path) -> Path:
    shutil.copytree(plain_federation, tmp_path / "fed")
    return tmp_path / "fed"


def test_the_same_seed_twice_gives_fresh_noise_and_both_ledgers_verify(plain_federation: Path, tmp_path: Path) -> None:
    run(tmp_path / "again", seed=5)
    first, second = submissions(plain_federation), submissions(tmp_path / "again")
    assert first.keys() == second.keys()
    assert all(first[k] != second[k] for k in first)  # every client's update differs
    with Ledger.open(plain_federation) as a, Ledger.open(tmp_path / "again") as b:
        assert a.state.model_cid != b.state.model_cid
        # --seed fixed the split and the initial model, and nothing else
        assert a.genesis().payload["initial_model_cid"] == b.genesis().payload["initial_model_cid"]
    assert audit(plain_federation).ok and audit(tmp_path / "again").ok


def test_replaying_training_from_everything_the_ledger_publishes_does_not_reproduce_a_submission(
    plain_federation: Path,
) -> None:
    fed = Federation.open(plain_federation)
    try:
        settings = fed.settings
        data = federation_data(settings)  # the split follows from the published data_seed
        entry = next(e for e in fed.ledger.entries() if e.type == SUBMISSION)
        client = next(c for c in data.clients if c.client_id == entry.payload["client"])
        posted = decode_submission(fed.ledger.blobs.get(entry.payload["blob_cid"]), client=client.client_id)
        base = get_model(fed.ledger.blobs, fed.ledger.genesis().payload["initial_model_cid"])
        sigma = next(e for e in fed.ledger.entries() if e.type == "round_open").payload["privacy_plan"][
            "noise_multipliers"][client.client_id]
        max_records = max(len(c.train) for c in data.clients)
        replays = []
        for _ in range(2):
            torch.manual_seed(settings.data_seed)  # every public seed, as an attacker would set it
            np.random.seed(settings.data_seed)
            update = train_private(fed.clients[client.client_id], base, settings.training, settings.privacy,
                                   noise_multiplier=sigma, sample_rate=settings.privacy.sample_rate)
            replays.append(weighted_payload(update.delta, records=update.records, max_records=max_records,
                                            bound=settings.training.update_bound))
        assert all(replay.shape == posted.shape for replay in replays)
        assert not any(np.allclose(replay, posted, atol=1e-6) for replay in replays)
        assert not np.allclose(replays[0], replays[1], atol=1e-6)
    finally:
        fed.close()


def test_genesis_publishes_the_public_normalisation(plain_federation: Path) -> None:
    with Ledger.open(plain_federation) as ledger:
        genesis = ledger.genesis()
    assert genesis.type == GENESIS
    published = genesis.payload["normalisation"]
    settings = FederationSettings.from_json(genesis.payload["settings"])
    assert published == federation_data(settings).normaliser.to_json()
    assert "public reference sample" in published["source"] and published["records"] > 0
    assert genesis.payload["settings"]["privacy"]["neighboring_relation"] == "zero_out"


def _lying_trainer(monkeypatch: pytest.MonkeyPatch, victim: str | None, **fields: object) -> None:
    """Hospitals whose signed record states ``fields`` instead of what they trained with:
    their own code changed past their own check that the record is the planned one."""
    honest = Hospital._train

    def train(self: Hospital, opened, base):
        vector, records, record = honest(self, opened, base)
        if victim is None or self.name == victim:
            record = dataclasses.replace(record, **fields)
        return vector, records, record

    monkeypatch.setattr(Hospital, "_train", train)


def test_an_honest_hospital_sends_nothing_whose_record_is_not_the_planned_one(
        copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Should training ever report another record than the one the hospital's budget check
    counted, the hospital refuses to send: its ε stays what it was, and it is a dropout."""
    honest = federation_module.train_private

    def drifted(client, *args, **kwargs):
        update = honest(client, *args, **kwargs)
        if client.client_id == "hospital-01":
            update = dataclasses.replace(update, privacy=dataclasses.replace(update.privacy, steps=1))
        return update

    monkeypatch.setattr(federation_module, "train_private", drifted)
    with Ledger.open(copy) as ledger:
        before = ledger.state.clients()["hospital-01"]["epsilon_spent"]
    summary = run(copy).rounds[-1]
    assert "hospital-01" in summary.dropouts and "hospital-01" not in summary.rejected
    with Ledger.open(copy) as ledger:
        assert ledger.state.clients()["hospital-01"]["epsilon_spent"] == before
    assert audit(copy).ok


LIES = {
    "noise_multiplier": {"noise_multiplier": 1e3},
    "sample_rate": {"sample_rate": 0.01},
    "steps": {"steps": 1},
    "clipping_norm": {"clipping_norm": 0.5},
    "delta": {"delta": 5e-6},
    "neighboring_relation": {"neighboring_relation": "replace_one"},
    "accountant": {"accountant": "rdp", "value_discretization_interval": None},
    "value_discretization_interval": {"value_discretization_interval": 1e-2},
}


@pytest.mark.parametrize("field", sorted(LIES))
def test_a_record_that_breaks_the_rules_is_refused_at_submission(copy: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   field: str) -> None:
    with Ledger.open(copy) as ledger:
        before = {c: v["epsilon_spent"] for c, v in ledger.state.clients().items()}
    _lying_trainer(monkeypatch, "hospital-01", **LIES[field])
    summary = run(copy).rounds[-1]
    assert field in summary.rejected["hospital-01"] and "hospital-01" not in summary.survivors
    assert audit(copy).ok
    with Ledger.open(copy) as ledger:
        after = ledger.state.clients()
        posted = [e for e in ledger.entries() if e.type == SUBMISSION and e.round == summary.round]
    assert "hospital-01" not in {e.payload["client"] for e in posted}  # its lie never reached the ledger
    assert after["hospital-01"]["epsilon_spent"] == before["hospital-01"]


@pytest.mark.parametrize("field", sorted(LIES))
def test_a_record_that_breaks_the_rules_fails_the_audit_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 field: str) -> None:
    # A colluding coordinator and validator quorum let the lie through; the auditor does not.
    # A fresh federation: the lying records are each client's whole history, so the
    # contract's budget rules and the accountant accept them and only the record check is left.
    monkeypatch.setattr(Validator, "check_round", lambda self, entries, ledger: None)
    monkeypatch.setattr(Validator, "attest", rubber_stamp)
    monkeypatch.setattr(engine_module, "spend_rule_violation", lambda *a, **k: None)
    _lying_trainer(monkeypatch, None, **LIES[field])
    run(tmp_path / "fed", seed=2)
    failure = audit(tmp_path / "fed").report.failure
    assert (failure.number, failure.name) == (10, "privacy claims")
    assert field in failure.detail and "breaks the round's rules" in failure.detail


def test_an_aborted_round_charges_everyone_whose_update_left_it(copy: Path) -> None:
    fed = Federation.open(copy)
    try:
        before = {c: v["epsilon_spent"] for c, v in fed.ledger.state.clients().items()}
        plan = fed.plan(epsilon=0.5, rounds=1, skip_exhausted=False)
        participants = sorted(plan.clients)
        gone = set(participants[:3])  # three of four vanish after sending: nothing can be unmasked
        summary = fed.run_round(plan, protocol="masking", dropout=1.0, malicious=0,
                                rng=ScriptedDrops(participants, gone, 3))  # STAGES[3] == "unmask"
        assert summary.status == "aborted"
        entries = [e for e in fed.ledger.entries() if e.round == summary.round]
        abort = next(e for e in entries if e.type == ABORT)
        sent = {e.payload["client"] for e in entries if e.type == SUBMISSION}
        assert sent == set(participants) == set(abort.payload["cumulative_epsilon"])
        after = fed.ledger.state.clients()
        assert all(after[c]["epsilon_spent"] > before[c] for c in participants)
    finally:
        fed.close()
    assert audit(copy).ok
