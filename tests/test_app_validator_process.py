"""Validators as their own processes: the request records, the TCP server, the panel's
quorum rule, and ``bfl-private validator`` serving a real ``bfl-private round``."""
from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from bfl_private.audit import audit
from bfl_private.cli import EXIT_NOT_CERTIFIED, EXIT_REFUSED, EXIT_USAGE, main
from bfl_private.keyring import KeyringError
from bfl_private.ledger.entries import ATTESTATION, ROUND_CLOSE, Entry
from bfl_private.ledger.errors import MalformedRecord, SemanticCheckError
from bfl_private.ledger.identity import SigningIdentity
from bfl_private.ledger.store import Ledger
from bfl_private.primitives.errors import BflError
from bfl_private.validator import COSIGNED_FILE, proposal_message
from bfl_private.validator_service import (
    ATTEST,
    COSIGN,
    RemoteValidator,
    ValidatorReply,
    ValidatorRequest,
    decode_message,
    open_validator,
)
from validator_fixtures import served

VALIDATORS = [f"validator-{i}" for i in range(4)]


def _cli(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("fed") / "ledger"
    result = _cli("round", "--dir", str(directory), "--epsilon", "1", "--rounds", "1", "--clients", "4",
                  "--seed", "1", "--json")
    assert result.exit_code == 0, result.output
    return directory


@pytest.fixture
def copy(federation: Path, tmp_path: Path) -> Path:
    target = tmp_path / "ledger"
    shutil.copytree(federation, target)
    return target


def _closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"  # nothing listens once it is closed


def _round_entries(directory: Path) -> tuple:
    with Ledger.open(directory) as ledger:
        entries = ledger.entries()
        block = ledger.block(ledger.height)
    return tuple(entries[i] for i in block.entry_range), block


def _proposed(directory: Path, header) -> bytes:
    """The coordinator's proposal signature of ``header`` (a test acting as the coordinator)."""
    from bfl_private.parties import SigningParty

    return SigningParty(directory, "coordinator").identity.sign(proposal_message(header))


def _before_next_round(copy: Path) -> tuple[Path, tuple, object]:
    """A copy of the ledger as it stands, then one more round run on ``copy``: the copy's
    validators are asked about exactly that round. Returns the copy, the round's block
    entries and the block. Content-addressed blobs travel ahead of the block that names
    them, as a sync would."""
    older = copy.parent / "older"
    shutil.copytree(copy, older)
    assert _cli("round", "--dir", str(copy), "--epsilon", "1", "--rounds", "1").exit_code == 0
    shutil.copytree(copy / "blobs", older / "blobs", dirs_exist_ok=True)
    entries, block = _round_entries(copy)
    return older, entries, block


def _last_round(directory: Path) -> int:
    with Ledger.open(directory) as ledger:
        return ledger.state.last_round


# --- the records on the wire ------------------------------------------------------------

def test_requests_and_replies_survive_their_encoding(federation: Path) -> None:
    entries, block = _round_entries(federation)
    for request in (ValidatorRequest(ATTEST, "bfl-x", entries),
                    ValidatorRequest(COSIGN, "bfl-x", entries, block.header, bytes(64))):
        again = ValidatorRequest.from_json(json.loads(json.dumps(request.to_json())), where="test")
        assert [e.to_bytes() for e in again.entries] == [e.to_bytes() for e in request.entries]
        assert (again.kind, again.federation_id, again.header, again.proposer_signature) == \
            (request.kind, request.federation_id, request.header, request.proposer_signature)
    attestation = next(e for e in entries if e.type == ATTESTATION)
    for reply in (ValidatorReply(attestation=attestation), ValidatorReply(signature=bytes(64)),
                  ValidatorReply(refusal="no")):
        again = ValidatorReply.from_json(json.loads(json.dumps(reply.to_json())), where="test")
        assert again.to_json() == reply.to_json()


@pytest.mark.parametrize("change, message", [
    (lambda r: {**r, "kind": "decrypt"}, "kind must be one of"),
    (lambda r: {k: v for k, v in r.items() if k != "entries"}, "a validator request has exactly the fields"),
    (lambda r: {**r, "entries": []}, "non-empty list"),
    (lambda r: {**r, "entries": ["not base64!"]}, "entry 0: not base64"),
    (lambda r: {**r, "entries": ["e30="]}, "entry 0"),  # {} is no entry
    (lambda r: {**r, "header": "e30="}, "only a cosign request carries a header"),
    (lambda r: {**r, "kind": "cosign", "header": "e30="}, "header"),
])
def test_a_malformed_request_is_refused_by_name(federation: Path, change, message: str) -> None:
    entries, _ = _round_entries(federation)
    request = ValidatorRequest(ATTEST, "bfl-x", entries).to_json()
    with pytest.raises(MalformedRecord, match=message):
        ValidatorRequest.from_json(change(request), where="request")


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(["attestation", "signature", "refusal", "other"]),
                       st.one_of(st.none(), st.text(max_size=8), st.integers())))
def test_a_reply_is_exactly_one_well_formed_answer(data: dict) -> None:
    try:
        reply = ValidatorReply.from_json(data, where="reply")
    except MalformedRecord:
        return
    assert sum(v is not None for v in (reply.attestation, reply.signature, reply.refusal)) == 1


def test_deeply_nested_bytes_are_refused_before_parsing() -> None:
    with pytest.raises(MalformedRecord, match="nested deeper"):
        decode_message(b"[" * 100_000, where="request")


# --- one validator over TCP ---------------------------------------------------------------

def test_a_served_validator_attests_and_cosigns_only_what_checks_out(copy: Path) -> None:
    older, entries, block = _before_next_round(copy)
    round_entries = tuple(e for e in entries if e.type != ATTESTATION)
    with Ledger.open(copy) as ledger:
        federation_id = ledger.state.federation_id
    with served(older, "validator-1") as address:
        remote = RemoteValidator("validator-1", address, timeout=60)
        attested = remote.call(ValidatorRequest(ATTEST, federation_id, round_entries))
        assert attested.attestation is not None and attested.attestation.type == ATTESTATION
        assert attested.attestation.payload["validator"] == "validator-1"
        # The same signed attestation the round holds (Ed25519 signatures are deterministic).
        assert attested.attestation.to_bytes() in {e.to_bytes() for e in entries}
        # A block whose header the entries do not give is refused, and said why.
        honest = remote.call(ValidatorRequest(COSIGN, federation_id, entries, block.header,
                                              _proposed(copy, block.header)))
        assert honest.signature is not None
        open_validator(older, "validator-1").identity.public.verify(honest.signature, block.header.signing_bytes())
        forged = dataclasses.replace(block.header, state_root=bytes(32))
        refused = remote.call(ValidatorRequest(COSIGN, federation_id, entries, forged, _proposed(copy, forged)))
        assert refused.refusal is not None and "not what the entries give" in refused.refusal
        # Another federation's request is refused before anything is checked.
        other = remote.call(ValidatorRequest(ATTEST, "bfl-other", round_entries))
        assert other.refusal is not None and "bfl-other" in other.refusal
        # Garbage on the socket gets a refusal, and the server keeps serving.
        with socket.create_connection(remote.address, timeout=10) as sock:
            body = b'{"kind": 1}'
            sock.sendall(struct.pack(">I", len(body)) + body)
            size = struct.unpack(">I", sock.recv(4))[0]
            data = b""
            while len(data) < size:
                data += sock.recv(size)
        assert "malformed request" in json.loads(data)["refusal"]
        assert remote.call(ValidatorRequest(ATTEST, federation_id, round_entries)).attestation is not None


# --- the coordinator's quorum rule ---------------------------------------------------------

def test_a_round_needs_a_quorum_and_writes_nothing_without_one(copy: Path) -> None:
    before = _last_round(copy)
    down = [f"--validator=validator-{i}={_closed_port()}" for i in (0, 1)]
    result = _cli("round", "--dir", str(copy), "--epsilon", "1", "--rounds", "1", *down)
    assert result.exit_code == EXIT_NOT_CERTIFIED, result.output
    assert "2 validator beacon signatures, the quorum is 3" in result.output
    assert "validator-0: unavailable" in result.output and "validator-1: unavailable" in result.output
    assert _last_round(copy) == before
    assert audit(copy).ok


def test_one_validator_down_still_leaves_a_quorum(copy: Path) -> None:
    result = _cli("round", "--dir", str(copy), "--epsilon", "1", "--rounds", "1",
                  f"--validator=validator-3={_closed_port()}", "--json")
    assert result.exit_code == 0, result.output
    entries, _ = _round_entries(copy)
    attesters = {e.payload["validator"] for e in entries if e.type == ATTESTATION}
    assert attesters == {"validator-0", "validator-1", "validator-2"}
    assert audit(copy).ok


@pytest.mark.parametrize("flag, code, message", [
    ("--validator=validator-9=127.0.0.1:1", EXIT_REFUSED, "no validator named validator-9"),
    ("--validator=validator-1", EXIT_USAGE, "NAME=HOST:PORT"),
    ("--validator=validator-1=localhost", EXIT_USAGE, "not HOST:PORT"),
])
def test_bad_validator_flags_are_refused(copy: Path, flag: str, code: int, message: str) -> None:
    result = _cli("round", "--dir", str(copy), "--epsilon", "1", "--rounds", "1", flag)
    assert result.exit_code == code, result.output
    assert message in result.output


def test_a_new_federation_cannot_start_with_remote_validators(tmp_path: Path) -> None:
    result = _cli("round", "--dir", str(tmp_path / "new"), "--epsilon", "1", "--validator=validator-0=127.0.0.1:9")
    assert result.exit_code == EXIT_REFUSED and "bfl-private init" in result.output
    assert not (tmp_path / "new" / "ledger.sqlite3").exists()


def test_the_validator_command_refuses_an_unknown_name(federation: Path) -> None:
    result = _cli("validator", "--dir", str(federation), "--name", "validator-7")
    assert result.exit_code == EXIT_USAGE and "no validator named 'validator-7'" in result.output


# --- every validator its own process ------------------------------------------------------

@pytest.mark.slow
def test_a_round_certified_by_four_validator_processes(copy: Path) -> None:
    processes, addresses = [], {}
    try:
        for name in VALIDATORS:
            child = subprocess.Popen([sys.executable, "-m", "bfl_private.cli", "validator", "--dir", str(copy),
                                      "--name", name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            processes.append(child)
        for name, child in zip(VALIDATORS, processes):
            line = child.stdout.readline()
            assert line.startswith(f"validator {name} listening on "), line + child.stderr.read()
            addresses[name] = line.split()[-1]
        flags = [f"--validator={name}={address}" for name, address in addresses.items()]
        result = _cli("round", "--dir", str(copy), "--epsilon", "1", "--rounds", "1", "--json", *flags)
        assert result.exit_code == 0, result.output
    finally:
        for child in processes:
            child.terminate()
    logs = [child.communicate(timeout=30)[0] for child in processes]
    assert all("round 2: beacon signed" in log and "round 2: attested" in log and "block 2: cosigned" in log
               for log in logs), logs
    entries, block = _round_entries(copy)
    assert any(e.type == ROUND_CLOSE for e in entries)
    assert {e.payload["validator"] for e in entries if e.type == ATTESTATION} == set(VALIDATORS)
    assert audit(copy).ok


def test_a_validator_signs_one_header_per_height_across_restarts(copy: Path) -> None:
    older, entries, block = _before_next_round(copy)
    # The same entries under another block time give another valid header at the same
    # height: a proposer collecting a quorum for each would fork the chain.
    other = dataclasses.replace(block.header, time=block.header.time + 1)
    with Ledger.open(older) as ledger:
        validator = open_validator(older, "validator-2")
        proposed = _proposed(older, block.header)
        signature = validator.cosign_header(block.header, entries, ledger, proposer_signature=proposed)
        validator.identity.public.verify(signature, block.header.signing_bytes())
        # The same block again: fine.
        assert validator.cosign_header(block.header, entries, ledger, proposer_signature=proposed) == signature
        with pytest.raises(SemanticCheckError, match="already cosigned another header at height"):
            validator.cosign_header(other, entries, ledger, proposer_signature=_proposed(older, other))
        restarted = open_validator(older, "validator-2")  # what it signed is kept beside its key
        with pytest.raises(SemanticCheckError, match="already cosigned another header at height"):
            restarted.cosign_header(other, entries, ledger, proposer_signature=_proposed(older, other))
        (older / "parties" / "validator-2" / COSIGNED_FILE).write_bytes(b"{not json")
        with pytest.raises(KeyringError, match="unreadable record of the last cosigned block"):
            open_validator(older, "validator-2")


def test_a_faulty_attestation_does_not_sink_a_round_a_quorum_certifies(copy: Path, monkeypatch) -> None:
    from bfl_private.validator import Validator

    honest = Validator.attest

    def attest(self, entries, ledger):  # validator-0 signs its attestation with a key of its own making
        entry = honest(self, entries, ledger)
        if self.identity.name != "validator-0":
            return entry
        return Entry.create(SigningIdentity.generate("validator-0"), ATTESTATION, entry.round, entry.payload)

    monkeypatch.setattr(Validator, "attest", attest)
    result = _cli("round", "--dir", str(copy), "--epsilon", "1", "--rounds", "1", "--json")
    assert result.exit_code == 0, result.output
    entries, _ = _round_entries(copy)
    assert {e.payload["validator"] for e in entries if e.type == ATTESTATION} == set(VALIDATORS[1:])
    assert audit(copy).ok


# --- what the adversarial review found ------------------------------------------------------

def test_a_block_some_validators_signed_is_proposed_again_not_abandoned(copy: Path, monkeypatch) -> None:
    """Two validators refuse to cosign: no quorum, but the other two have signed that height.
    The next command proposes the same block (they sign nothing else there) and goes on."""
    from bfl_private.validator import Validator

    honest = Validator.cosign_header

    def two_refuse(self, header, entries, ledger, *, proposer_signature):
        if self.name in ("validator-0", "validator-1"):
            raise SemanticCheckError(f"{self.name} is away")
        return honest(self, header, entries, ledger, proposer_signature=proposer_signature)

    before = _last_round(copy)
    with monkeypatch.context() as patch:
        patch.setattr(Validator, "cosign_header", two_refuse)
        refused = _cli("round", "--dir", str(copy), "--epsilon", "1", "--rounds", "1")
    assert refused.exit_code == EXIT_NOT_CERTIFIED and "2 of 4 validators cosigned" in refused.output
    assert _last_round(copy) == before
    result = _cli("round", "--dir", str(copy), "--epsilon", "1", "--rounds", "1", "--json")
    assert result.exit_code == 0, result.output
    assert _last_round(copy) == before + 2  # the kept round, then this command's
    assert audit(copy).ok


def test_an_honest_validator_cosigns_no_close_other_than_the_one_it_attested(copy: Path) -> None:
    from bfl_private.parties import SigningParty

    older, entries, block = _before_next_round(copy)
    round_entries = [e for e in entries if e.type != ATTESTATION]
    close = next(e for e in round_entries if e.type == ROUND_CLOSE)
    # The coordinator re-signs the close after the attestations: every ε claim understated
    # (as the spend before the round, which the contracts accept).
    with Ledger.open(older) as ledger:
        spent = {c: float(v["epsilon_spent"]) for c, v in ledger.state.clients().items()}
    claims = {c: spent[c] for c in close.payload["cumulative_epsilon"]}
    forged_close = SigningParty(older, "coordinator").entry(ROUND_CLOSE, close.round,
                                                            {**close.payload, "cumulative_epsilon": claims})
    with Ledger.open(older) as ledger:
        for validator in (open_validator(older, "validator-1"), None):
            validator = validator or open_validator(older, "validator-1")  # then restarted: no memory
            own = validator.attest(round_entries, ledger)
            forged = [forged_close if e is close else e for e in round_entries] + [own]
            header = ledger.propose(forged, time=block.header.time).header
            with pytest.raises(SemanticCheckError):
                validator.cosign_header(header, forged, ledger, proposer_signature=_proposed(older, header))


def test_a_validator_attests_only_the_ledgers_next_round_signed_by_its_parties(copy: Path) -> None:
    entries, _ = _round_entries(copy)  # round 1, already on the ledger
    round_entries = [e for e in entries if e.type != ATTESTATION]
    outsider = SigningIdentity.generate("coordinator")
    relabelled = [Entry.create(outsider, e.type, 7, e.payload) for e in round_entries]
    with Ledger.open(copy) as ledger:
        validator = open_validator(copy, "validator-1")
        with pytest.raises(SemanticCheckError, match="the ledger's next round is 2"):
            validator.attest(round_entries, ledger)
        with pytest.raises(SemanticCheckError, match="the ledger's next round is 2"):
            validator.attest(relabelled, ledger)
        re_signed = [Entry.create(outsider, e.type, 2, e.payload) for e in round_entries]
        with pytest.raises(BflError):
            validator.attest(re_signed, ledger)


def test_a_reply_that_is_no_json_value_is_a_named_refusal_not_a_crash() -> None:
    with pytest.raises(MalformedRecord, match="not JSON"):
        decode_message(b'{"refusal": ' + b"1" * 5000 + b"}", where="reply")


def test_a_message_dripped_byte_by_byte_meets_one_deadline() -> None:
    from bfl_private import validator_service

    left, right = socket.socketpair()

    def drip() -> None:
        try:
            right.sendall(struct.pack(">I", 1000))
            for _ in range(1000):
                right.sendall(b"x")
                time.sleep(0.05)
        except OSError:
            pass

    threading.Thread(target=drip, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(MalformedRecord, match="before the deadline"):
        validator_service._receive_frame(left, limit=4096, seconds=0.5, where="test")  # noqa: SLF001
    assert time.monotonic() - started < 2
    left.close()
    right.close()


def test_a_genesis_cannot_name_the_legacy_seed_rule(federation: Path) -> None:
    from bfl_private.settings import FederationSettings, SettingsError

    with Ledger.open(federation) as ledger:
        settings = dict(ledger.genesis().payload["settings"])
    assert FederationSettings.from_json(settings).round_randomness == "validator-beacon-v1"
    with pytest.raises(SettingsError, match="a genesis names 'validator-beacon-v1' or no rule"):
        FederationSettings.from_json({**settings, "round_randomness": "legacy-head-hash"})
    legacy = FederationSettings.from_json({k: v for k, v in settings.items() if k != "round_randomness"})
    assert legacy.round_randomness == "legacy-head-hash" and "round_randomness" not in legacy.to_json()


def test_a_keys_folder_left_beside_parties_is_refused(copy: Path) -> None:
    from bfl_private.parties import LegacyKeyLayout, check_layout

    (copy / "keys").mkdir()
    with pytest.raises(LegacyKeyLayout, match="migrate"):
        check_layout(copy)


def test_a_header_not_proposed_by_the_coordinator_spends_no_height(copy: Path) -> None:
    """A network peer re-times a cosign request: refused by name, and the validator still
    signs the coordinator's own header at that height afterwards."""
    older, entries, block = _before_next_round(copy)
    retimed = dataclasses.replace(block.header, time=block.header.time + 1)
    peer = SigningIdentity.generate("coordinator")
    with Ledger.open(older) as ledger:
        validator = open_validator(older, "validator-3")
        with pytest.raises(BflError, match="does not verify"):
            validator.cosign_header(retimed, entries, ledger,
                                    proposer_signature=peer.sign(proposal_message(retimed)))
        with pytest.raises(BflError, match="does not verify"):  # the coordinator's signature of another header
            validator.cosign_header(retimed, entries, ledger, proposer_signature=_proposed(older, block.header))
        signature = validator.cosign_header(block.header, entries, ledger,
                                            proposer_signature=_proposed(older, block.header))
    validator.identity.public.verify(signature, block.header.signing_bytes())


def test_a_round_its_clients_submitted_in_is_recorded_with_their_spend_after_a_failed_attest(
        copy: Path, monkeypatch) -> None:
    """The validators do not attest (no quorum) after the clients have sent their updates:
    the next command records that round as it ended, charging them, not as an unrun abort."""
    from bfl_private.validator_service import QuorumNotReached, ValidatorPanel

    def away(self, entries):
        raise QuorumNotReached("no validator answers (test)")

    spent_before = _spent(copy)
    with monkeypatch.context() as patch:
        patch.setattr(ValidatorPanel, "attest", away)
        failed = _cli("round", "--dir", str(copy), "--epsilon", "1", "--rounds", "1")
    assert failed.exit_code == EXIT_NOT_CERTIFIED, failed.output
    round_id = _last_round(copy) + 1
    assert _cli("round", "--dir", str(copy), "--epsilon", "1", "--rounds", "1").exit_code == 0
    with Ledger.open(copy) as ledger:
        kinds = {e.type for e in ledger.entries() if e.round == round_id}
    assert ROUND_CLOSE in kinds and "abort" not in kinds
    assert _last_round(copy) == round_id + 1
    assert all(_spent(copy)[c] > spent_before[c] for c in spent_before)
    assert audit(copy).ok


def _spent(directory: Path) -> dict[str, float]:
    with Ledger.open(directory) as ledger:
        return {c: float(v["epsilon_spent"]) for c, v in ledger.state.clients().items()}


def test_idle_connections_do_not_keep_a_served_validator_from_answering(copy: Path) -> None:
    with Ledger.open(copy) as ledger:
        federation_id = ledger.state.federation_id
    entries, _ = _round_entries(copy)
    with served(copy, "validator-0") as address:
        remote = RemoteValidator("validator-0", address, timeout=10)
        idle = [socket.create_connection(remote.address) for _ in range(4)]
        try:
            started = time.monotonic()
            reply = remote.call(ValidatorRequest(ATTEST, federation_id, tuple(entries[:1])))
            assert reply.refusal is not None and time.monotonic() - started < 5
        finally:
            for connection in idle:
                connection.close()


def test_validators_in_their_own_processes_are_asked_at_once(copy: Path) -> None:
    """Two silent validators cost a request one timeout, not two."""
    from bfl_private.validator_service import ValidatorPanel

    with Ledger.open(copy) as ledger:
        genesis = ledger.genesis().payload
    entries, _ = _round_entries(copy)
    listeners = []
    try:
        for _ in range(2):  # accept connections, never answer
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            listeners.append(listener)
        endpoints = [RemoteValidator(f"validator-{i}", "127.0.0.1:%d" % l.getsockname()[1], timeout=1.5)
                     for i, l in enumerate(listeners)]
        panel = ValidatorPanel(endpoints, keys={}, quorum=1, federation_id=genesis["federation_id"],
                               sign_proposal=lambda message: bytes(64))
        started = time.monotonic()
        replies = panel._ask_all(ValidatorRequest(ATTEST, genesis["federation_id"], tuple(entries[:1])))  # noqa: SLF001
        assert time.monotonic() - started < 2.8
        assert [e.name for e, _ in replies] == ["validator-0", "validator-1"]
        assert all(r.refusal is not None and "unavailable" in r.refusal for _, r in replies)
    finally:
        for listener in listeners:
            listener.close()
