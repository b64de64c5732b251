"""`bfl-private verify` as an auditor uses it: what it is anchored to, pinning the genesis
and a checkpoint kept earlier, read-only evidence; and `check-proof` against genesis."""
from __future__ import annotations

import json
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from bfl_private.ledger.store import DATABASE, Ledger
from click.testing import CliRunner

from bfl_private.cli import main
from bfl_private.runner import RoundOptions, run_command


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("verify") / "fed"
    run_command(directory, RoundOptions(epsilon=1.0, clients=4, rounds=2, seed=3, protocol="plain"), quiet=True)
    return directory


@pytest.fixture
def copy(federation: Path, tmp_path: Path) -> Path:
    target = tmp_path / "fed"
    shutil.copytree(federation, target)
    return target


def cli(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def flat(output: str) -> str:
    return " ".join(output.split())


def one_error(output: str) -> bool:
    """One error message and nothing else (no traceback). The console may wrap it at 80
    columns when not on a terminal; that is the CLI-wide error printer's business."""
    return output.startswith("error: ") and output.count("error") == 1 and "Traceback" not in output


def truncate_last_block(directory: Path) -> None:
    """What a cleanly truncated copy looks like: the last block and all it added removed."""
    db = sqlite3.connect(directory / DATABASE)
    with db:
        (height,) = db.execute("SELECT MAX(height) FROM blocks").fetchone()
        (first,) = db.execute("SELECT first_entry FROM blocks WHERE height = ?", (height,)).fetchone()
        for table in ("blocks", "entries", "cosignatures"):
            db.execute(f"DELETE FROM {table} WHERE height = ?", (height,))
        db.execute("DELETE FROM nodes WHERE start + width > ?", (first,))
    db.close()


def test_verify_says_what_it_checked_against(federation: Path) -> None:
    with Ledger.open(federation) as ledger:
        genesis, head = ledger.genesis(), ledger.head
        validators = {name: v["key_id"] for name, v in ledger.state.validators().items()}
    fingerprint = "sha256:" + genesis.leaf_hash().hex()
    text = cli("verify", federation)
    assert text.exit_code == 0, text.output
    for fact in (genesis.payload["federation_id"], fingerprint, "trusted as received",
                 f"block {head.height}, tree size {head.size}, root {head.root.hex()}",
                 *validators.values(), *validators):
        assert fact in text.output, fact
    data = json.loads(cli("verify", federation, "--json").stdout)
    anchor = data["anchor"]
    assert anchor["genesis_fingerprint"] == fingerprint and anchor["genesis_pinned"] is False
    assert {v["id"]: v["key_id"] for v in anchor["validators"]} == validators
    assert anchor["head"]["size"] == head.size and anchor["head"]["root"] == head.root.hex()
    assert [c["status"] for c in data["checks"]] == ["passed"] * 11


def test_expect_genesis(federation: Path, tmp_path: Path) -> None:
    with Ledger.open(federation) as ledger:
        fingerprint = "sha256:" + ledger.genesis().leaf_hash().hex()
    pinned = cli("verify", federation, "--json", "--expect-genesis", fingerprint)
    assert pinned.exit_code == 0
    data = json.loads(pinned.stdout)
    assert data["anchor"]["genesis_pinned"] is True
    assert not any("trusted as received" in n for n in data["notes"])
    other = "sha256:" + "ab" * 32
    wrong = cli("verify", federation, "--json", "--expect-genesis", other)
    assert wrong.exit_code == 1
    failure = json.loads(wrong.stdout)["failure"]
    assert failure["number"] == 2 and other in failure["detail"]
    bad = cli("verify", federation, "--expect-genesis", "not-a-fingerprint")
    assert bad.exit_code == 2 and "--expect-genesis" in flat(bad.output) and one_error(bad.output)


def test_a_pinned_checkpoint_catches_a_truncated_copy(copy: Path, tmp_path: Path) -> None:
    note = tmp_path / "head.note"
    saved = cli("verify", copy, "--save-checkpoint", note)
    assert saved.exit_code == 0 and "Head checkpoint saved" in saved.output
    with Ledger.open(copy) as ledger:
        assert note.read_text(encoding="utf-8") == ledger.checkpoint()
        kept_size = ledger.size
    ok = cli("verify", copy, "--json", "--checkpoint", note)
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.stdout)
    assert [c["number"] for c in data["checks"] if c["status"] == "passed"] == list(range(1, 12))
    assert data["anchor"]["trusted_checkpoint"]["size"] == kept_size
    truncate_last_block(copy)
    assert cli("verify", copy).exit_code == 0  # alone, a cleanly cut copy looks whole
    # A failed verification saves nothing.
    assert cli("verify", copy, "--checkpoint", note, "--save-checkpoint", tmp_path / "x").exit_code == 1
    assert not (tmp_path / "x").exists()
    cut = cli("verify", copy, "--json", "--checkpoint", note)
    assert cut.exit_code == 1
    failure = json.loads(cut.stdout)["failure"]
    assert failure["number"] == 2 and "truncated" in failure["detail"]
    for content, message in [(b"\xff\xfe", "not a readable signed checkpoint"),
                             (b"just text\n", "not a readable signed checkpoint")]:
        (tmp_path / "bad.note").write_bytes(content)
        bad = cli("verify", copy, "--checkpoint", tmp_path / "bad.note")
        assert bad.exit_code == 2 and message in flat(bad.output) and one_error(bad.output)
    missing = cli("verify", copy, "--checkpoint", tmp_path / "absent.note")
    assert missing.exit_code == 2 and "absent.note" in "".join(missing.output.split())


def snapshot(directory: Path) -> list[tuple[str, int, int, bytes]]:
    return [(str(p.relative_to(directory)), p.stat().st_mode, p.stat().st_mtime_ns,
             p.read_bytes() if p.is_file() else b"")
            for p in sorted([directory, *directory.rglob("*")])]


def test_verify_and_check_proof_write_nothing_into_read_only_evidence(copy: Path, tmp_path: Path) -> None:
    proof = tmp_path / "p.json"
    proof.write_text(cli("prove", copy, "--entry", "3").stdout)
    shutil.rmtree(copy / "parties")  # an auditor gets the directory without parties/
    paths = [copy, *copy.rglob("*")]
    for path in paths:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        before = snapshot(copy)
        result = cli("verify", copy)
        assert result.exit_code == 0, result.output
        assert cli("check-proof", proof, "--dir", copy).exit_code == 0
        assert snapshot(copy) == before
    finally:
        for path in paths:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def read_only_mount_available() -> bool:
    """Whether an unprivileged user namespace may bind-mount a folder read-only here."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount --bind /tmp /tmp && mount -o remount,bind,ro /tmp"],
                           capture_output=True, timeout=30, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(not read_only_mount_available(), reason="no unprivileged read-only bind mount (unshare -rm) here")
def test_verify_on_a_read_only_file_system(copy: Path) -> None:
    """A real read-only mount, where even root cannot create SQLite's side files: a plain
    read-only SQLite open fails there with 'unable to open database file'."""
    command = (f"mount --bind {copy} {copy} && mount -o remount,bind,ro {copy} && "
               f"{sys.executable} -m bfl_private.cli verify {copy} --json")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", command], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr + done.stdout
    assert json.loads(done.stdout)["ok"] is True


def test_check_proof_names_what_it_proved(federation: Path, tmp_path: Path) -> None:
    with Ledger.open(federation) as ledger:
        index = next(i for i, e in enumerate(ledger.entries()) if e.type == "submission")
        entry, size = ledger.entries(index, index + 1)[0], ledger.size
    proof = tmp_path / "p.json"
    proof.write_text(cli("prove", federation, "--entry", index).stdout)
    result = cli("check-proof", proof, "--dir", federation)
    assert result.exit_code == 0, result.output
    line = result.output.strip()
    assert len(line.splitlines()) == 1
    for fact in (f"entry {index}", f"submission by {entry.payload['client']}",
                 f"round {entry.round}", f"tree size {size}", "quorum (3 of 4)"):
        assert fact in line, (fact, line)
    consistency = tmp_path / "c.json"
    consistency.write_text(cli("prove", federation, "--consistency", 1, 2).stdout)
    result = cli("check-proof", consistency, "--dir", federation)
    assert result.exit_code == 0 and "is a prefix of the log of tree size" in result.output


@pytest.mark.parametrize("mutate, message", [
    (lambda r: {**r, "entry": 12}, "field 'entry' must be str, got int"),
    (lambda r: {k: v for k, v in r.items() if k != "tree_size"}, "missing field 'tree_size'"),
    (lambda r: {**r, "entry_index": -1}, "must be >= 0"),
    (lambda r: {**r, "proof": ["zz"]}, "hex hashes"),
    (lambda r: {**r, "checkpoint": "no signatures"}, "not a signed checkpoint"),
    (lambda r: [r], "a JSON object is expected"),
    (lambda r: {"old_size": 1}, "missing field"),
])
def test_check_proof_malformed_records_exit_2_in_one_line(federation: Path, tmp_path: Path, mutate, message: str) -> None:
    record = json.loads(cli("prove", federation, "--entry", "2").stdout)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(mutate(record)))
    result = cli("check-proof", path, "--dir", federation)
    assert result.exit_code == 2, result.output
    assert message in flat(result.output) and one_error(result.output)


@pytest.mark.parametrize("content", [b"not json", b"\xff\xfe\x00garbage", b"[" * 100_000, b""])
def test_check_proof_non_json_exits_2(federation: Path, tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "p.json"
    path.write_bytes(content)
    result = cli("check-proof", path, "--dir", federation)
    assert result.exit_code == 2 and "not a JSON proof record" in flat(result.output)
    assert one_error(result.output)


def test_check_proof_failures_exit_1(copy: Path, tmp_path: Path) -> None:
    record = json.loads(cli("prove", copy, "--entry", "2").stdout)
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps({**record, "entry": record["entry"].replace('"round":', '"round": ')}))
    result = cli("check-proof", tampered, "--dir", copy)
    assert result.exit_code == 1 and "InclusionProofError" in flat(result.output)
    # Another federation's directory: its genesis names other validators.
    other = tmp_path / "other"
    run_command(other, RoundOptions(epsilon=1.0, clients=4, rounds=1, seed=3, protocol="plain"), quiet=True)
    proof = tmp_path / "p.json"
    proof.write_text(json.dumps(record))
    result = cli("check-proof", proof, "--dir", other)
    assert result.exit_code == 1, result.output
    # The directory's head must be certified by genesis's validators, whatever its
    # stored state says: strip the head block's cosignatures.
    db = sqlite3.connect(copy / DATABASE)
    with db:
        db.execute("DELETE FROM cosignatures WHERE height = (SELECT MAX(height) FROM blocks)")
    db.close()
    result = cli("check-proof", proof, "--dir", copy)
    assert result.exit_code == 1 and "QuorumError" in flat(result.output), result.output
