"""The ledger on disk: SQLite (WAL) for the log and blocks, a blob store beside it.

Layout of a ledger directory::

    DIR/ledger.sqlite3   entries, blocks, cosignatures, Merkle subtree hashes, states
    DIR/blobs/<cid>      content-addressed blobs (see blobstore.py)

Crash safety: each block (header, cosignatures, entries, the perfect-subtree hashes its
leaves complete, and the contract state after it) is written in ONE SQLite transaction in
WAL mode with ``synchronous=FULL``. A process killed at any moment leaves either the whole
block or none of it, and :meth:`Ledger.open` continues from the last committed block.

Proof cost: the ``nodes`` table keeps the hash of every perfect aligned subtree
[start, start + width) that the log has completed (about 2n rows for n entries), so an
inclusion or consistency proof costs O(log n) indexed reads (``merkle.*_from``).

Writing a block is two steps so validators can sign in between: :meth:`Ledger.propose`
replays the contracts and checks signatures on copies (nothing is written; a refused
entry raises ContractViolation or SignatureError), then :meth:`Ledger.commit` checks the
quorum certificate and writes the block.
"""
from __future__ import annotations

import copy
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .blobstore import BlobStore
from .blocks import (
    GENESIS_PREV,
    Block,
    BlockHeader,
    certificate_note,
    origin_for,
    verify_certificate,
)
from .contracts import LedgerState
from .entries import GENESIS, Entry, verify_signatures
from .errors import (
    ChainError,
    ConsistencyProofError,
    InclusionProofError,
    StorageError,
)
from .merkle import Frontier, consistency_proof_from, inclusion_proof_from

DATABASE = "ledger.sqlite3"
BLOBS = "blobs"
FORMAT = "bfl-private-ledger/1"

_SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE blocks(height INTEGER PRIMARY KEY, header BLOB NOT NULL,
                    first_entry INTEGER NOT NULL, state BLOB NOT NULL);
CREATE TABLE cosignatures(height INTEGER NOT NULL, key_id TEXT NOT NULL,
                          signature BLOB NOT NULL, PRIMARY KEY (height, key_id)) WITHOUT ROWID;
CREATE TABLE entries(idx INTEGER PRIMARY KEY, height INTEGER NOT NULL, data BLOB NOT NULL);
CREATE TABLE nodes(width INTEGER NOT NULL, start INTEGER NOT NULL, hash BLOB NOT NULL,
                   PRIMARY KEY (width, start)) WITHOUT ROWID;
"""
_TABLES = {"meta", "blocks", "cosignatures", "entries", "nodes"}


class SQLiteStore:
    """Row-level access to ``ledger.sqlite3``; the verifier reads through this alone.

    It enforces nothing about the rows' meaning, so that a damaged file can be inspected
    and the verifier can say exactly what is wrong with it.
    """

    def __init__(self, connection: sqlite3.Connection, path: Path,
                 snapshot: tempfile.TemporaryDirectory[str] | None = None) -> None:
        """Internal: use :meth:`create` or :meth:`open`."""
        self._db = connection
        self.path = path
        self._snapshot = snapshot

    @classmethod
    def create(cls, path: Path) -> SQLiteStore:
        """A new, empty store at ``path``; StorageError if a file is already there."""
        if path.exists():
            raise StorageError(f"{path} already exists; open it instead of creating it")
        db = cls._connect(path)
        try:
            db.executescript("BEGIN;" + _SCHEMA
                             + f"INSERT INTO meta VALUES ('format', '{FORMAT}');COMMIT;")
        except sqlite3.Error as exc:
            db.close()
            raise StorageError(f"{path}: cannot create the ledger tables: {exc}") from None
        return cls(db, path)

    @classmethod
    def open(cls, path: Path, *, read_only: bool = False) -> SQLiteStore:
        """Open an existing store and check its format marker and tables."""
        if not path.is_file():
            raise StorageError(f"{path}: no ledger database here")
        snapshot = None
        if read_only:
            db, snapshot = cls._connect_read_only(path)
        else:
            db = cls._connect(path)
        store = cls(db, path, snapshot)
        try:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master "
                                                    "WHERE type = 'table'")}
            fmt = db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone() \
                if "meta" in tables else None
        except sqlite3.DatabaseError as exc:
            store.close()
            raise StorageError(f"{path}: not a readable SQLite ledger: {exc}") from None
        if not _TABLES <= tables or fmt is None or fmt[0] != FORMAT:
            store.close()
            raise StorageError(f"{path}: not a {FORMAT} database (tables {sorted(tables)}, "
                               f"format {fmt and fmt[0]!r})")
        return store

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        """The writer's connection: WAL, fsync on every commit."""
        try:
            db = sqlite3.connect(path, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            raise StorageError(f"{path}: cannot open SQLite database: {exc}") from None
        return db

    @staticmethod
    def _connect_read_only(path: Path
                           ) -> tuple[sqlite3.Connection, tempfile.TemporaryDirectory[str] | None]:
        """An auditor's connection that writes nothing next to ``path`` (evidence may sit on
        read-only media).

        A plain ``mode=ro`` connection to a WAL database creates ``-wal`` and ``-shm`` files
        beside it and fails where it cannot. Without a WAL (every writer closed cleanly, so
        SQLite folded it into the main file) the file is opened ``immutable``: no side
        files, no locks. A non-empty ``-wal`` holds committed blocks that are not yet in
        the main file (a writer is running, or was killed): ``immutable`` would silently
        ignore them, so both files are copied into a private temporary directory and read
        there. The WAL is copied first: a checkpoint between the two copies then only
        means the main file already holds some frames the WAL copy repeats, never that the
        WAL refers to pages the main copy lacks.
        """
        wal = path.with_name(path.name + "-wal")
        try:
            if not wal.exists() or wal.stat().st_size == 0:
                uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"
                return sqlite3.connect(uri, uri=True, isolation_level=None), None
            snapshot = tempfile.TemporaryDirectory(prefix="bfl-ledger-snapshot-")
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"{path}: cannot open SQLite database read-only: {exc}") from None
        try:
            copy = Path(snapshot.name) / path.name
            shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
            shutil.copyfile(path, copy)
            return sqlite3.connect(f"{copy.as_uri()}?mode=ro", uri=True,
                                   isolation_level=None), snapshot
        except (sqlite3.Error, OSError) as exc:
            snapshot.cleanup()
            raise StorageError(f"{path}: cannot snapshot the database and its WAL for "
                               f"reading: {exc}") from None

    def close(self) -> None:
        self._db.close()
        if self._snapshot is not None:
            self._snapshot.cleanup()

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[tuple]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"{self.path}: read failed ({sql.split()[0]} ...): {exc}") from None

    def integrity_check(self) -> None:
        """SQLite's own page-level check (``PRAGMA integrity_check``); StorageError if damaged."""
        rows = self._query("PRAGMA integrity_check")
        if rows != [("ok",)]:
            raise StorageError(f"{self.path}: SQLite integrity check failed: "
                               f"{'; '.join(str(r[0]) for r in rows[:5])}")

    def block_rows(self) -> list[tuple[int, bytes, int, bytes]]:
        """(height, header, first_entry, state) of every block, by height."""
        return self._query("SELECT height, header, first_entry, state FROM blocks ORDER BY height")

    def last_block_row(self) -> tuple[int, bytes, int, bytes] | None:
        rows = self._query("SELECT height, header, first_entry, state FROM blocks "
                           "ORDER BY height DESC LIMIT 1")
        return rows[0] if rows else None

    def block_row(self, height: int) -> tuple[int, bytes, int, bytes] | None:
        rows = self._query("SELECT height, header, first_entry, state FROM blocks "
                           "WHERE height = ?", (height,))
        return rows[0] if rows else None

    def cosignatures(self, height: int) -> dict[str, bytes]:
        rows = self._query("SELECT key_id, signature FROM cosignatures WHERE height = ?",
                           (height,))
        return {key_id: bytes(sig) for key_id, sig in rows}

    def cosignature_heights(self) -> set[int]:
        return {row[0] for row in self._query("SELECT DISTINCT height FROM cosignatures")}

    def entry_rows(self, start: int = 0, end: int | None = None) -> list[tuple[int, int, bytes]]:
        """(index, height, data) of the entries with start <= index < end, by index."""
        if end is None:
            return self._query("SELECT idx, height, data FROM entries WHERE idx >= ? "
                               "ORDER BY idx", (start,))
        return self._query("SELECT idx, height, data FROM entries WHERE idx >= ? AND idx < ? "
                           "ORDER BY idx", (start, end))

    def entry_count(self) -> int:
        return self._query("SELECT COUNT(*) FROM entries")[0][0]

    def node_rows(self) -> list[tuple[int, int, bytes]]:
        """(width, start, hash) of every stored perfect subtree."""
        return self._query("SELECT width, start, hash FROM nodes ORDER BY width, start")

    def subtree(self, start: int, end: int) -> bytes:
        """Stored MTH of the perfect aligned subtree [start, end) (merkle.SubtreeHash)."""
        rows = self._query("SELECT hash FROM nodes WHERE width = ? AND start = ?",
                           (end - start, start))
        if not rows:
            raise StorageError(f"{self.path}: Merkle subtree [{start}, {end}) is not stored")
        return bytes(rows[0][0])

    def write_block(
        self,
        *,
        height: int,
        header: bytes,
        first_entry: int,
        state: bytes,
        cosignatures: Mapping[str, bytes],
        entries: Sequence[bytes],
        nodes: Sequence[tuple[int, int, bytes]],
    ) -> None:
        """Write one block and everything it adds in a single transaction (all or nothing)."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT INTO blocks VALUES (?, ?, ?, ?)",
                                 (height, header, first_entry, state))
                self._db.executemany("INSERT INTO cosignatures VALUES (?, ?, ?)",
                                     [(height, k, s) for k, s in sorted(cosignatures.items())])
                self._db.executemany("INSERT INTO entries VALUES (?, ?, ?)",
                                     [(first_entry + i, height, data)
                                      for i, data in enumerate(entries)])
                self._db.executemany("INSERT INTO nodes VALUES (?, ?, ?)",
                                     [(end - start, start, h) for start, end, h in nodes])
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: writing block {height} failed, "
                               f"nothing was written: {exc}") from None


@dataclass(frozen=True)
class ProposedBlock:
    """A block checked against the contracts but not yet written; validators sign ``header``."""

    header: BlockHeader
    entries: tuple[Entry, ...]
    state: LedgerState
    """Contract state after the block (its root is ``header.state_root``)."""
    first_entry: int
    nodes: tuple[tuple[int, int, bytes], ...]
    frontier: Frontier


class Ledger:
    """An append-only ledger directory: propose, certify and commit blocks; read and prove.

    One writer at a time (SQLite's write lock serialises two processes; a proposal made
    before another commit is refused as stale).
    """

    def __init__(self, directory: Path, store: SQLiteStore) -> None:
        """Internal: use :meth:`create` or :meth:`open`."""
        self.directory = directory
        self._store = store
        self.blobs = BlobStore(directory / BLOBS)
        row = store.last_block_row()
        if row is None:
            self._head: BlockHeader | None = None
            self._state = LedgerState.empty()
            self._frontier = Frontier()
        else:
            height, header, _, state = row
            self._head = BlockHeader.from_bytes(header, where=f"block {height} header")
            self._state = LedgerState.from_bytes(state, where=f"block {height} state")
            if self._state.root() != self._head.state_root:
                raise StorageError(f"{store.path}: stored state of block {height} does not "
                                   f"match its header's state root")
            count = store.entry_count()
            if count != self._head.size:
                raise StorageError(f"{store.path}: {count} entries stored, the last block "
                                   f"(height {height}) says {self._head.size}")
            self._frontier = Frontier.from_subtree(store.subtree, self._head.size)
            if self._frontier.root() != self._head.root:
                raise StorageError(f"{store.path}: stored Merkle nodes do not give block "
                                   f"{height}'s root")

    @classmethod
    def create(cls, directory: Path | str) -> Ledger:
        """A new, empty ledger in ``directory``; its first block must be the genesis entry."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        return cls(directory, SQLiteStore.create(directory / DATABASE))

    @classmethod
    def open(cls, directory: Path | str) -> Ledger:
        """Open an existing ledger and resume after its last committed block."""
        directory = Path(directory)
        return cls(directory, SQLiteStore.open(directory / DATABASE))

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing ------------------------------------------------------------------------

    def propose(self, entries: Sequence[Entry], *, time: int) -> ProposedBlock:
        """Apply the contracts and signature checks to ``entries`` as the next block.

        Writes nothing. Raises ContractViolation / SignatureError naming the entry (by log
        index) and rule, ChainError if ``time`` is before the previous block's.
        """
        entries = tuple(entries)
        first = self._frontier.size
        if self._head is not None and time < self._head.time:
            raise ChainError(f"block {self._head.height + 1}: time {time} is before the "
                             f"previous block's {self._head.time}")
        state = self._state.apply_block(entries, first_index=first)
        verify_signatures(entries, state.keys(), first_index=first)
        frontier = copy.deepcopy(self._frontier)
        nodes: list[tuple[int, int, bytes]] = []
        for entry in entries:
            nodes.extend(frontier.append(entry.leaf_hash()))
        header = BlockHeader(
            origin=origin_for(state.federation_id),
            height=0 if self._head is None else self._head.height + 1,
            size=frontier.size,
            root=frontier.root(),
            prev_hash=GENESIS_PREV if self._head is None else self._head.hash(),
            state_root=state.root(),
            time=time,
        )
        return ProposedBlock(header, entries, state, first, tuple(nodes), frontier)

    def commit(self, proposed: ProposedBlock, signatures: Mapping[str, bytes]) -> Block:
        """Check the quorum certificate and write the block in one transaction.

        ``signatures`` maps validator key id (hex) to its signature over
        ``proposed.header.signing_bytes()``. Raises ChainError for a stale proposal,
        SignatureError / QuorumError for a bad certificate; nothing is written then.
        """
        expected_prev = GENESIS_PREV if self._head is None else self._head.hash()
        if proposed.header.prev_hash != expected_prev or proposed.first_entry != self.size:
            raise ChainError(f"block {proposed.header.height} was proposed on another head; "
                             f"propose it again")
        verify_certificate(proposed.header, signatures,
                           validators=proposed.state.validator_keys(),
                           quorum=proposed.state.quorum)
        self._store.write_block(
            height=proposed.header.height,
            header=proposed.header.signing_bytes(),
            first_entry=proposed.first_entry,
            state=proposed.state.to_bytes(),
            cosignatures={k: bytes(v) for k, v in signatures.items()},
            entries=[e.to_bytes() for e in proposed.entries],
            nodes=proposed.nodes,
        )
        self._head, self._state = proposed.header, proposed.state
        self._frontier = copy.deepcopy(proposed.frontier)
        return Block(proposed.header, dict(signatures), proposed.first_entry)

    # --- reading ------------------------------------------------------------------------

    @property
    def state(self) -> LedgerState:
        """Contract state after the last committed block (empty before genesis)."""
        return self._state

    @property
    def size(self) -> int:
        """Number of entries in the log."""
        return self._frontier.size

    @property
    def height(self) -> int | None:
        """Height of the last block; None for a ledger without its genesis block."""
        return None if self._head is None else self._head.height

    @property
    def head(self) -> BlockHeader | None:
        return self._head

    def _block(self, row: tuple[int, bytes, int, bytes]) -> Block:
        height, header, first, _ = row
        return Block(BlockHeader.from_bytes(header, where=f"block {height} header"),
                     self._store.cosignatures(height), first)

    def block(self, height: int) -> Block:
        row = self._store.block_row(height)
        if row is None:
            raise ChainError(f"block {height} does not exist (height is {self.height})")
        return self._block(row)

    def blocks(self) -> Iterator[Block]:
        """Every block, from genesis."""
        for row in self._store.block_rows():
            yield self._block(row)

    def entries(self, start: int = 0, end: int | None = None) -> list[Entry]:
        """Parsed entries with log index in [start, end)."""
        return [Entry.from_bytes(data, where=f"entry {idx}")
                for idx, _, data in self._store.entry_rows(start, end)]

    def genesis(self) -> Entry:
        """The genesis entry (log index 0)."""
        entries = self.entries(0, 1)
        if not entries or entries[0].type != GENESIS:
            raise ChainError(f"{self.directory}: the ledger has no genesis entry")
        return entries[0]

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.3 proof that entry ``index`` is in the tree of ``size`` (default:
        the whole log); O(log n) reads."""
        size = self.size if size is None else size
        if size > self.size:
            raise InclusionProofError(f"tree size {size} exceeds the log size {self.size}")
        return inclusion_proof_from(self._store.subtree, index, size)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.4 proof that the tree of ``new_size`` extends that of ``old_size``."""
        new_size = self.size if new_size is None else new_size
        if new_size > self.size:
            raise ConsistencyProofError(f"tree size {new_size} exceeds the log size {self.size}")
        return consistency_proof_from(self._store.subtree, old_size, new_size)

    def checkpoint(self, height: int | None = None) -> str:
        """The block's header with its cosignatures as a C2SP signed checkpoint note."""
        if height is None:
            if self._head is None:
                raise ChainError(f"{self.directory}: no block to checkpoint yet")
            height = self._head.height
        block = self.block(height)
        return certificate_note(block.header, block.signatures, self._state.validator_keys())
