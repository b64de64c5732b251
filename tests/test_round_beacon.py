"""Round randomness nobody can steer (issue 15 item 4): the validators' beacon on a round opening.

The SecAgg+ graph seed is SHA-256 of the opening's hash and a quorum of validator
signatures on it (bfl_private/ledger/beacon.py). Here: the seed rule itself (properties),
validators that sign one opening per round id (a grinding coordinator is refused, also
after a restart), the contracts' placement of ``round_beacon``, participants and Flower
hospitals that derive the seed themselves and refuse a beacon that does not give it, and
the verifier's check 11 on ledgers whose beacon or seed was tampered with.
"""
from __future__ import annotations

import json

import dataclasses
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bfl_private.ledger.beacon import (
    BeaconError,
    BeaconPolicy,
    RoundBeacon,
    beacon_message,
    opening_digest,
    round_seed,
)
from bfl_private.ledger.cid import cid_for
from bfl_private.ledger.entries import (
    ABORT,
    ROUND_BEACON,
    ROUND_CLOSE,
    ROUND_OPEN,
    SUBMISSION,
    Entry,
)
from bfl_private.ledger.errors import ContractViolation, SemanticCheckError
from bfl_private.ledger.genesis import GenesisRecord
from bfl_private.ledger.identity import SigningIdentity
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from bfl_private.audit import LEGACY_RANDOMNESS, audit
from bfl_private.cli import main
from bfl_private.coordinator import COORDINATOR, Federation
from bfl_private.round_checks import check_round_randomness
from bfl_private.settings import FederationSettings
from bfl_private.parties import SigningParty, party_folder
from bfl_private.validator_service import QuorumNotReached
from bfl_private.validator import BEACONS_FILE, BeaconRefused, SecondOpening, Validator

VALIDATORS = [SigningIdentity.generate(f"validator-{i}") for i in range(4)]
COORDINATOR_KEY = SigningIdentity.generate("coordinator")


def _identity(federation: Federation, name: str) -> SigningIdentity:
    """Party ``name``'s identity, loaded from its own folder (a test acting as that party)."""
    return SigningParty(federation.directory, name).identity
POLICY = BeaconPolicy("bfl-test", tuple((v.name, v.public) for v in VALIDATORS), 3)


def _opening(round_id: int = 1, participants: tuple[str, ...] = ("a", "b", "c")) -> Entry:
    return Entry.create(COORDINATOR_KEY, ROUND_OPEN, round_id, {
        "participants": list(participants), "protocol": "masking", "protocol_params": {"neighbours": None},
        "base_model_cid": None, "privacy_plan": {}})


def _beacon(opening: Entry, signers: list[SigningIdentity], *, federation: str = "bfl-test") -> RoundBeacon:
    digest = opening_digest(opening)
    return RoundBeacon(digest, {v.name: v.sign(beacon_message(federation, opening.round, digest)) for v in signers})


# --- the rule ------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(range(4)), unique=True, min_size=3, max_size=4))
def test_the_seed_is_the_first_quorum_in_genesis_order(answered: list[int]) -> None:
    """Whatever extra validators answer, and in whatever order, the seed is that of the
    first quorum of them in genesis order: the coordinator cannot pick by reordering."""
    opening = _opening()
    seed = round_seed(_beacon(opening, [VALIDATORS[i] for i in answered]), opening=opening, policy=POLICY,
                      where="test")
    first = sorted(answered)[:3]
    assert seed == round_seed(_beacon(opening, [VALIDATORS[i] for i in first]), opening=opening,
                              policy=POLICY, where="test")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(range(4)), unique=True, max_size=2))
def test_fewer_signers_than_the_quorum_give_no_seed(answered: list[int]) -> None:
    opening = _opening()
    with pytest.raises(BeaconError, match="the quorum is 3"):
        round_seed(_beacon(opening, [VALIDATORS[i] for i in answered]), opening=opening, policy=POLICY, where="test")


@settings(max_examples=100, deadline=None)
@given(st.tuples(st.text("abc", min_size=1, max_size=4), st.integers(0, 2**64 - 1), st.binary(min_size=32, max_size=32)),
       st.tuples(st.text("abc", min_size=1, max_size=4), st.integers(0, 2**64 - 1), st.binary(min_size=32, max_size=32)))
def test_beacon_messages_of_distinct_rounds_differ(one: tuple[str, int, bytes], two: tuple[str, int, bytes]) -> None:
    """Federation id (length-prefixed), round id and opening hash are all bound: a
    signature for one round of one federation is never one for another."""
    assert (beacon_message(*one) == beacon_message(*two)) == (one == two)


def test_different_openings_of_one_round_give_unrelated_seeds() -> None:
    one, two = _opening(participants=("a", "b", "c")), _opening(participants=("a", "b", "d"))
    seeds = {round_seed(_beacon(o, VALIDATORS), opening=o, policy=POLICY, where="test") for o in (one, two)}
    assert len(seeds) == 2


CORRUPTIONS: list[tuple[str, Callable[[Entry], RoundBeacon], str]] = [
    ("a tampered signature", lambda o: RoundBeacon(opening_digest(o), {
        **_beacon(o, VALIDATORS).signatures,
        "validator-1": bytes([_beacon(o, VALIDATORS).signatures["validator-1"][0] ^ 1])
        + _beacon(o, VALIDATORS).signatures["validator-1"][1:]}), "validator-1' does not verify"),
    ("a non-validator signer", lambda o: _beacon(o, [*VALIDATORS[:3], SigningIdentity.generate("mallory")]),
     "not genesis validators"),
    ("the coordinator signing for a validator", lambda o: RoundBeacon(opening_digest(o), {
        **_beacon(o, VALIDATORS[:2]).signatures,
        "validator-2": COORDINATOR_KEY.sign(beacon_message("bfl-test", o.round, opening_digest(o)))}),
     "validator-2' does not verify"),
    ("a beacon replayed from another round", lambda o: _beacon(_opening(o.round - 1), VALIDATORS),
     "not round 2's opening"),
    ("signatures replayed from another round", lambda o: RoundBeacon(
        opening_digest(o), _beacon(_opening(o.round - 1), VALIDATORS).signatures), "does not verify"),
    ("signatures of another federation", lambda o: _beacon(o, VALIDATORS, federation="bfl-other"),
     "does not verify"),
]


@pytest.mark.parametrize(("what", "corrupt", "message"), CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_a_beacon_that_does_not_give_the_seed_is_refused(what: str, corrupt: Callable[[Entry], RoundBeacon],
                                                         message: str) -> None:
    opening = _opening(2)
    with pytest.raises(BeaconError, match=message):
        round_seed(corrupt(opening), opening=opening, policy=POLICY, where="test")


def test_the_beacon_record_round_trips() -> None:
    beacon = _beacon(_opening(), VALIDATORS)
    assert RoundBeacon.from_json(beacon.to_json(), where="test") == beacon


# --- a federation ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A federation (4 validators, quorum 3) after one honest masking round."""
    base = FederationSettings(n_clients=5)
    settings_ = dataclasses.replace(base, training=dataclasses.replace(base.training, local_steps=1))
    directory = tmp_path_factory.mktemp("beacon") / "fed"
    federation = Federation.create(directory, settings_, model_seed=0)
    try:
        _run(federation)
    finally:
        federation.close()
    return directory


@pytest.fixture
def fed(template: Path, tmp_path: Path):
    federation = Federation.open(Path(shutil.copytree(template, tmp_path / "fed")))
    yield federation
    federation.close()


def _run(federation: Federation, protocol: str = "masking") -> Any:
    plan = federation.plan(epsilon=2.0, rounds=10, skip_exhausted=False)
    return federation.run_round(plan, protocol=protocol, dropout=0.0, malicious=0, rng=np.random.default_rng(0))


def _next_opening(federation: Federation, **changes: Any) -> Entry:
    """An opening of the federation's next round, as the coordinator would sign it."""
    last = next(e for e in reversed(federation.ledger.entries()) if e.type == ROUND_OPEN)
    payload = {**last.payload, "base_model_cid": federation.ledger.state.model_cid, **changes}
    return Entry.create(_identity(federation, COORDINATOR), ROUND_OPEN, federation.ledger.state.last_round + 1, payload)


def test_an_honest_round_records_its_beacon_and_verifies(fed: Federation) -> None:
    entries = fed.ledger.entries()
    opening = next(i for i, e in enumerate(entries) if e.type == ROUND_OPEN)
    assert entries[opening + 1].type == ROUND_BEACON
    beacon = RoundBeacon.of(entries[opening + 1], where="test")
    assert sorted(beacon.signatures) == [f"validator-{i}" for i in range(4)]
    transcript = fed.ledger.blobs.get_json(next(e for e in entries if e.type == ROUND_CLOSE).payload["transcript_cid"])
    assert transcript["round_seed"] == round_seed(beacon, opening=entries[opening], policy=fed.beacon_policy(),
                                                  where="test").hex()
    report = audit(fed.directory).report
    assert report.ok and report.checks[10].name == "round randomness"
    assert LEGACY_RANDOMNESS not in report.notes


def test_a_grinding_coordinator_gets_no_second_opening_signed(fed: Federation) -> None:
    """Re-asking for another opening of the same round id is refused, also by a validator
    restarted from its file; asking again for the same opening gives the same signature."""
    first, second = _next_opening(fed), _next_opening(fed, participants=["hospital-00", "hospital-01", "hospital-02"])
    validator = fed.round_parties.validators[0]
    signature = validator.sign_beacon(first, fed.ledger)
    assert validator.sign_beacon(first, fed.ledger) == signature
    with pytest.raises(SecondOpening, match="one opening per round id"):
        validator.sign_beacon(second, fed.ledger)
    restarted = Validator(fed.directory, validator.name, validator.holdout, settings=fed.settings,
                          n_features=fed.data.n_features, n_classes=fed.data.n_classes)
    with pytest.raises(SecondOpening):
        restarted.sign_beacon(second, fed.ledger)
    assert restarted.sign_beacon(first, fed.ledger) == signature


def test_the_beacon_record_keeps_each_federations_rounds_and_refuses_when_unreadable(fed: Federation) -> None:
    validator = fed.round_parties.validators[0]
    validator.sign_beacon(_next_opening(fed), fed.ledger)
    record = party_folder(fed.directory, validator.name) / BEACONS_FILE
    assert oct(record.stat().st_mode & 0o777) == "0o600"
    federation_id = fed.ledger.state.federation_id
    assert list(json.loads(record.read_bytes())["openings"]) == [f"{federation_id}/1", f"{federation_id}/2"]
    record.write_text("{not json")
    with pytest.raises(BeaconRefused, match="unreadable beacon record, nothing is signed"):
        validator.sign_beacon(_next_opening(fed), fed.ledger)


@pytest.mark.parametrize(("what", "opening", "message"), [
    ("k below genesis", lambda f: _next_opening(f, protocol_params={
        **_next_opening(f).payload["protocol_params"], "neighbours": 2}), "WeakParameters"),
    ("t below k's rule", lambda f: _next_opening(f, protocol_params={
        **_next_opening(f).payload["protocol_params"], "threshold": 2}), "WeakParameters"),
    ("a wrong base model", lambda f: _next_opening(f, base_model_cid=cid_for(b"another")), "WrongBaseModel"),
    ("a closed round", lambda f: Entry.create(_identity(f, COORDINATOR), ROUND_OPEN, 1, dict(_next_opening(f).payload)),
     "next round is 2"),
    ("an opening not signed by the coordinator", lambda f: Entry.create(
        _identity(f, "hospital-00"), ROUND_OPEN, 2, dict(_next_opening(f).payload)), "SignatureError"),
])
def test_validators_sign_no_beacon_for_an_opening_they_refuse(fed: Federation, what: str,
                                                              opening: Callable[[Federation], Entry],
                                                              message: str) -> None:
    with pytest.raises(BeaconRefused, match=message):
        fed.round_parties.validators[1].sign_beacon(opening(fed), fed.ledger)


def test_without_a_quorum_of_beacon_signatures_nothing_is_written(fed: Federation,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    honest = Validator.sign_beacon

    def two_answer(self: Validator, opening: Entry, ledger: Any) -> bytes:
        if self.identity.name in ("validator-0", "validator-1"):
            raise BeaconRefused(f"{self.identity.name} is away")
        return honest(self, opening, ledger)

    monkeypatch.setattr(Validator, "sign_beacon", two_answer)
    size = fed.ledger.size
    with pytest.raises(QuorumNotReached, match="2 validator beacon signatures, the quorum is 3"):
        _run(fed)
    assert fed.ledger.size == size


def test_a_round_interrupted_after_its_beacon_is_ended_before_the_next(fed: Federation) -> None:
    """A coordinator that stopped after asking for a beacon cannot open that round id
    again with another opening; the next command records it aborted, then goes on."""
    interrupted = _next_opening(fed, participants=["hospital-00", "hospital-01", "hospital-02", "hospital-03"])
    fed.open_round(interrupted)
    summary = _run(fed)
    aborted = [e for e in fed.ledger.entries() if e.type == ABORT and e.round == interrupted.round]
    assert aborted and summary.round == interrupted.round + 1 and summary.status != "aborted"
    assert audit(fed.directory).ok


# --- the ledger: contracts, validators and the verifier ---------------------------------------


def _propose(federation: Federation, entries: list[Entry]) -> None:
    federation.ledger.propose(entries, time=int(time.time()))


def _honest_start(federation: Federation) -> list[Entry]:
    opened, _ = federation.open_round(_next_opening(federation))
    return opened


def test_the_contracts_place_the_beacon_right_after_the_opening(fed: Federation) -> None:
    opening, beacon = _honest_start(fed)
    client = "hospital-00"
    submission = Entry.create(_identity(fed, client), SUBMISSION, opening.round, {
        "client": client, "blob_cid": cid_for(b"update"), "privacy": {},
        "data_weight": fed.ledger.state.data_weights()[client]})
    by_client = Entry.create(_identity(fed, client), ROUND_BEACON, opening.round, dict(beacon.payload))
    with pytest.raises(ContractViolation, match="no round is in progress"):
        _propose(fed, [beacon])
    with pytest.raises(ContractViolation, match="already has its beacon"):
        _propose(fed, [opening, beacon, beacon])
    with pytest.raises(ContractViolation, match="comes after submissions"):
        _propose(fed, [opening, submission, beacon])
    with pytest.raises(ContractViolation, match="coordinator"):
        _propose(fed, [opening, by_client])
    _propose(fed, [opening, beacon, submission])


def _colluding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Validators that co-sign blocks without re-checking: only the verifier is left."""
    import bfl_private.validator as validator_module

    monkeypatch.setattr(validator_module, "check_round_randomness", lambda *args, **kwargs: None)


def _ship(monkeypatch: pytest.MonkeyPatch, change: Callable[[Federation, list[Entry], bytes], tuple[list[Entry], bytes]]
          ) -> None:
    """The coordinator records (and runs with) what ``change`` makes of the honest beacon and seed."""
    honest = Federation.open_round

    def open_round(self: Federation, opening: Entry) -> tuple[list[Entry], bytes]:
        return change(self, *honest(self, opening))

    monkeypatch.setattr(Federation, "open_round", open_round)


def _rebeacon(federation: Federation, opened: list[Entry], beacon: RoundBeacon) -> list[Entry]:
    return [opened[0], Entry.create(_identity(federation, COORDINATOR), ROUND_BEACON, opened[0].round, beacon.to_json())]


def _ground_seed(federation: Federation, opened: list[Entry], seed: bytes) -> tuple[list[Entry], bytes]:
    return opened, bytes(32)


def test_validators_refuse_to_cosign_a_round_run_on_another_seed(fed: Federation,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    _ship(monkeypatch, _ground_seed)
    size = fed.ledger.size
    with pytest.raises(QuorumNotReached, match="transcript's round_seed"):
        _run(fed)
    assert fed.ledger.size == size


def _tampered(federation: Federation, opened: list[Entry], seed: bytes) -> tuple[list[Entry], bytes]:
    beacon = RoundBeacon.of(opened[1], where="test")
    signature = bytearray(beacon.signatures["validator-2"])
    signature[5] ^= 1
    return _rebeacon(federation, opened, RoundBeacon(beacon.opening_sha256, {
        **beacon.signatures, "validator-2": bytes(signature)})), seed


def _too_few(federation: Federation, opened: list[Entry], seed: bytes) -> tuple[list[Entry], bytes]:
    beacon = RoundBeacon.of(opened[1], where="test")
    return _rebeacon(federation, opened, RoundBeacon(beacon.opening_sha256, {
        v: s for v, s in beacon.signatures.items() if v in ("validator-0", "validator-3")})), seed


def _outsider(federation: Federation, opened: list[Entry], seed: bytes) -> tuple[list[Entry], bytes]:
    beacon = RoundBeacon.of(opened[1], where="test")
    forged = _identity(federation, "hospital-00").sign(
        beacon_message(federation.ledger.state.federation_id, opened[0].round, beacon.opening_sha256))
    return _rebeacon(federation, opened, RoundBeacon(beacon.opening_sha256, {**beacon.signatures, "hospital-00": forged})), seed


def _replayed(federation: Federation, opened: list[Entry], seed: bytes) -> tuple[list[Entry], bytes]:
    earlier = next(e for e in federation.ledger.entries() if e.type == ROUND_BEACON)
    return _rebeacon(federation, opened, RoundBeacon.of(earlier, where="test")), seed


def _missing(federation: Federation, opened: list[Entry], seed: bytes) -> tuple[list[Entry], bytes]:
    return opened[:1], seed


LEDGER_LIES = [
    ("a seed other than the beacon's", _ground_seed, "transcript's round_seed"),
    ("a tampered beacon signature", _tampered, "validator-2' does not verify"),
    ("fewer signers than the quorum", _too_few, "2 validator beacon signatures, the quorum is 3"),
    ("a beacon signed by a non-validator", _outsider, "not genesis validators"),
    ("a beacon replayed from an earlier round", _replayed, "the beacon is for opening"),
    ("no beacon", _missing, "no round_beacon entry right after the round opening"),
]


@pytest.mark.parametrize(("what", "change", "message"), LEDGER_LIES, ids=[c[0] for c in LEDGER_LIES])
def test_the_verifier_fails_a_round_whose_seed_is_not_the_beacons(fed: Federation, monkeypatch: pytest.MonkeyPatch,
                                                                  what: str, change: Any, message: str) -> None:
    """With colluding validators the lie reaches the ledger; check 11 names it. (The
    in-process participants refuse a bad beacon, so those rounds end aborted.)"""
    _colluding(monkeypatch)
    _ship(monkeypatch, change)
    _run(fed)
    report = audit(fed.directory).report
    failure = report.failure
    assert failure is not None, f"{what}: the ledger verified"
    assert (failure.number, failure.name) == (11, "round randomness") and message in failure.detail, report.render()


def test_the_round_check_refuses_an_opening_below_genesis_and_a_transcript_off_it(fed: Federation) -> None:
    """k and t: an opening below genesis' (signed by validators that did not check) fails,
    and so does a transcript whose threshold is not the opening's."""
    genesis = GenesisRecord.of(fed.ledger.genesis())
    weak = _next_opening(fed, protocol_params={**_next_opening(fed).payload["protocol_params"], "neighbours": 2})
    digest = opening_digest(weak)
    signatures = {v.identity.name: v.identity.sign(beacon_message(fed.ledger.state.federation_id, weak.round, digest))
                  for v in fed.round_parties.validators}
    beacon = Entry.create(_identity(fed, COORDINATOR), ROUND_BEACON, weak.round, RoundBeacon(digest, signatures).to_json())
    with pytest.raises(SemanticCheckError, match="WeakParameters"):
        check_round_randomness([weak, beacon], genesis=genesis, blobs=fed.ledger.blobs, where="test")

    entries = list(fed.ledger.entries())
    start = next(i for i, e in enumerate(entries) if e.type == ROUND_OPEN)
    block = entries[start:next(i for i, e in enumerate(entries) if e.type == ROUND_CLOSE) + 1]
    check_round_randomness(block, genesis=genesis, blobs=fed.ledger.blobs, where="test")  # as recorded: passes
    close = block[-1]
    transcript = dict(fed.ledger.blobs.get_json(close.payload["transcript_cid"]))
    transcript["threshold"] = transcript["threshold"] + 1
    forged = Entry.create(_identity(fed, COORDINATOR), ROUND_CLOSE, close.round,
                          {**close.payload, "transcript_cid": fed.ledger.blobs.put_json(transcript)})
    with pytest.raises(SemanticCheckError, match="transcript's threshold"):
        check_round_randomness([*block[:-1], forged], genesis=genesis, blobs=fed.ledger.blobs, where="test")


def test_a_legacy_ledger_verifies_with_the_note(tmp_path: Path) -> None:
    from known_answer_vectors import known_answers

    answers = next(s for s in known_answers("ledgers") if s.version == "v1")
    directory = Path(shutil.copytree(answers.ledger("masking-local"), tmp_path / "legacy"))
    result = audit(directory)
    assert result.ok and LEGACY_RANDOMNESS in result.report.notes
    assert "could have been chosen by the coordinator" in LEGACY_RANDOMNESS
    printed = CliRunner().invoke(main, ["verify", str(directory)])
    assert printed.exit_code == 0 and " ".join(LEGACY_RANDOMNESS.split()) in " ".join(printed.output.split())


# --- Flower: the hospital derives the seed itself ------------------------------------------


def _flower() -> Any:
    return pytest.importorskip("bfl_private.rounds.loopback")


@pytest.fixture(scope="module")
def flower_fed(tmp_path_factory: pytest.TempPathFactory):
    _flower()
    from flower_transports import synced_federation

    federation, hospitals, plan, recorder = synced_federation(tmp_path_factory.mktemp("flower-beacon"))
    yield federation, hospitals, plan, recorder
    federation.close()


def _beacon_rewrite(recorder: Any, federation: Federation, what: str) -> Callable[[bytes, bytes], bytes]:
    """What a server that grinds sends hospitals instead of the recorded beacon."""
    coordinator = _identity(federation, COORDINATOR)

    def rewrite(opening: bytes, beacon: bytes) -> bytes:
        entry = Entry.from_bytes(beacon, where="test")
        honest = RoundBeacon.of(entry, where="test")
        if what == "replayed":
            return recorder.requests["advertise"][min(recorder.requests["advertise"])]["round-beacon"]
        if what == "too few":
            changed = RoundBeacon(honest.opening_sha256, dict(sorted(honest.signatures.items())[:2]))
        elif what == "tampered":
            first = min(honest.signatures)
            changed = RoundBeacon(honest.opening_sha256, {
                **honest.signatures, first: bytes([honest.signatures[first][0] ^ 1]) + honest.signatures[first][1:]})
        else:  # signed for a re-rolled opening the validators never saw: the coordinator's own grind
            other = Entry.create(coordinator, ROUND_OPEN, entry.round, {
                **Entry.from_bytes(opening, where="test").payload, "privacy_plan": {"grind": 1}})
            changed = RoundBeacon(opening_digest(other), honest.signatures)
        return Entry.create(coordinator, ROUND_BEACON, entry.round, changed.to_json()).to_bytes()

    return rewrite


@pytest.mark.parametrize("what", ["tampered", "too few", "replayed", "another opening"])
def test_a_hospital_refuses_a_beacon_that_does_not_give_the_seed(flower_fed, what: str) -> None:
    """The server has no say over the seed: a hospital checks the beacon against genesis'
    validators and the opening it was sent, refuses by name (BadBeacon), and trains nothing."""
    from bfl_private.rounds.loopback import LoopbackTransport
    from bfl_private.rounds.engine import RoundEngine

    federation, hospitals, plan, recorder = flower_fed
    rewrite = _beacon_rewrite(recorder, federation, what)

    class Grinding(LoopbackTransport):
        def exchange(self, stage: str, requests: Mapping[int, Mapping[str, Any]], *, round_id: int):  # type: ignore[no-untyped-def]
            if stage == "advertise":
                requests = {n: {**r, "round-beacon": rewrite(r["round-open"], r["round-beacon"])}
                            for n, r in requests.items()}
            return super().exchange(stage, requests, round_id=round_id)

    spent = {h.name: len(h.history()) for h in hospitals.values()}
    driver = RoundEngine(federation, plan, Grinding(hospitals))
    assert driver.run().status == "aborted"
    assert set(driver.declined) == {h.name for h in hospitals.values()}
    assert all("BadBeacon" in reason for reason in driver.declined.values())
    for hospital in hospitals.values():
        assert len(hospital.history()) == spent[hospital.name]
        assert hospital.participation()["refused"][-1]["error"] == "BadBeacon"
    assert audit(federation.directory).ok


def test_hospitals_take_part_in_an_honest_round_after_refusing(flower_fed) -> None:
    from bfl_private.rounds.loopback import LoopbackTransport
    from bfl_private.rounds.engine import RoundEngine

    federation, hospitals, plan, _ = flower_fed
    summary = RoundEngine(federation, plan, LoopbackTransport(hospitals)).run()
    assert summary.status != "aborted" and len(summary.survivors) == len(hospitals)
    assert audit(federation.directory).ok
