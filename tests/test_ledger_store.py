"""The SQLite store: reopening, certificates at commit, proofs against the reference."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from ledger_fixtures import Federation, build_ledger

from bfl_private.ledger.blocks import BlockHeader
from bfl_private.ledger.checkpoint import open_note
from bfl_private.ledger.errors import (
    ChainError,
    InclusionProofError,
    MalformedRecord,
    QuorumError,
    SignatureError,
    StorageError,
)
from bfl_private.ledger.identity import SigningIdentity
from bfl_private.ledger.merkle import (
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from bfl_private.ledger.store import DATABASE, Ledger


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Federation]:
    directory = tmp_path_factory.mktemp("store") / "ledger"
    return directory, build_ledger(directory, rounds=4)


def test_reopen_restores_head_state_and_log(built) -> None:
    directory, _ = built
    with Ledger.open(directory) as ledger:
        assert ledger.height == 4
        assert [b.height for b in ledger.blocks()] == [0, 1, 2, 3, 4]
        entries = ledger.entries()
        assert len(entries) == ledger.size == ledger.head.size
        assert ledger.state.root() == ledger.head.state_root
        assert ledger.state.last_round == 4
        assert ledger.genesis().type == "genesis"
        assert (directory / DATABASE).is_file() and ledger.blobs.root == directory / "blobs"


def test_create_refuses_an_existing_ledger_and_open_a_missing_one(built,
                                                                  tmp_path: Path) -> None:
    directory, _ = built
    with pytest.raises(StorageError, match="already exists"):
        Ledger.create(directory)
    with pytest.raises(StorageError, match="no ledger database"):
        Ledger.open(tmp_path / "nothing")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / DATABASE).write_bytes(b"not a database at all" * 100)
    with pytest.raises(StorageError):
        Ledger.open(tmp_path / "junk")


def test_proofs_match_the_reference_for_every_entry_and_block(built) -> None:
    directory, _ = built
    with Ledger.open(directory) as ledger:
        leaves = [leaf_hash(e.to_bytes()) for e in ledger.entries()]
        blocks = list(ledger.blocks())
        for block in blocks:
            size = block.header.size
            for index in range(size):
                proof = ledger.inclusion_proof(index, size)
                assert proof == inclusion_proof(leaves[:size], index)
                verify_inclusion(leaves[index], index, size, proof, block.header.root)
            for old in blocks[: block.height + 1]:
                proof = ledger.consistency_proof(old.header.size, size)
                assert proof == consistency_proof(leaves[:size], old.header.size)
                verify_consistency(old.header.size, size, old.header.root, block.header.root,
                                   proof)
        with pytest.raises(InclusionProofError, match="exceeds the log size"):
            ledger.inclusion_proof(0, ledger.size + 1)


def test_checkpoint_is_a_c2sp_note_with_a_validator_quorum(built) -> None:
    directory, federation = built
    with Ledger.open(directory) as ledger:
        note = ledger.checkpoint()
        checkpoint = open_note(note, verifiers=[v.public for v in
                                                federation.validators.values()], quorum=3)
        assert (checkpoint.size, checkpoint.root) == (ledger.size, ledger.head.root)
        assert checkpoint.origin == "bfl-private/test-fed"
        header = BlockHeader.from_bytes(checkpoint.body(), where="note")
        assert header == ledger.head
        assert note.count("\n\u2014 ") == 4


def test_header_parsing_is_strict() -> None:
    header = BlockHeader("bfl-private/x", 3, 10, bytes(32), bytes(32), bytes(range(32)), 5)
    assert BlockHeader.from_bytes(header.signing_bytes(), where="h") == header
    for bad in (header.signing_bytes().replace(b"height 3", b"height 03"),
                header.signing_bytes().replace(b"time 5\n", b"time 5\nextra\n"),
                header.signing_bytes().replace(b"height 3\n", b"")):
        with pytest.raises(MalformedRecord, match="block 9"):
            BlockHeader.from_bytes(bad, where="block 9")


def test_commit_checks_the_certificate_and_writes_nothing_on_failure(tmp_path: Path) -> None:
    federation = Federation()
    with federation.start(tmp_path / "l") as ledger:
        entries = federation.round_entries(ledger, 1)
        proposed = ledger.propose(entries, time=federation.time + 1)
        two = federation.sign(proposed, ["validator-0", "validator-1"])
        with pytest.raises(QuorumError, match="block 1: .*quorum is 3"):
            ledger.commit(proposed, two)
        forged = federation.sign(proposed)
        key = next(iter(forged))
        forged[key] = bytes(64)
        with pytest.raises(SignatureError, match="block 1"):
            ledger.commit(proposed, forged)
        outsider = SigningIdentity.generate("outsider")
        extra = {**federation.sign(proposed),
                 outsider.public.key_id_hex: outsider.sign(proposed.header.signing_bytes())}
        with pytest.raises(SignatureError, match="not a registered validator"):
            ledger.commit(proposed, extra)
        with pytest.raises(QuorumError):
            ledger.commit(proposed, {})
        assert ledger.size == 1 and ledger.height == 0
        block = ledger.commit(proposed, federation.sign(proposed, ["validator-1", "validator-2",
                                                                    "validator-3"]))
        assert block.height == 1 and len(block.signatures) == 3
        with pytest.raises(ChainError, match="proposed on another head"):
            ledger.commit(proposed, federation.sign(proposed))
        with pytest.raises(ChainError, match="before the previous block"):
            ledger.propose(federation.round_entries(ledger, 2), time=0)
    with Ledger.open(tmp_path / "l") as again:
        assert again.height == 1 and again.size == 1 + len(entries)


def test_open_refuses_a_store_whose_state_does_not_match(tmp_path: Path) -> None:
    build_ledger(tmp_path / "l", rounds=1)
    db = sqlite3.connect(tmp_path / "l" / DATABASE)
    db.execute("UPDATE blocks SET state = (SELECT state FROM blocks WHERE height = 0) "
               "WHERE height = 1")
    db.commit()
    db.close()
    with pytest.raises(StorageError, match="state root"):
        Ledger.open(tmp_path / "l")
