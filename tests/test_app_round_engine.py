"""The in-process round is the engine over the loopback transport: what a stop or a failing
hospital leaves behind is what a Flower deployment would leave.

* A hospital whose code fails in any way answers with an error reply, as Flower's
  ClientApp does: a dropout, never a crash of ``bfl-private round``.
* A coordinator stopped while the round ran, after hospitals' protected updates had left
  them, ends that round next command with an abort charging each of them: the ledger's
  charges and each hospital's own history agree.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from bfl_private.audit import audit
from bfl_private.coordinator import INTERRUPTED_RUNNING, Federation
from bfl_private.ledger.entries import ABORT, SUBMISSION
from bfl_private.parties import party_folder
from bfl_private.protocols.masking import MaskingServer
from bfl_private.rounds.hospital import HISTORY_FILE
from bfl_private.simulated_hospitals import SimulatedHospital
from bfl_private.settings import FederationSettings


def _federation(directory: Path) -> Federation:
    base = FederationSettings(n_clients=5)  # each keeps t = 3 live neighbours with one gone
    settings = dataclasses.replace(base, training=dataclasses.replace(base.training, local_steps=1))
    return Federation.create(directory / "fed", settings, model_seed=0)


def _round(federation: Federation):
    plan = federation.plan(epsilon=1.0, rounds=2, skip_exhausted=False)
    return federation.run_round(plan, protocol="masking", dropout=0.0, malicious=0, rng=np.random.default_rng(0))


def test_a_hospital_whose_code_fails_is_a_dropout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    honest = SimulatedHospital._private_input

    def out_of_memory(self, base, planned, dp_plan):
        if self.name == "hospital-02":
            raise RuntimeError("torch: out of memory")
        return honest(self, base, planned, dp_plan)

    monkeypatch.setattr(SimulatedHospital, "_private_input", out_of_memory)
    federation = _federation(tmp_path)
    try:
        summary = _round(federation)
    finally:
        federation.close()
    assert summary.status != "aborted" and summary.dropouts == ("hospital-02",)
    assert audit(tmp_path / "fed").ok


def test_a_stop_after_submissions_is_settled_charging_every_sender(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    honest = MaskingServer.close_mask

    def stopped(self):
        raise KeyboardInterrupt  # the operator's Ctrl-C, once every masked input has arrived

    federation = _federation(tmp_path)
    monkeypatch.setattr(MaskingServer, "close_mask", stopped)
    try:
        with pytest.raises(KeyboardInterrupt):
            _round(federation)
    finally:
        federation.close()
    monkeypatch.setattr(MaskingServer, "close_mask", honest)

    federation = Federation.open(tmp_path / "fed")
    try:
        federation.settle_interrupted_round()
        entries = [e for e in federation.ledger.entries() if e.round == 1]
        senders = sorted(e.payload["client"] for e in entries if e.type == SUBMISSION)
        (abort,) = [e for e in entries if e.type == ABORT]
        assert senders == sorted(federation.clients) and abort.payload["reason"] == INTERRUPTED_RUNNING
        assert sorted(abort.payload["cumulative_epsilon"]) == senders
        # the ledger charges exactly what each hospital recorded itself when it sent
        for name in senders:
            own = json.loads((party_folder(federation.directory, name) / HISTORY_FILE).read_text())
            assert own == [record.to_json() for record in federation.histories()[name]]
        assert _round(federation).status != "aborted"  # and the federation goes on
    finally:
        federation.close()
    assert audit(tmp_path / "fed").ok
