"""The plain baseline over Flower's code path (loopback transport): one ``encrypt`` stage
whose payload travels in the clear. The ledger must be the in-process one (the audit
passes, the transcript has the in-process fields), an out-of-range payload is rejected on
receipt yet charged (it left its hospital), and hospitals of a federation whose genesis
does not name plain refuse the round by name.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from bfl_private.audit import audit
from bfl_private.coordinator import Federation
from bfl_private.rounds.hospital import PARTICIPATION_FILE, Hospital
from bfl_private.rounds.loopback import LoopbackTransport
from bfl_private.rounds.engine import RoundEngine
from bfl_private.flower.setup import export_hospitals
from bfl_private.ledger.entries import ROUND_CLOSE, SUBMISSION
from bfl_private.protocol_setup import build_protocol
from bfl_private.settings import FederationSettings, ProtocolSettings

N = 4


class OutOfRange(Hospital):
    """Signs its submission honestly but sends a payload far outside the agreed range."""

    def _train(self, opened, base):
        vector, records, privacy = super()._train(opened, base)
        return np.full_like(vector, 1e6), records, privacy


def _deployment(directory: Path, protocol: str, *, liar: str | None = None):
    base = FederationSettings()
    settings = dataclasses.replace(
        base, n_clients=N, training=dataclasses.replace(base.training, local_steps=2),
        privacy=dataclasses.replace(base.privacy, lifetime_epsilon=50.0), protocol=ProtocolSettings(name=protocol))
    federation = Federation.create(directory / "federation", settings, model_seed=0)
    folders = export_hospitals(federation, directory / "hospitals")
    hospitals = {100 + i: (OutOfRange if c == liar else Hospital).from_node_config({"hospital-dir": str(folders[c])})
                 for i, c in enumerate(sorted(folders))}
    return federation, hospitals


def _round_entries(federation: Federation, round_id: int) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for entry in federation.ledger.entries():
        if entry.round == round_id:
            out.setdefault(entry.type, []).append(entry.payload)
    return out


def test_a_plain_round_closes_rejects_an_out_of_range_payload_and_verifies(tmp_path: Path) -> None:
    federation, hospitals = _deployment(tmp_path, "plain", liar="hospital-02")
    try:
        plan = federation.plan(epsilon=2.0, rounds=2, skip_exhausted=False)
        summary = RoundEngine(federation, plan, LoopbackTransport(hospitals), protocol="plain").run()
        assert summary.status in ("accepted", "rejected")
        names = sorted(plan.clients)
        assert summary.survivors == tuple(c for c in names if c != "hospital-02")
        assert "outside" in summary.rejected["hospital-02"]
        entries = _round_entries(federation, summary.round)
        close = entries[ROUND_CLOSE][0]
        assert close["rejected"] == {"hospital-02": summary.rejected["hospital-02"]}
        # it sent its update, so it signed and is charged like everyone else
        assert sorted(s["client"] for s in entries[SUBMISSION]) == names
        in_process = build_protocol("plain", federation.settings, federation.round_parties, participants=names)
        transcript = federation.ledger.blobs.get_json(close["transcript_cid"])
        reference = in_process.protocol.aggregate({c: np.zeros(3, np.float32) for c in names}, round_id=1,
                                                  round_seed=b"\0" * 32)
        assert sorted(transcript) == sorted(reference.transcript)
        report = audit(federation.directory)
        assert report.ok, report.to_json()
    finally:
        federation.close()


def test_a_plain_round_in_a_protected_federation_gets_no_seed(tmp_path: Path) -> None:
    """Validators beacon no opening genesis forbids: nothing is written, no hospital is asked
    (and each would refuse it by name, UnknownProtocol: see participant_checks' tests)."""
    from bfl_private.validator_service import QuorumNotReached

    federation, hospitals = _deployment(tmp_path, "masking")
    try:
        plan = federation.plan(epsilon=2.0, rounds=2, skip_exhausted=False)
        head = federation.ledger.head.hash()
        with pytest.raises(QuorumNotReached, match="UnknownProtocol"):
            RoundEngine(federation, plan, LoopbackTransport(hospitals), protocol="plain").run()
        assert federation.ledger.head.hash() == head
        assert all(not h.history_path.with_name(PARTICIPATION_FILE).exists() for h in hospitals.values())
    finally:
        federation.close()


class KeyInjecting(LoopbackTransport):
    """Slips key material into every plain ``encrypt`` request."""

    def exchange(self, stage, requests, *, round_id):  # type: ignore[no-untyped-def]
        return super().exchange(stage, {n: {**r, "public-key": b"\0" * 32} for n, r in requests.items()},
                                round_id=round_id)


def test_a_plain_round_with_key_material_is_refused_before_training(tmp_path: Path) -> None:
    federation, hospitals = _deployment(tmp_path, "plain")
    try:
        plan = federation.plan(epsilon=2.0, rounds=2, skip_exhausted=False)
        driver = RoundEngine(federation, plan, KeyInjecting(hospitals), protocol="plain")
        summary = driver.run()
        assert summary.status == "aborted"
        assert all("PublicKeyMessageError" in why and "expects no public key" in why
                   for why in driver.failures.values())
        assert all(hospital.history() == [] for hospital in hospitals.values())
    finally:
        federation.close()


class BeaconStripping(LoopbackTransport):
    """Shows the hospitals an opening without the validators' beacon on it."""

    def exchange(self, stage, requests, *, round_id):  # type: ignore[no-untyped-def]
        return super().exchange(stage, {n: {**r, "round-beacon": b""} for n, r in requests.items()}, round_id=round_id)


def test_a_one_shot_opening_the_validators_did_not_beacon_is_refused(tmp_path: Path) -> None:
    """A one-shot round needs no seed, but each hospital still checks the validators beaconed
    this very opening: a coordinator cannot show it an opening (a key) they never saw."""
    federation, hospitals = _deployment(tmp_path, "plain")
    try:
        plan = federation.plan(epsilon=2.0, rounds=2, skip_exhausted=False)
        summary = RoundEngine(federation, plan, BeaconStripping(hospitals), protocol="plain").run()
        assert summary.status == "aborted"
        assert set(summary.rejected) == set(plan.clients)
        assert all("BadBeacon" in why for why in summary.rejected.values())
        assert all(h.history() == [] and h.participation()["refused"][-1]["stage"] == "encrypt"
                   for h in hospitals.values())
    finally:
        federation.close()
