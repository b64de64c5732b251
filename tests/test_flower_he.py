"""Paillier and CKKS rounds over Flower's code path, on the in-process loopback transport.

The ServerApp side keeps the key holder; each hospital gets only the public key material,
trains, encrypts and signs its own submission. The ledger must be the in-process one for
the protocol (the audit passes), dropouts and aborts are handled as in-process, and a
hospital refuses malformed key material and out-of-order requests by name.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bfl_private.ledger.canonical import canonical_bytes
from bfl_private.ledger.entries import ABORT, ROUND_CLOSE, ROUND_OPEN, SUBMISSION
from flower_transports import RecordingTransport, TamperingTransport

from bfl_private.artifacts import get_aggregate
from bfl_private.audit import audit
from bfl_private.coordinator import CommandPlan, Federation
from bfl_private.rounds.errors import OutOfOrderMessage, PublicKeyMessageError, StageMessageError
from bfl_private.rounds.hospital import HISTORY_FILE, Hospital
from bfl_private.rounds.loopback import LoopbackTransport
from bfl_private.rounds.engine import RoundEngine
from bfl_private.flower.setup import export_hospitals
from bfl_private.protocol_setup import build_protocol
from bfl_private.settings import FederationSettings, ProtocolSettings

N = 4
PROTOCOLS = ("paillier", "ckks")


@dataclasses.dataclass
class Setup:
    protocol: str
    federation: Federation
    hospitals: dict[int, Hospital]
    plan: CommandPlan

    def round(self, transport: LoopbackTransport | None = None, **drop: str) -> tuple[Any, list[str], RoundEngine]:
        lines: list[str] = []
        driver = RoundEngine(self.federation, self.plan, transport or LoopbackTransport(self.hospitals, drop=drop),
                             protocol=self.protocol, log=lines.append)
        return driver.run(), lines, driver

    def entries(self, round_id: int) -> dict[str, list[Mapping[str, Any]]]:
        out: dict[str, list[Mapping[str, Any]]] = {}
        for entry in self.federation.ledger.entries():
            if entry.round == round_id:
                out.setdefault(entry.type, []).append(entry.payload)
        return out

    def names(self) -> list[str]:
        return sorted(h.name for h in self.hospitals.values())


def _federation(directory: Path, protocol: str) -> tuple[Federation, dict[int, Hospital]]:
    base = FederationSettings()
    settings = dataclasses.replace(
        base, n_clients=N, training=dataclasses.replace(base.training, local_steps=2),
        privacy=dataclasses.replace(base.privacy, lifetime_epsilon=50.0),
        protocol=ProtocolSettings(name=protocol, paillier_key_bits=2048))
    federation = Federation.create(directory / "federation", settings, model_seed=0)
    folders = export_hospitals(federation, directory / "hospitals")
    hospitals = {100 + i: Hospital.from_node_config({"hospital-dir": str(folders[c])})
                 for i, c in enumerate(sorted(folders))}
    return federation, hospitals


@pytest.fixture(scope="module", params=PROTOCOLS)
def he(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    federation, hospitals = _federation(tmp_path_factory.mktemp(f"flower-{request.param}"), request.param)
    plan = federation.plan(epsilon=2.0, rounds=10, skip_exhausted=False)
    yield Setup(request.param, federation, hospitals, plan)
    federation.close()


# --- rounds --------------------------------------------------------------------------------


def test_an_he_round_closes_and_the_ledger_verifies(he: Setup) -> None:
    summary, lines, driver = he.round()
    assert summary.status in ("accepted", "rejected"), lines
    assert summary.survivors == tuple(he.names()) and driver.failures == {}
    entries = he.entries(summary.round)
    opened, close = entries[ROUND_OPEN][0], entries[ROUND_CLOSE][0]
    assert opened["protocol"] == he.protocol and close["dropouts"] == [] and close["rejected"] == {}
    # the round opening posts what the in-process round posts for this protocol
    in_process = build_protocol(he.protocol, he.federation.settings, he.federation.round_parties, participants=he.names())
    assert opened["protocol_params"] == in_process.public_parameters()
    # each hospital signed its own submission; its privacy history holds what it signed
    for hospital in he.hospitals.values():
        signed = [s["privacy"] for s in entries[SUBMISSION] if s["client"] == hospital.name]
        kept = json.loads((hospital.history_path.parent / HISTORY_FILE).read_text())
        assert signed == [kept[-1]]
    report = audit(he.federation.directory)
    assert report.ok, report.to_json()


def test_the_transcript_has_the_in_process_fields(he: Setup) -> None:
    """The Flower round's transcript is the one the in-process protocol writes (same fields:
    both come from ``aggregate_submissions``), and its total decodes to the survivors'
    weight in the last coordinate."""
    summary, _, _ = he.round()
    close = he.entries(summary.round)[ROUND_CLOSE][0]
    blobs = he.federation.ledger.blobs
    transcript = blobs.get_json(close["transcript_cid"])
    length = he.federation.current_model().shape[0] + 1
    setup = build_protocol(he.protocol, he.federation.settings, he.federation.round_parties, participants=he.names())
    rng = np.random.default_rng(0)
    reference = setup.protocol.aggregate({c: rng.uniform(-0.1, 0.1, length).astype(np.float32) for c in he.names()},
                                         round_id=summary.round, round_seed=b"\0" * 32)
    assert sorted(transcript) == sorted(reference.transcript)
    total = get_aggregate(blobs, close["aggregate_cid"])
    weights = {c: v["data_weight"] for c, v in he.federation.ledger.state.clients().items()}
    expected = sum(weights[c] for c in close["survivors"]) / max(weights.values())
    assert total.shape == (length,) and np.isclose(total[-1], expected, atol=1e-3)


@pytest.mark.parametrize(("stage", "submits"), [("share", False), ("mask", False), ("unmask", True)])
def test_a_hospital_lost_before_or_after_encrypting(he: Setup, stage: str, submits: bool) -> None:
    """Gone before ``encrypt`` (the position of masking's ``mask``): a dropout. Gone only
    later: it already submitted, and HE needs no recovery, as in-process."""
    victim = he.names()[1]
    summary, _, _ = he.round(**{victim: stage})
    close = he.entries(summary.round)[ROUND_CLOSE][0]
    assert (victim in close["survivors"]) is submits
    assert close["dropouts"] == ([] if submits else [victim])
    assert audit(he.federation.directory).ok


def test_too_few_submissions_abort_and_the_abort_is_recorded(he: Setup) -> None:
    """The key holder decrypts no sum of fewer than two inputs: one survivor aborts the round."""
    names = he.names()
    summary, lines, _ = he.round(**{c: "mask" for c in names[1:]})
    assert summary.status == "aborted"
    abort = he.entries(summary.round)[ABORT][0]
    assert abort["stage"] == "decrypt" and abort["survivors"] == names[:1]
    assert any("aborted at stage decrypt" in line for line in lines)
    assert audit(he.federation.directory).ok


def test_a_ciphertext_its_submission_does_not_name_is_refused(he: Setup) -> None:
    victim = he.names()[2]
    summary, _, driver = he.round(TamperingTransport(he.hospitals, victim=victim, stage="encrypt", field="ciphertext"))
    assert summary.dropouts == (victim,)
    assert "blob_cid does not name the ciphertext" in driver.failures[victim]
    assert audit(he.federation.directory).ok


def test_a_signed_ciphertext_that_does_not_decode_is_rejected_and_recorded(
        he: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hospital signs what it sends, so the server cannot blame the transport: the
    submission is committed, refused by the protocol's own check and named in round_close."""
    victim = he.names()[1]
    hospital = next(h for h in he.hospitals.values() if h.name == victim)
    encryptor = "_paillier_encryptor" if he.protocol == "paillier" else "_ckks_encryptor"
    honest = getattr(hospital, encryptor)

    def garbage(*args: Any, **kwargs: Any) -> Any:
        encrypt = honest(*args, **kwargs)
        return lambda vector: encrypt(vector)[:-7] + b"garbage"

    monkeypatch.setattr(hospital, encryptor, garbage)
    summary, _, _ = he.round()
    assert victim in summary.rejected and victim not in summary.dropouts
    close = he.entries(he.federation.ledger.state.last_round)["round_close"][0]
    assert victim in close["rejected"] and victim not in close["survivors"]
    assert f"submission of {victim!r}" in close["rejected"][victim]
    assert audit(he.federation.directory).ok


# --- the hospital's side: key material and order --------------------------------------------


@pytest.fixture(scope="module")
def recorded(he: Setup) -> tuple[Setup, RecordingTransport]:
    recorder = RecordingTransport(he.hospitals)
    summary, lines, _ = he.round(recorder)
    assert summary.status != "aborted", lines
    return he, recorder


def _ask(recorded, *, state: bytes | None = None, **changes: Any) -> tuple[dict[str, Any], bytes | None]:
    """The recorded encrypt request, changed, to the hospital as it was before it took part:
    its participation record (it submitted in the recorded round, so the request would be
    refused as AlreadySubmitted before anything else) is set aside meanwhile."""
    he, recorder = recorded
    node = min(he.hospitals)
    hospital = he.hospitals[node]
    record = hospital.participation_path
    aside = record.with_name(record.name + ".aside")
    record.rename(aside)
    try:
        return hospital.handle({**recorder.requests["encrypt"][node], **changes}, state)
    finally:
        record.unlink(missing_ok=True)
        aside.rename(record)


def _spent(recorded) -> list[Any]:
    he, _ = recorded
    return he.hospitals[min(he.hospitals)].history()


def _bad_key_material(protocol: str) -> list[tuple[bytes, str]]:
    if protocol == "paillier":
        from bfl_private.protocols.paillier import public_key_to_json
        from phe.paillier import generate_paillier_keypair

        other, _ = generate_paillier_keypair(n_length=1024)
        return [(b"\x80 not json", "PublicKey|JSON|Unicode|Expecting"),
                (canonical_bytes({"n": "zz"}), "hex"),
                (canonical_bytes({"n": format(other.n, "x"), "key_id": "00" * 32}), "fingerprint"),
                (canonical_bytes(public_key_to_json(other)), "not the key")]
    return [(b"\x00" * 64, "is not the context"), (b"", "is not the context")]


def test_malformed_or_foreign_key_material_is_refused_by_name_before_training(recorded) -> None:
    he, _ = recorded
    before = _spent(recorded)
    for material, why in _bad_key_material(he.protocol):
        with pytest.raises(PublicKeyMessageError, match=why):
            _ask(recorded, **{"public-key": material})
    assert _spent(recorded) == before, "a refused request must not train or spend ε"


@pytest.mark.parametrize("he", ["ckks"], indirect=True)  # a CKKS property: no Paillier twin to skip
def test_a_ckks_context_with_its_secret_key_is_refused(he: Setup) -> None:
    """Even if the opening named it (its hash), a context holding a secret key is not public key material."""
    from bfl_private.protocols.ckks import CkksKeyHolder, context_id

    holder = CkksKeyHolder.generate()
    secret = holder._context.serialize(save_secret_key=True)
    hospital = he.hospitals[min(he.hospitals)]
    with pytest.raises(PublicKeyMessageError):
        hospital._ckks_encryptor({"clip": 1.0, "context_sha256": context_id(secret).hex()}, secret)


def test_replayed_and_out_of_order_requests_are_refused(recorded) -> None:
    he, recorder = recorded
    node = min(he.hospitals)
    state = recorder.after["encrypt"][node]
    before = _spent(recorded)
    with pytest.raises(OutOfOrderMessage, match="was opened here"):  # a replay would train and spend ε again
        _ask(recorded, state=state)
    masking_share = {"stage": "share", "federation": recorder.requests["encrypt"][node]["federation"],
                     "round": recorder.requests["encrypt"][node]["round"], "advertisements": []}
    with pytest.raises(OutOfOrderMessage, match="ended with its encrypted submission"):
        he.hospitals[node].handle(masking_share, state)
    with pytest.raises(OutOfOrderMessage, match="no round is open"):
        he.hospitals[node].handle(masking_share, None)
    assert _spent(recorded) == before


def test_a_request_of_the_other_protocol_family_is_refused(recorded) -> None:
    """An ``advertise`` (masking) carrying an HE round's opening is refused by name."""
    he, recorder = recorded
    node = min(he.hospitals)
    encrypt = recorder.requests["encrypt"][node]
    advertise = {"stage": "advertise", "federation": encrypt["federation"], "round": encrypt["round"],
                 "round-open": encrypt["round-open"], "round-beacon": b"", "length": 3, "model": encrypt["model"]}
    with pytest.raises(StageMessageError, match="belongs to a masking round"):
        he.hospitals[node].handle(advertise, None)


@pytest.mark.parametrize(("changes", "why"), [
    ({"public-key": "text"}, "must be bytes"),
    ({"model": b"\0"}, "CID"),
    ({"extra": 1}, "unexpected"),
    ({"round": 99}, "round_open of round 99"),
])
def test_malformed_encrypt_requests_are_refused(recorded, changes: dict[str, Any], why: str) -> None:
    with pytest.raises(StageMessageError, match=why):
        _ask(recorded, **changes)


def test_the_client_app_answers_encrypt_through_flower_messages(recorded) -> None:
    """``train.encrypt`` reaches the hospital; a refused request leaves Context.state alone."""
    pytest.importorskip("flwr")
    import time

    from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict

    from bfl_private.flower.client_app import STATE, app
    from bfl_private.rounds.stages import MESSAGE_TYPES, RECORD

    he, recorder = recorded
    node = min(he.hospitals)
    folder = he.hospitals[node].history_path.parent
    context = Context(run_id=1, node_id=node, node_config={"hospital-dir": str(folder)}, state=RecordDict(),
                      run_config={})
    request = {**recorder.requests["encrypt"][node], "round": 10_000}  # a later round than any seen

    def message(fields: dict[str, Any]) -> Message:
        metadata = Metadata(run_id=1, message_id="m-encrypt", src_node_id=1, dst_node_id=node, reply_to_message_id="",
                            group_id="1", created_at=time.time(), ttl=3600.0, message_type=MESSAGE_TYPES["encrypt"])
        return Message(content=RecordDict({RECORD: ConfigRecord(fields)}), metadata=metadata)

    with pytest.raises(StageMessageError, match="round_open of round 10000"):
        app(message(request), context)
    assert STATE not in context.state


def test_the_run_config_accepts_the_he_protocols() -> None:
    pytest.importorskip("flwr")
    from bfl_private.flower.server_app import RunSettings

    config = {"federation-dir": "fed", "epsilon": 1.0, "rounds": 2, "min-nodes": 0,
              "node-wait": 10.0, "stage-timeout": 30.0, "train-timeout": 60.0,
              "skip-exhausted": False}
    for protocol in ("masking", *PROTOCOLS):
        assert RunSettings.from_run_config({**config, "protocol": protocol}).protocol == protocol
