"""The verifier on a real ledger: it passes, and every tampering fails the right check."""
from __future__ import annotations

import base64
import json
import random
import shutil
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from ledger_fixtures import Federation, RefusingPool, build_ledger

from bfl_private.ledger.blocks import BlockHeader
from bfl_private.ledger.canonical import canonical_bytes
from bfl_private.ledger.checkpoint import Checkpoint, sign_note
from bfl_private.ledger.contracts import LedgerState
from bfl_private.ledger.entries import SUBMISSION, Entry
from bfl_private.ledger.errors import (
    ChainError,
    CIDMismatch,
    ConsistencyProofError,
    ContractViolation,
    MalformedRecord,
    QuorumError,
    RootMismatch,
    SemanticCheckError,
    SignatureError,
    StateRootMismatch,
    StorageError,
)
from bfl_private.ledger.merkle import Frontier
from bfl_private.ledger.store import DATABASE, Ledger, SQLiteStore
from bfl_private.ledger.verify import (
    BlockContext,
    LedgerAnchor,
    VerifierHook,
    genesis_fingerprint,
    parse_fingerprint,
    read_anchor,
    run_checks,
    verify_ledger,
)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[Path, Federation]:
    directory = tmp_path_factory.mktemp("pristine") / "ledger"
    return directory, build_ledger(directory, rounds=3)


@pytest.fixture
def copy(pristine, tmp_path: Path) -> tuple[Path, Federation]:
    """A private copy of the pristine ledger to tamper with."""
    source, federation = pristine
    target = tmp_path / "ledger"
    shutil.copytree(source, target)
    return target, federation


def sql(directory: Path, *statements: tuple[str, tuple]) -> None:
    db = sqlite3.connect(directory / DATABASE)
    with db:
        for statement, args in statements:
            db.execute(statement, args)
    db.close()


def entry_bytes(directory: Path, index: int) -> bytes:
    db = sqlite3.connect(directory / DATABASE)
    (data,) = db.execute("SELECT data FROM entries WHERE idx = ?", (index,)).fetchone()
    db.close()
    return bytes(data)


def append_unchecked(directory: Path, federation: Federation, entries: Sequence[Entry]) -> None:
    """What a colluding quorum could write: a certified block that skips propose's checks."""
    store = SQLiteStore.open(directory / DATABASE)
    height, header_bytes, _, state_bytes = store.last_block_row()
    head = BlockHeader.from_bytes(header_bytes, where="head")
    state = LedgerState.from_bytes(state_bytes, where="head state")
    try:
        state = state.apply_block(entries, first_index=head.size)
    except ContractViolation:
        pass  # the colluders keep the previous state root
    frontier = Frontier.from_subtree(store.subtree, head.size)
    nodes = [node for e in entries for node in frontier.append(e.leaf_hash())]
    header = BlockHeader(head.origin, height + 1, frontier.size, frontier.root(), head.hash(),
                         state.root(), head.time + 60)
    signatures = {v.public.key_id_hex: v.sign(header.signing_bytes())
                  for v in federation.validators.values()}
    store.write_block(height=height + 1, header=header.signing_bytes(), first_entry=head.size,
                      state=state.to_bytes(), cosignatures=signatures,
                      entries=[e.to_bytes() for e in entries], nodes=nodes)
    store.close()


def next_round(directory: Path, federation: Federation, **kwargs: object) -> list[Entry]:
    with Ledger.open(directory) as ledger:
        return federation.round_entries(ledger, ledger.state.last_round + 1, **kwargs)


def expect_failure(directory: Path, check: int, error: type, *, block: int | None = None,
                   entry: int | None = None, match: str = "", **kwargs: object) -> None:
    report = run_checks(directory, **kwargs)
    failure = report.failure
    assert not report.ok and failure is not None, report.render()
    assert (failure.number, failure.error_type) == (check, error.__name__), report.render()
    if block is not None:
        assert failure.block == block, report.render()
    if entry is not None:
        assert failure.entry == entry, report.render()
    assert all(c.status == "passed" for c in report.checks[: check - 1])
    assert all(c.status == "not run" for c in report.checks[check:])
    with pytest.raises(error, match=f"check {check} .*{match}"):
        verify_ledger(directory, **kwargs)


def test_pristine_ledger_verifies(pristine) -> None:
    directory, _ = pristine
    report = verify_ledger(directory)
    assert report.ok and [c.number for c in report.checks] == [1, 2, 3, 4, 5, 6, 7]
    assert report.blocks == 4 and report.entries == 28
    assert any("no semantic hooks" in n for n in report.notes)


def test_flipped_byte_inside_a_value_is_a_merkle_failure(copy) -> None:
    directory, _ = copy
    data = entry_bytes(directory, 2)
    assert b'"data_weight":50' in data
    sql(directory, ("UPDATE entries SET data = ? WHERE idx = 2",
                    (data.replace(b'"data_weight":50', b'"data_weight":51'),)))
    expect_failure(directory, 3, RootMismatch, block=1, entry=2, match="entry 2 hashes")


def test_flipped_structural_byte_is_a_storage_failure(copy) -> None:
    directory, _ = copy
    data = bytearray(entry_bytes(directory, 9))
    data[0] ^= 0x01
    sql(directory, ("UPDATE entries SET data = ? WHERE idx = 9", (bytes(data),)))
    expect_failure(directory, 1, MalformedRecord, entry=9, match="entry 9")


def test_deleted_entry_row(copy) -> None:
    directory, _ = copy
    sql(directory, ("DELETE FROM entries WHERE idx = 4", ()))
    expect_failure(directory, 1, StorageError, entry=5, match="not contiguous")


def test_deleted_last_entry_row(copy) -> None:
    directory, _ = copy
    sql(directory, ("DELETE FROM entries WHERE idx = 27", ()))
    expect_failure(directory, 2, ChainError, match="truncated")


def test_reordered_rows(copy) -> None:
    directory, _ = copy
    a, b = entry_bytes(directory, 2), entry_bytes(directory, 3)
    sql(directory, ("UPDATE entries SET data = ? WHERE idx = 2", (b,)),
        ("UPDATE entries SET data = ? WHERE idx = 3", (a,)))
    expect_failure(directory, 3, RootMismatch, block=1, entry=2)


def test_truncation_is_caught_against_a_trusted_checkpoint(copy) -> None:
    directory, federation = copy
    with Ledger.open(directory) as ledger:
        trusted = ledger.checkpoint()
    sql(directory, *((f"DELETE FROM {table} WHERE height = 3", ())
                     for table in ("blocks", "entries", "cosignatures")),
        ("DELETE FROM nodes WHERE start + width > 19", ()))
    # Alone, a cleanly truncated directory is self-consistent: only a checkpoint seen
    # before can reveal the missing blocks (as in Certificate Transparency).
    assert run_checks(directory).ok
    expect_failure(directory, 2, ChainError, match="truncated",
                   trusted_checkpoint=trusted)
    # A fork: a different block 3 of the same size.
    with Ledger.open(directory) as ledger:
        federation.run_round(ledger, 3, dropouts=["client-1"], epsilon_step=0.25)
        federation.run_round(ledger, 4)
    expect_failure(directory, 3, ConsistencyProofError, trusted_checkpoint=trusted)


def test_truncated_database_file(copy) -> None:
    directory, _ = copy
    path = directory / DATABASE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    expect_failure(directory, 1, StorageError)


def test_replaced_and_missing_blobs(copy) -> None:
    directory, _ = copy
    with Ledger.open(directory) as ledger:
        submission = ledger.entries(12, 13)[0]
    assert submission.type == SUBMISSION
    blob = directory / "blobs" / submission.payload["blob_cid"]
    blob.write_bytes(blob.read_bytes()[:-1] + b"\x00")
    expect_failure(directory, 6, CIDMismatch, block=2, entry=12, match="hash to")
    blob.unlink()
    expect_failure(directory, 6, CIDMismatch, block=2, entry=12, match="missing")


def test_forged_entry_signature_in_a_certified_block(copy) -> None:
    directory, federation = copy
    entries = next_round(directory, federation)
    victim = entries[1]
    record = json.loads(victim.to_bytes())
    wrong_key = federation.clients["client-2"]  # signs client-0's submission
    record["sig"] = base64.b64encode(wrong_key.sign(victim.signed_bytes())).decode()
    forged = Entry.from_bytes(canonical_bytes(record), where="forged")
    append_unchecked(directory, federation, [entries[0], forged, *entries[2:]])
    expect_failure(directory, 4, SignatureError, block=4, entry=29, match="does not verify")


def test_cosignatures_below_quorum(copy) -> None:
    directory, federation = copy
    keys = [v.public.key_id_hex for v in federation.validators.values()]
    sql(directory, ("DELETE FROM cosignatures WHERE height = 2 AND key_id IN (?, ?)",
                    (keys[0], keys[1])))
    expect_failure(directory, 5, QuorumError, block=2, match="quorum is 3")


def test_corrupted_cosignature(copy) -> None:
    directory, federation = copy
    key = federation.validators["validator-2"].public.key_id_hex
    sql(directory, ("UPDATE cosignatures SET signature = ? WHERE height = 1 AND key_id = ?",
                    (bytes(64), key)))
    expect_failure(directory, 5, SignatureError, block=1, match="validator-2")


def test_replayed_submission_in_a_later_round(copy) -> None:
    directory, federation = copy
    with Ledger.open(directory) as ledger:
        old_submission = ledger.entries(2, 3)[0]
    assert old_submission.type == SUBMISSION and old_submission.round == 1
    entries = next_round(directory, federation)
    append_unchecked(directory, federation, [entries[0], old_submission, *entries[2:]])
    expect_failure(directory, 7, ContractViolation, block=4, entry=29,
                   match="entry is for round 1")


@pytest.mark.parametrize(("step", "override", "message"), [
    (2.0, None, "exceeds its lifetime budget"),
    (0.5, 0.25, "would decrease"),
])
def test_epsilon_claims(copy, step: float, override: float | None, message: str) -> None:
    directory, federation = copy
    entries = next_round(directory, federation, epsilon_step=step)
    if override is not None:
        close = entries[4]
        entries[4] = Entry.create(federation.coordinator, close.type, close.round, {
            **close.payload,
            "cumulative_epsilon": {**close.payload["cumulative_epsilon"], "client-0": override}})
    append_unchecked(directory, federation, entries)
    expect_failure(directory, 7, ContractViolation, block=4, entry=32, match=message)


def test_stored_state_that_differs_from_the_replay(copy) -> None:
    directory, _ = copy
    statement = ("UPDATE blocks SET state = (SELECT state FROM blocks WHERE height = 1) "
                 "WHERE height = 2")
    sql(directory, (statement, ()))
    expect_failure(directory, 7, StateRootMismatch, block=2, match="stored state differs")


def test_empty_ledger_fails(tmp_path: Path) -> None:
    Ledger.create(tmp_path / "l").close()
    expect_failure(tmp_path / "l", 1, ChainError, match="no blocks")


class ModelChainHook(VerifierHook):
    """A semantic hook: the model a round starts from is the one the previous round kept."""

    name = "model chain (test hook)"

    def __init__(self, fail_at: int | None = None) -> None:
        self.fail_at = fail_at
        self.seen: list[int] = []

    def check_block(self, context: BlockContext) -> None:
        self.seen.append(context.block.height)
        for entry in context.entries:
            if entry.type == "round_open":
                assert entry.payload["base_model_cid"] == context.state_before.model_cid
                context.blobs.get(context.state_after.model_cid)
        context.note("noise was drawn as declared cannot be proven from the ledger")
        if context.block.height == self.fail_at:
            raise SemanticCheckError(f"block {self.fail_at}: aggregate does not recompute")


def test_semantic_hooks_run_after_the_core_checks(pristine) -> None:
    directory, _ = pristine
    hook = ModelChainHook()
    report = verify_ledger(directory, hooks=[hook])
    assert hook.seen == [0, 1, 2, 3]
    assert [c.number for c in report.checks] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert report.checks[7].name == "model chain (test hook)"
    # Collapsed: the hook noted the same text for every block, the report shows it once.
    assert report.notes[0] == "noise was drawn as declared cannot be proven from the ledger"
    assert len(report.notes) == len(set(report.notes)) == 3
    assert "trusted as received" in report.notes[1] and "--checkpoint FILE" in report.notes[2]
    expect_failure(directory, 8, SemanticCheckError, block=2, hooks=[ModelChainHook(2)])


def test_verifier_imports_no_torch_nor_the_other_layers() -> None:
    code = ("import sys, bfl_private.ledger.verify, bfl_private.ledger.inspect; "
            "bad = [m for m in sys.modules if m.split('.')[0] == 'torch' or "
            "m.startswith(('bfl_private.privacy', 'bfl_private.protocols'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_random_bit_flips_in_the_database_file(pristine, tmp_path: Path) -> None:
    """Flips anywhere never crash the verifier; flips inside a stored entry are always caught."""
    source, _ = pristine
    data = (source / DATABASE).read_bytes()
    with Ledger.open(source) as ledger:
        records = [e.to_bytes() for e in ledger.entries()]
    # Entries stored exactly once in the file (a stale copy in a free page is not data).
    spans = [(data.find(r), len(r)) for r in records if data.count(r) == 1]
    assert len(spans) > len(records) // 2, "entries are stored inline in the file"
    rng = random.Random(2026)
    for trial in range(24):
        inside = trial % 2 == 0
        if inside:
            start, length = spans[rng.randrange(len(spans))]
            position = start + rng.randrange(length)
        else:
            position = rng.randrange(len(data))
        flipped = bytearray(data)
        flipped[position] ^= 1 << rng.randrange(8)
        target = tmp_path / str(trial)
        shutil.copytree(source, target)
        (target / DATABASE).write_bytes(bytes(flipped))
        report = run_checks(target)  # any failure is a VerificationError inside the report
        if inside:
            assert not report.ok, f"flip at byte {position} inside an entry went unnoticed"


def test_trusted_checkpoint_of_another_log(pristine) -> None:
    directory, federation = pristine
    with Ledger.open(directory) as ledger:
        head = ledger.head
    other = Checkpoint("bfl-private/other-fed", head.size, head.root).body()
    note = sign_note(other, list(federation.validators.values()))
    expect_failure(directory, 2, ChainError, match="other-fed", trusted_checkpoint=note)


def test_anchor_names_federation_genesis_validators_and_head(pristine) -> None:
    directory, federation = pristine
    with Ledger.open(directory) as ledger:
        genesis, head = ledger.genesis(), ledger.head
    report = run_checks(directory)
    anchor = report.anchor
    assert anchor is not None and anchor.federation_id == "test-fed"
    # The fingerprint is the leaf hash of the genesis entry, i.e. block 0's Merkle root.
    assert anchor.genesis_fingerprint == "sha256:" + genesis.leaf_hash().hex()
    assert [(v.id, v.key_id) for v in anchor.validators] == [
        (name, v.public.key_id_hex) for name, v in sorted(federation.validators.items())]
    assert (anchor.quorum, anchor.head.height, anchor.head.size, anchor.head.root) == (
        3, head.height, head.size, head.root.hex())
    assert not anchor.genesis_pinned and anchor.trusted_size is None
    assert LedgerAnchor.from_json(json.loads(json.dumps(anchor.to_json()))) == anchor
    text = report.render()
    assert anchor.genesis_fingerprint in text and "trusted as received" in text
    assert all(v.key_id in text for v in anchor.validators)
    assert read_anchor(directory) == anchor
    with Ledger.open(directory) as ledger:
        assert anchor.head_note == ledger.checkpoint()


def test_expected_genesis_pins_the_federation(copy, tmp_path: Path) -> None:
    directory, _ = copy
    with Ledger.open(directory) as ledger:
        fingerprint = genesis_fingerprint(ledger.genesis())
    pinned = run_checks(directory, expected_genesis=fingerprint.upper().removeprefix("SHA256:"))
    assert pinned.ok and pinned.anchor.genesis_pinned
    assert not any("trusted as received" in n for n in pinned.notes)
    # Another federation with the same shape (fresh keys) is a different genesis.
    other = tmp_path / "other"
    build_ledger(other, rounds=1)
    expect_failure(other, 2, ChainError, entry=0, match="genesis fingerprint",
                   expected_genesis=fingerprint)
    with pytest.raises(ChainError, match="genesis fingerprint"):
        read_anchor(other, expected_genesis=fingerprint)
    for bad in ("", "sha256:xyz", "ab" * 31, "md5:" + "ab" * 32):
        with pytest.raises(MalformedRecord, match="genesis fingerprint"):
            parse_fingerprint(bad)


def test_read_anchor_checks_the_head_certificate_against_genesis(copy) -> None:
    """check-proof's anchor: a head block signed by keys other than genesis's validators,
    or a stored state naming other validators, does not move it."""
    directory, federation = copy
    key = federation.validators["validator-0"].public.key_id_hex
    sql(directory, ("UPDATE cosignatures SET signature = ? WHERE height = 3 AND key_id = ?",
                    (bytes(64), key)))
    with pytest.raises(SignatureError, match="block 3"):
        read_anchor(directory)


def listing(directory: Path) -> list[tuple[str, int, int, bytes]]:
    """Every path under ``directory`` with its mode, size and content."""
    return [(str(p.relative_to(directory)), p.stat().st_mode, p.stat().st_size,
             p.read_bytes() if p.is_file() else b"")
            for p in sorted(directory.rglob("*"))] + [("", directory.stat().st_mode, 0, b"")]


def make_read_only(directory: Path) -> None:
    for path in [directory, *directory.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def make_writable(directory: Path) -> None:
    for path in [directory, *directory.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


def test_verifying_read_only_evidence_writes_nothing(copy) -> None:
    """No -wal/-shm side files, no lock files, nothing changed: the listing is identical."""
    directory, _ = copy
    assert not (directory / (DATABASE + "-wal")).exists()
    make_read_only(directory)
    try:
        before = listing(directory)
        report = run_checks(directory)
        assert report.ok, report.render()
        assert read_anchor(directory) == report.anchor
        assert listing(directory) == before
    finally:
        make_writable(directory)


def test_committed_blocks_still_in_the_wal_are_verified_from_a_snapshot(copy, tmp_path: Path) -> None:
    """A copy taken while a writer was running holds blocks only in ``-wal``: the verifier
    sees them (ignoring them would verify a truncated ledger), still writing nothing."""
    directory, federation = copy
    evidence = tmp_path / "evidence"
    with Ledger.open(directory) as ledger:
        federation.run_round(ledger, 4)
        height = ledger.height
        shutil.copytree(directory, evidence)  # the writer is still open: blocks in the WAL
    assert (evidence / (DATABASE + "-wal")).stat().st_size > 0
    shm = evidence / (DATABASE + "-shm")
    shm.unlink()  # a copy without the shared-memory file, as on read-only media
    make_read_only(evidence)
    try:
        before = listing(evidence)
        report = run_checks(evidence)
        assert report.ok, report.render()
        assert report.anchor.head.height == height == 4
        assert listing(evidence) == before
    finally:
        make_writable(evidence)


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> tuple[Path, Federation]:
    """Rounds of 300 clients: enough entries (> 512) for two processes to share check 4."""
    directory = tmp_path_factory.mktemp("wide") / "ledger"
    return directory, build_ledger(directory, rounds=2, clients=300)


def forged_round(directory: Path, federation: Federation) -> None:
    """A certified round in which client-0's submission is signed by client-2's key."""
    entries = next_round(directory, federation)
    victim = entries[1]
    record = json.loads(victim.to_bytes())
    record["sig"] = base64.b64encode(federation.clients["client-2"].sign(victim.signed_bytes())).decode()
    append_unchecked(directory, federation,
                     [entries[0], Entry.from_bytes(canonical_bytes(record), where="forged"), *entries[2:]])


@pytest.mark.parametrize(("rounds_after", "half"), [(0, "second"), (3, "first")])
def test_signatures_shared_between_processes_fail_alike(wide, tmp_path: Path, rounds_after: int,
                                                        half: str) -> None:
    """With two processes, the second half of the signatures is verified in the other one;
    a forgery in either half fails check 4 with the same error, block and entry as in one
    process."""
    source, federation = wide
    directory = tmp_path / "ledger"
    shutil.copytree(source, directory)
    forged_round(directory, federation)
    with Ledger.open(directory) as ledger:
        for number in range(4, 4 + rounds_after):
            federation.run_round(ledger, number)
    one, two = run_checks(directory, workers=1), run_checks(directory, workers=2)
    assert one.failure is not None and (one.failure.number, one.failure.block) == (4, 3)
    assert (one.failure.entry < one.entries // 2) == (half == "first")
    assert vars(one.failure) == vars(two.failure)
    assert str(one.error) == str(two.error) and type(one.error) is type(two.error)
    assert one.to_json() == two.to_json()


def test_two_processes_give_the_same_report_on_a_sound_ledger(wide) -> None:
    directory, _ = wide
    one, two = run_checks(directory, workers=1), run_checks(directory, workers=2)
    assert one.ok and two.ok and one.entries > 512
    assert one.to_json() == two.to_json()


def test_a_second_process_that_cannot_start_leaves_the_checks_to_this_one(wide, monkeypatch) -> None:
    """A pool that refuses work (a broken or forbidden second process) slows the run down,
    nothing else: every check is made here and the report is the same."""
    from bfl_private.ledger import verify

    directory, _ = wide
    expected = run_checks(directory, workers=1).to_json()
    monkeypatch.setattr(verify, "ProcessPoolExecutor", RefusingPool)
    assert run_checks(directory, workers=2).to_json() == expected
