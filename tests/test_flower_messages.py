"""A hospital rejects malformed and out-of-order stage messages with named errors; its
node config, key and data files are checked; the ClientApp and the run config too."""
from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bfl_private.protocols.errors import MalformedInput, ProtocolError
from flower_transports import RecordingTransport
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bfl_private.coordinator import Federation
from bfl_private.rounds.errors import HospitalConfigError, OutOfOrderMessage, StageMessageError
from bfl_private.rounds.hospital import IDENTITY_FILE, Hospital, load_data_file
from bfl_private.rounds.masking_state import PersistentMaskingClient
from bfl_private.rounds.engine import RoundEngine
from bfl_private.flower.setup import export_hospitals
from bfl_private.settings import FederationSettings


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("flower-messages")
    base = FederationSettings()
    federation = Federation.create(directory / "federation", dataclasses.replace(
        base, n_clients=4, training=dataclasses.replace(base.training, local_steps=1)), model_seed=0)
    folders = export_hospitals(federation, directory / "hospitals")
    hospitals = {7 + i: Hospital.from_node_config({"hospital-dir": str(folders[c])})
                 for i, c in enumerate(sorted(folders))}
    recorder = RecordingTransport(hospitals)
    plan = federation.plan(epsilon=1.0, rounds=1, skip_exhausted=False)
    summary = RoundEngine(federation, plan, recorder).run()
    assert summary.status != "aborted"
    federation.close()
    return recorder, hospitals, folders


NODE = 7


def _ask(recorded, which: str, state_after: str | None, **changes: Any):
    """Send node NODE the recorded ``which`` request, with ``changes``, on a saved state."""
    recorder, hospitals, _ = recorded
    request = {**recorder.requests[which][NODE], **changes}
    state = recorder.after[state_after][NODE] if state_after else None
    return hospitals[NODE].handle(request, state)


def test_recorded_requests_replay_in_order(recorded) -> None:
    """The fixture's requests are valid: replaying share on the saved advertise state works."""
    reply, state = _ask(recorded, "share", "advertise")
    assert set(reply) == {"shares"} and state is not None


@pytest.mark.parametrize(("stage", "after", "why"), [
    ("share", None, "no round is open"),
    ("mask", "advertise", "expects share"),
    ("advertise", "advertise", "was opened here"),
    ("share", "share", "expects mask"),
    ("unmask", "mask", "expects acknowledge"),
])
def test_out_of_order_messages_are_refused(recorded, stage: str, after: str | None, why: str) -> None:
    with pytest.raises(OutOfOrderMessage, match=why):
        _ask(recorded, stage, after)


def test_a_message_for_another_round_is_out_of_order(recorded) -> None:
    recorder, _, _ = recorded
    with pytest.raises(OutOfOrderMessage, match="round 2"):
        _ask(recorded, "share", "advertise", round=recorder.requests["share"][NODE]["round"] + 1)


@pytest.mark.parametrize(("changes", "why"), [
    ({"stage": "train"}, "unknown stage"),
    ({"advertisements": b"\x00"}, "must be list"),
    ({"advertisements": ["not bytes"]}, "list of bytes"),
    ({"round": True}, "must be an integer"),
    ({"federation": "bfl-elsewhere"}, "federation"),
    ({"extra": 1}, "unexpected"),
])
def test_malformed_fields_are_refused(recorded, changes: dict[str, Any], why: str) -> None:
    with pytest.raises(StageMessageError, match=why):
        _ask(recorded, "share", "advertise", **changes)


def test_missing_field_is_refused(recorded) -> None:
    recorder, hospitals, _ = recorded
    request = dict(recorder.requests["share"][NODE])
    del request["round"]
    with pytest.raises(StageMessageError, match="missing \\['round'\\]"):
        hospitals[NODE].handle(request, recorder.after["advertise"][NODE])


def test_a_round_opening_not_signed_by_the_coordinator_is_refused(recorded) -> None:
    recorder, _, _ = recorded
    opening = bytearray(recorder.requests["advertise"][NODE]["round-open"])
    opening[opening.index(b'"participants"') + 20] ^= 0x01  # inside a participant's name
    with pytest.raises(StageMessageError):
        _ask(recorded, "advertise", None, **{"round-open": bytes(opening)})


def test_a_base_model_that_is_not_the_opened_one_is_refused(recorded, tmp_path: Path) -> None:
    """Checked at advertise, where the hospital trains: before any training or key."""
    recorder, hospitals, folders = recorded
    fresh = tmp_path / "hospital"  # the hospital as it was before the recorded round
    shutil.copytree(folders[hospitals[NODE].name], fresh)
    for record in ("participation.json", "privacy-history.json"):
        (fresh / record).unlink(missing_ok=True)
    model = bytearray(recorder.requests["advertise"][NODE]["model"])
    model[-1] ^= 0x01
    request = {**recorder.requests["advertise"][NODE], "model": bytes(model)}
    with pytest.raises(StageMessageError, match="CID"):
        Hospital.from_node_config({"hospital-dir": str(fresh)}).handle(request, None)
    assert not (fresh / "privacy-history.json").exists()
    request["model"] = recorder.requests["advertise"][NODE]["model"]  # the opened model: it trains and advertises
    reply, state = Hospital.from_node_config({"hospital-dir": str(fresh)}).handle(request, None)
    assert set(reply) == {"client", "advertisement"} and state is not None


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=1, max_value=400))
def test_truncated_protocol_messages_are_named_errors(recorded, cut: int) -> None:
    recorder, _, _ = recorded
    adverts = recorder.requests["share"][NODE]["advertisements"]
    truncated = [a[: max(0, len(a) - cut)] for a in adverts]
    with pytest.raises(MalformedInput):
        _ask(recorded, "share", "advertise", advertisements=truncated)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_corrupted_saved_state_is_a_named_error(recorded, position: int, flip: int) -> None:
    """Any corruption of the saved state is refused by a named protocol error (or, when the
    flipped byte changes nothing the stage uses, answered normally), never another crash."""
    recorder, hospitals, _ = recorded
    state = bytearray(recorder.after["mask"][NODE])
    state[position % len(state)] ^= flip
    try:
        hospitals[NODE].handle(dict(recorder.requests["acknowledge"][NODE]), bytes(state))
    except Exception as exc:  # noqa: BLE001 - the assertion is about the kind of error
        assert isinstance(exc, ProtocolError), f"{type(exc).__name__}: {exc}"


def test_masking_state_round_trips_exactly(recorded) -> None:
    recorder, hospitals, _ = recorded
    import json

    from bfl_private.rounds.hospital import RoundState

    for stage in ("advertise", "share", "mask", "acknowledge"):
        saved = RoundState.from_bytes(recorder.after[stage][NODE])
        assert saved.to_bytes() == recorder.after[stage][NODE]  # the trained input and its record too
        assert saved.levels.shape == (saved.length,) and saved.privacy["noise_multiplier"] > 0
        hospital = hospitals[NODE]
        opened = hospital._opening(saved.open, saved.round, stage=stage)
        params = hospital._params(opened, saved.seed, saved.length)
        client = PersistentMaskingClient.from_state(saved.client, params, identity=hospital._key,
                                                    identity_keys=hospital._identity_keys(params))
        assert client.to_state() == saved.client
        assert stage in json.loads(saved.client)["done"] or stage == "acknowledge"


# --- node config, keys and data files ------------------------------------------------------


def test_key_readable_by_others_is_refused(recorded) -> None:
    _, _, folders = recorded
    key = next(iter(folders.values())) / IDENTITY_FILE
    os.chmod(key, 0o644)
    try:
        with pytest.raises(HospitalConfigError, match="chmod 600"):
            Hospital.from_node_config({"hospital-dir": str(key.parent)})
    finally:
        os.chmod(key, 0o600)


def test_an_unregistered_key_is_refused(recorded, tmp_path: Path) -> None:
    _, _, folders = recorded
    folder = next(iter(folders.values()))
    (tmp_path / "genesis.json").write_bytes((folder / "genesis.json").read_bytes())
    fd = os.open(tmp_path / IDENTITY_FILE, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, os.urandom(32))
    os.close(fd)
    with pytest.raises(HospitalConfigError, match="not registered"):
        Hospital.from_node_config({"hospital-dir": str(tmp_path)})


@pytest.mark.parametrize("config", [{}, {"hospital-dir": 3}, {"hospital-dir": "/nonexistent/bfl"}])
def test_bad_node_config_is_refused(config: dict[str, Any]) -> None:
    with pytest.raises(HospitalConfigError):
        Hospital.from_node_config(config)


def test_partition_of_another_hospital_is_refused(recorded) -> None:
    _, _, folders = recorded
    names = sorted(folders)
    hospital = Hospital.from_node_config({"hospital-dir": str(folders[names[0]]), "partition-id": 1,
                                          "num-partitions": len(names)})
    with pytest.raises(HospitalConfigError, match="belongs to"):
        _ = hospital.data
    with pytest.raises(HospitalConfigError, match="partitions"):
        Hospital.from_node_config({"hospital-dir": str(folders[names[0]]), "partition-id": 0, "num-partitions": 9})


def test_partition_mode_reads_the_exported_records(recorded) -> None:
    _, hospitals, folders = recorded
    name = min(folders)
    partition = Hospital.from_node_config({"hospital-dir": str(folders[name]), "partition-id": 0,
                                           "num-partitions": len(folders)})
    exported = next(h for h in hospitals.values() if h.name == name)
    assert np.array_equal(partition.data.features, exported.data.features)
    assert np.array_equal(partition.data.labels, exported.data.labels)


def test_csv_and_npz_hold_the_same_records(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    features = rng.normal(size=(12, 3)).astype(np.float32)
    labels = rng.integers(0, 2, size=12)
    np.savez(tmp_path / "d.npz", features=features, labels=labels)
    table = np.column_stack([features.astype(np.float64), labels])
    np.savetxt(tmp_path / "d.csv", table, delimiter=",", header="a,b,c,label", comments="", fmt="%.9g")
    a, b = load_data_file(tmp_path / "d.npz", n_classes=2), load_data_file(tmp_path / "d.csv", n_classes=2)
    assert np.array_equal(a.features, b.features) and np.array_equal(a.labels, b.labels)
    assert a.features.dtype == np.float32 and a.labels.dtype == np.int64


@pytest.mark.parametrize(("arrays", "why"), [
    ({"features": np.full((3, 2), np.nan), "labels": np.zeros(3)}, "finite"),
    ({"features": np.zeros((3, 2)), "labels": np.array([0, 1, 5])}, "labels"),
    ({"features": np.zeros((3, 2)), "labels": np.zeros(4)}, "must be"),
    ({"x": np.zeros((3, 2)), "labels": np.zeros(3)}, "expected arrays"),
    ({"features": np.array([{"a": 1}] * 3, dtype=object), "labels": np.zeros(3)}, "cannot read"),
])
def test_bad_data_files_are_refused(tmp_path: Path, arrays: dict[str, np.ndarray], why: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(HospitalConfigError, match=why):
        load_data_file(tmp_path / "bad.npz", n_classes=2)


def test_unknown_data_format_is_refused(tmp_path: Path) -> None:
    (tmp_path / "d.parquet").write_bytes(b"PAR1")
    with pytest.raises(HospitalConfigError, match=".npz or .csv"):
        load_data_file(tmp_path / "d.parquet", n_classes=2)


# --- the Flower layer --------------------------------------------------------------------


def test_client_app_answers_and_refuses_through_flower_messages(recorded, tmp_path: Path) -> None:
    pytest.importorskip("flwr")
    import shutil

    from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict

    from bfl_private.flower.client_app import STATE, app
    from bfl_private.rounds.hospital import PARTICIPATION_FILE
    from bfl_private.rounds.stages import MESSAGE_TYPES, RECORD
    from bfl_private.participant_checks import AlreadySubmitted

    recorder, hospitals, folders = recorded
    name = hospitals[NODE].name
    # the same hospital before it took part: a copy of its folder without the participation record
    fresh = tmp_path / name
    shutil.copytree(folders[name], fresh)
    (fresh / PARTICIPATION_FILE).unlink()
    context = Context(run_id=1, node_id=NODE, node_config={"hospital-dir": str(fresh)},
                      state=RecordDict(), run_config={})

    def message(stage: str, fields: dict[str, Any], record: str = RECORD) -> Message:
        # as the SuperNode delivers it (metadata set by the SuperLink)
        metadata = Metadata(run_id=1, message_id=f"m-{stage}", src_node_id=1, dst_node_id=NODE,
                            reply_to_message_id="", group_id="1", created_at=time.time(), ttl=3600.0,
                            message_type=MESSAGE_TYPES[stage])
        return Message(content=RecordDict({record: ConfigRecord(fields)}), metadata=metadata)

    # the fixture's hospital submitted in the recorded round: a replayed advertise is refused
    # even on a fresh Context.state, by name, and recorded in its participation record
    replayed = Context(run_id=1, node_id=NODE, node_config={"hospital-dir": str(folders[name])},
                       state=RecordDict(), run_config={})
    with pytest.raises(AlreadySubmitted):
        app(message("advertise", recorder.requests["advertise"][NODE]), replayed)
    assert STATE not in replayed.state
    assert hospitals[NODE].participation()["refused"][-1]["error"] == "AlreadySubmitted"
    with pytest.raises(OutOfOrderMessage):
        app(message("share", recorder.requests["share"][NODE]), context)
    reply = app(message("advertise", recorder.requests["advertise"][NODE]), context)
    assert reply.content[RECORD]["client"] == name and STATE in context.state
    with pytest.raises(StageMessageError, match="no 'bfl' ConfigRecord"):
        app(message("share", recorder.requests["share"][NODE], record="other"), context)
    with pytest.raises(StageMessageError, match="carries stage 'advertise'"):
        app(message("share", recorder.requests["advertise"][NODE]), context)
    saved = context.state[STATE]["state"]
    with pytest.raises(OutOfOrderMessage):  # a refused message leaves the saved state alone
        app(message("advertise", recorder.requests["advertise"][NODE]), context)
    assert context.state[STATE]["state"] == saved


@pytest.mark.parametrize(("key", "value", "why"), [
    ("protocol", "rot13", "one of 'masking', 'paillier', 'ckks', 'plain'"),
    ("epsilon", -1.0, "epsilon"),
    ("rounds", True, "rounds"),
    ("stage-timeout", 0, "stage-timeout"),
    ("train-timeout", -1, "train-timeout"),
    ("federation-dir", "", "federation-dir"),
    ("validators", "validator-0", "'validators': 'validator-0' is not NAME=HOST:PORT"),
    ("validators", "validator-0=h:1,validator-0=h:2", "each name once"),
    ("validators", 3, "must be a string"),
])
def test_run_config_is_checked(key: str, value: Any, why: str) -> None:
    pytest.importorskip("flwr")
    from bfl_private.coordinator import RunRefused
    from bfl_private.flower.server_app import RunSettings

    config = {"federation-dir": "fed", "epsilon": 1.0, "rounds": 2, "protocol": "masking", "min-nodes": 0,
              "node-wait": 10.0, "stage-timeout": 30.0, "train-timeout": 60.0,
              "skip-exhausted": False}
    assert RunSettings.from_run_config(config).rounds == 2
    assert RunSettings.from_run_config({**config, "validators": "validator-0=127.0.0.1:7000, validator-2=h:1"}
                                       ).validators == {"validator-0": "127.0.0.1:7000", "validator-2": "h:1"}
    with pytest.raises(RunRefused, match=why):
        RunSettings.from_run_config({**config, key: value})
