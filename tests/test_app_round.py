"""End to end: `bfl-private round` writes a federation that `bfl-private verify` accepts,
and every kind of tampering — by a file editor or by a colluding coordinator and
validator quorum — fails the check that names it."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from bfl_private.ledger.entries import ROUND_CLOSE, ROUND_OPEN, SUBMISSION
from bfl_private.ledger.errors import ContractViolation, SemanticCheckError
from bfl_private.ledger.store import DATABASE, Ledger
from bfl_private.parties import PARTIES_DIR
from click.testing import CliRunner

import bfl_private.coordinator as coordinator_module
import bfl_private.rounds.engine as engine_module
from bfl_private.coordinator import INTERRUPTED
from bfl_private.audit import audit
from bfl_private.cli import main
from bfl_private.round_checks import check_threshold_key
from bfl_private.runner import RoundOptions, RunRefused, run_command
from bfl_private.validator import Validator

SMALL = {"clients": 4, "rounds": 2, "seed": 1}


def run(directory: Path, **overrides: object):
    options = {"epsilon": 1.0, **SMALL, **overrides}
    return run_command(directory, RoundOptions(**options), quiet=True)


def failed_check(directory: Path) -> tuple[int, str, str]:
    report = audit(directory).report
    assert not report.ok, "tampered ledger verified"
    failure = report.failure
    return failure.number, failure.name, failure.detail


@pytest.fixture(scope="module")
def masking_federation(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("fed") / "ledger"
    run(directory, protocol="masking")
    return directory


@pytest.fixture
def copy(masking_federation: Path, tmp_path: Path) -> Path:
    target = tmp_path / "ledger"
    shutil.copytree(masking_federation, target)
    return target


@pytest.mark.parametrize("protocol", ["plain", "masking", "paillier", "ckks"])
def test_round_then_verify_for_each_protocol(tmp_path: Path, protocol: str) -> None:
    report = run(tmp_path / "fed", protocol=protocol)
    assert [r.round for r in report.rounds] == [1, 2]
    assert all(r.status in ("accepted", "rejected") for r in report.rounds)
    result = audit(tmp_path / "fed")
    assert result.ok, result.report.render()
    assert [c.number for c in result.report.checks] == list(range(1, 12))
    notes = result.report.notes
    assert len(notes) == len(set(notes)), "one note per kind"
    assert "noise was actually drawn" in " ".join(notes) and "self-declared" in " ".join(notes)
    assert ("cannot be proven (CKKS" in " ".join(notes)) == (protocol == "ckks")
    # The homomorphic modes name who can decrypt (CKKS's key holder, Paillier's trusted
    # dealer) once, with every round it served.
    key_holder = [n for n in notes if "key holder" in n or "trusted dealer" in n]
    assert len(key_holder) == (protocol in ("paillier", "ckks"))
    assert all(n.endswith("(rounds 1-2)") for n in key_holder)
    epsilons = [c.epsilon for c in result.summary.clients]
    assert all(0 < e <= 1.0 + 1e-9 for e in epsilons)


def test_continuing_composes_privacy_and_keys_stay_private(copy: Path) -> None:
    first = {c.id: c.epsilon for c in audit(copy).summary.clients}
    run(copy, rounds=1)
    second = {c.id: c.epsilon for c in audit(copy).summary.clients}
    # Composition is exact and sub-additive: more than before, less than the sum.
    assert all(first[c] < second[c] < first[c] + 1.0 for c in first)
    folders = list((copy / PARTIES_DIR).iterdir())
    assert folders and all(oct(f.stat().st_mode & 0o777) == "0o700" for f in folders)
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for f in folders for p in f.iterdir())
    auditor_copy = copy.parent / "auditor"
    shutil.copytree(copy, auditor_copy, ignore=shutil.ignore_patterns(PARTIES_DIR))
    assert audit(auditor_copy).ok


def test_swapped_blob_fails_the_cid_check(copy: Path) -> None:
    with Ledger.open(copy) as ledger:
        submissions = [e.payload["blob_cid"] for e in ledger.entries() if e.type == SUBMISSION]
    first, second = (copy / "blobs" / cid for cid in submissions[:2])
    first.write_bytes(second.read_bytes())
    number, name, detail = failed_check(copy)
    assert (number, name) == (6, "blob CIDs") and submissions[0] in detail


def _colluding_validators(monkeypatch: pytest.MonkeyPatch) -> None:
    """Validators that co-sign without re-checking: only the auditor is left to catch a lie."""
    from bfl_private.round_checks import RoundView

    monkeypatch.setattr(Validator, "check_round", lambda self, entries, ledger: RoundView.of(entries))


def test_altered_aggregate_fails_the_recomputation(copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _colluding_validators(monkeypatch)
    honest = coordinator_module.put_aggregate
    monkeypatch.setattr(coordinator_module, "put_aggregate",
                        lambda blobs, total: honest(blobs, total + np.eye(1, total.shape[0])[0] * 1e-3))
    run(copy, rounds=1)
    number, name, detail = failed_check(copy)
    assert (number, name) == (8, "aggregates recomputed") and "round 3" in detail


@pytest.mark.parametrize("dp", ["local", "distributed"])
def test_altered_model_fails_the_model_chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dp: str) -> None:
    copy = tmp_path / "ledger"
    run(copy, rounds=1, dp=dp)
    _colluding_validators(monkeypatch)
    honest, honest_step = engine_module.next_global_model, engine_module.model_after
    monkeypatch.setattr(engine_module, "next_global_model",
                        lambda *a, **k: honest(*a, **k) + np.float32(0.01))  # local DP's FedAvg
    monkeypatch.setattr(engine_module, "model_after",  # distributed DP's server step (this federation's)
                        lambda *a, **k: (lambda model, state: (model + np.float32(0.01), state))(*honest_step(*a, **k)))
    run(copy, rounds=1)
    assert failed_check(copy)[:2] == (9, "model chain")


def test_lowered_epsilon_claim_fails_the_privacy_check(copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _colluding_validators(monkeypatch)
    honest = engine_module.charged_epsilon
    with Ledger.open(copy) as ledger:
        spent = {c: v["epsilon_spent"] for c, v in ledger.state.clients().items()}
    # Lower, yet still above what the contract has on record, so only recomputation can tell.
    monkeypatch.setattr(engine_module, "charged_epsilon", lambda histories, records: {
        c: (e + max(spent.values())) / 2 for c, e in honest(histories, records).items()})
    run(copy, rounds=1)
    number, name, detail = failed_check(copy)
    assert (number, name) == (10, "privacy claims") and "claimed cumulative ε" in detail


def test_replayed_submission_is_refused_by_the_contract(copy: Path) -> None:
    with Ledger.open(copy) as ledger:
        old = next(e for e in ledger.entries() if e.type == SUBMISSION and e.round == 1)
        with pytest.raises(ContractViolation, match="round 1"):
            ledger.propose([old], time=int(time.time()))
    # Written into the file behind the ledger's back, the replay breaks the log itself.
    db = sqlite3.connect(copy / DATABASE)
    with db:
        (count,) = db.execute("SELECT COUNT(*) FROM entries").fetchone()
        db.execute("UPDATE entries SET data = ? WHERE idx = ?", (old.to_bytes(), count - 1))
    db.close()
    assert failed_check(copy)[0] in (1, 3)


def test_removed_cosignature_below_quorum_fails(copy: Path) -> None:
    db = sqlite3.connect(copy / DATABASE)
    with db:
        (height,) = db.execute("SELECT MAX(height) FROM blocks").fetchone()
        keys = [k for (k,) in db.execute("SELECT key_id FROM cosignatures WHERE height = ?", (height,))]
        db.execute("DELETE FROM cosignatures WHERE height = ? AND key_id IN (?, ?)", (height, keys[0], keys[1]))
    db.close()
    number, name, detail = failed_check(copy)
    assert (number, name) == (5, "quorum certificates") and f"block {height}" in detail


def test_budget_exhaustion_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    directory = tmp_path / "fed"
    run(directory, budget=1.5, rounds=1)
    run(directory, rounds=1)  # 1.0 composed with 1.0 stays below 1.5 under PLD
    before = (directory / DATABASE).read_bytes(), sorted(os.listdir(directory / "blobs"))
    with pytest.raises(RunRefused, match="would exceed its lifetime privacy budget"):
        run(directory, rounds=1)
    assert ((directory / DATABASE).read_bytes(), sorted(os.listdir(directory / "blobs"))) == before
    assert audit(directory).ok
    # --skip-exhausted leaves them out instead; with nobody left, the refusal says so.
    with pytest.raises(RunRefused, match=r"a round needs \d"):
        run(directory, rounds=1, skip_exhausted=True)


def test_dropouts_close_or_abort_and_the_ledger_verifies(tmp_path: Path) -> None:
    report = run(tmp_path / "fed", protocol="masking", clients=8, rounds=3, dropout=0.3, seed=11)
    assert any(r.dropouts for r in report.rounds) or any(r.status == "aborted" for r in report.rounds)
    assert audit(tmp_path / "fed").ok


def test_malicious_client_rejected_in_plain_mode_and_penalised(tmp_path: Path) -> None:
    report = run(tmp_path / "fed", protocol="plain", malicious=1, rounds=1)
    (summary,) = report.rounds
    (culprit, reason), = summary.rejected.items()
    assert "outside" in reason
    result = audit(tmp_path / "fed")
    assert result.ok
    balances = {c.id: c.balance for c in result.summary.clients}
    assert balances[culprit] == 0  # penalised, never below zero, never rewarded


def test_cli_json_and_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    directory = tmp_path / "fed"
    result = runner.invoke(main, ["round", "--epsilon", "1.0", "--dir", str(directory), "--clients", "4",
                                  "--rounds", "1", "--protocol", "plain", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["rounds"][0]["round"] == 1 and 0 <= data["rounds"][0]["test_accuracy"] <= 1
    assert {c["id"] for c in data["clients"]} == {f"hospital-0{i}" for i in range(4)}
    assert all(0 < c["epsilon"] <= 1.0 + 1e-9 for c in data["clients"])
    verify = runner.invoke(main, ["verify", str(directory), "--json"])
    assert verify.exit_code == 0 and json.loads(verify.stdout)["summary"]["last_round"] == 1
    for args, message in [
        (["round", "--dir", str(directory)], "give --epsilon"),
        (["round", "--epsilon", "-1", "--dir", str(directory)], "must be a finite number > 0"),
        (["round", "--epsilon", "1", "--rounds", "0"], "0 is not in the range"),
        (["round", "--epsilon", "1", "--dir", str(directory), "--clients", "7"], "conflicts with the federation's genesis"),
    ]:
        bad = runner.invoke(main, args)
        assert bad.exit_code in (2, 3) and message in bad.output, (args, bad.output)
    afile = tmp_path / "file"
    afile.write_text("x")
    bad = runner.invoke(main, ["round", "--epsilon", "1", "--dir", str(afile)])
    assert bad.exit_code == 2


@pytest.mark.slow
def test_kill_9_mid_round_leaves_a_verifiable_ledger_that_continues(tmp_path: Path) -> None:
    directory = tmp_path / "fed"
    run(directory, rounds=1, budget=50.0)
    command = [sys.executable, "-m", "bfl_private.cli", "round", "--epsilon", "3", "--rounds", "50",
               "--dir", str(directory), "--json"]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            db = sqlite3.connect(f"file:{directory / DATABASE}?mode=ro", uri=True)
            (height,) = db.execute("SELECT MAX(height) FROM blocks").fetchone()
            db.close()
            if height >= 3:
                break
            time.sleep(0.05)
        time.sleep(0.3)  # somewhere inside the next round
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert audit(directory).ok
    with Ledger.open(directory) as ledger:
        height_after_crash = ledger.height
        assert ledger.state.open_round is None or ledger.state.open_round.get("status") != "open"
    run(directory, rounds=1, epsilon=1.0)
    with Ledger.open(directory) as ledger:
        # What the kill left half done is settled first, in a block of its own: a block the
        # validators had started to cosign is proposed again as it was (the round recorded
        # in full); else a round whose beacon they had signed (one opening per round id) is
        # recorded as aborted, unrun. Then this command's round.
        interrupted = [e for e in ledger.entries() if e.type == "abort" and e.payload["reason"] == INTERRUPTED]
        settled = ledger.height - height_after_crash - 1
        assert settled in (0, 1) and len(interrupted) <= settled
        assert ledger.state.rounds()[-1]["outcome"] != "aborted"
    assert audit(directory).ok


def test_masking_transcript_with_unregistered_identity_keys_fails(copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that records masking as run under keys of its own choosing (so it could
    sign fake advertisements and seed commitments) is caught: the keys are not the
    registered ones."""
    import dataclasses

    from bfl_private.protocols.masking import MaskingServer

    _colluding_validators(monkeypatch)
    honest_finish = MaskingServer.finish

    def substituted(self):
        outcome = honest_finish(self)
        keys = {c: bytes(32).hex() for c in outcome.transcript["identity_keys"]}
        return dataclasses.replace(outcome, transcript={**outcome.transcript, "identity_keys": keys})

    monkeypatch.setattr(MaskingServer, "finish", substituted)
    run(copy, rounds=1)
    number, name, detail = failed_check(copy)
    assert (number, name) == (8, "aggregates recomputed") and "not its registered key" in detail


def test_paillier_rounds_are_decrypted_by_a_quorum_of_validators(tmp_path: Path) -> None:
    """No key holder: each validator keeps one share, the transcript carries a quorum of
    proven partial decryptions, and the audit re-checks them."""
    directory = tmp_path / "fed"
    run(directory, protocol="paillier", rounds=1)
    parties = directory / PARTIES_DIR
    keys = sorted(str(p.relative_to(parties)) for p in parties.rglob("*") if p.is_file() and "paillier" in p.name)
    assert keys == ["paillier-dealer/paillier-modulus-proof.json",  # the dealer keeps nothing else
                    *(f"validator-{i}/paillier-share.json" for i in range(4))]
    ledger = Ledger.open(directory)
    try:
        close = next(e for e in ledger.entries() if e.type == ROUND_CLOSE)
        transcript = ledger.blobs.get_json(close.payload["transcript_cid"])
    finally:
        ledger.close()
    record = transcript["threshold_decryption"]
    assert "proofs" not in transcript
    assert record["public_key"]["quorum"] == 3 and record["public_key"]["key_generation"] == "trusted-dealer"
    assert [p["party"] for p in record["partials"]] == ["validator-0", "validator-1", "validator-2"]
    assert all(len(p["values"]) == len(transcript["aggregate"]) for p in record["partials"])
    assert audit(directory).ok


def test_a_round_decrypted_with_a_key_other_than_the_announced_one_fails_the_audit(tmp_path: Path) -> None:
    directory = tmp_path / "fed"
    run(directory, protocol="paillier", rounds=1)
    assert any("trusted dealer" in note for note in audit(directory).report.notes)
    ledger = Ledger.open(directory)
    try:
        opened = next(e for e in ledger.entries() if e.type == ROUND_OPEN)
        close = next(e for e in ledger.entries() if e.type == ROUND_CLOSE)
        transcript = ledger.blobs.get_json(close.payload["transcript_cid"])
    finally:
        ledger.close()
    validators = [f"validator-{i}" for i in range(4)]
    params = opened.payload["protocol_params"]
    check_threshold_key(transcript, params, validators, where="round 1")  # as committed: passes
    other = json.loads(json.dumps(transcript))
    other["threshold_decryption"]["public_key"]["quorum"] = 1
    with pytest.raises(SemanticCheckError, match="not the one the round opening announced"):
        check_threshold_key(other, params, validators, where="round 1")
    without = {k: v for k, v in transcript.items() if k != "threshold_decryption"}
    with pytest.raises(SemanticCheckError, match="holds no threshold decryption"):
        check_threshold_key(without, params, validators, where="round 1")
    with pytest.raises(SemanticCheckError, match="not the registered validators"):
        check_threshold_key(transcript, params, validators[:3] + ["validator-9"], where="round 1")
