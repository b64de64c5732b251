"""The ledger's integrity verifier: numbered checks over a ledger directory, from genesis.

Like sigstore-python's verifier, every check has a number and a name that appear both
here and in the output, each failure is a narrow :class:`VerificationError` subclass, and
verification stops at the first failing check, naming the block and entry::

    1  storage integrity         SQLite page check, tables, contiguous heights and indices,
                                 every row parses (canonical entries, headers, states)
    2  hash chain of blocks      heights, previous-header hashes, origin, time, entry ranges;
                                 a trusted checkpoint beyond the log means truncation
    3  Merkle roots and sizes    RFC 9162 roots recomputed from the entries at every block,
                                 stored subtree hashes, consistency with a trusted checkpoint
    4  entry signatures          every entry under the key its author id names at genesis
    5  quorum certificates       every block (and a trusted checkpoint) signed by a quorum
                                 of distinct validators
    6  blob CIDs                 every referenced blob present, every blob matches its CID
    7  contract replay           the contracts re-run over all entries; each block's state
                                 root and stored state must match
    8+ semantic hooks            checks the application adds (aggregate recomputation,
                                 epsilon recomputation, model chain), one number each

It reads only the directory (never a private key), opens SQLite read-only without
writing anything beside it (``SQLiteStore.open(read_only=True)``), and imports neither
torch nor ``bfl_private.privacy`` / ``bfl_private.protocols``: what needs their maths is
added by the application as :class:`VerifierHook` objects. Its command line is the
application's ``bfl-private verify``, which runs these checks and the hooks together.

What a run is anchored to is in :class:`LedgerAnchor`: the federation id, the genesis
fingerprint (:func:`genesis_fingerprint`), the validators' key ids and quorum, and the
head checkpoint. An auditor pins the genesis (``expected_genesis``) and a checkpoint seen
earlier (``trusted_checkpoint``); without them the genesis is trusted as received and a
cleanly truncated copy is indistinguishable from a shorter ledger, which the notes say.
"""
from __future__ import annotations

import multiprocessing
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ..primitives.ed25519 import first_invalid
from .blobstore import BlobStore
from .blocks import (
    GENESIS_PREV,
    Block,
    BlockHeader,
    certificate_note,
    note_checkpoint,
    origin_for,
    verify_certificate,
)
from .checkpoint import Checkpoint, verify_note
from .contracts import LedgerState, genesis_keys, min_quorum
from .entries import BLOB_FIELDS, GENESIS, Entry, verify_signatures
from .errors import (
    ChainError,
    ContractViolation,
    MalformedRecord,
    RootMismatch,
    StateRootMismatch,
    StorageError,
    VerificationError,
)
from .genesis import GenesisRecord
from .identity import VerifyingKey
from .merkle import Frontier, consistency_proof, verify_consistency
from .store import BLOBS, DATABASE, SQLiteStore

FINGERPRINT_PREFIX = "sha256:"
_FINGERPRINT = re.compile(r"(?:sha256:)?([0-9a-f]{64})")


def genesis_fingerprint(genesis: Entry) -> str:
    """A federation's identity as an auditor pins it: ``sha256:`` and the hex RFC 9162 leaf
    hash of the genesis entry, SHA-256(0x00 || its canonical RFC 8785 bytes, signature
    included). It is also block 0's Merkle root (a tree of one entry), so the validators'
    certificate of block 0 signs exactly this value."""
    return FINGERPRINT_PREFIX + genesis.leaf_hash().hex()


def parse_fingerprint(text: str) -> str:
    """A genesis fingerprint as given by a person (with or without ``sha256:``, any case)
    in the form :func:`genesis_fingerprint` writes; MalformedRecord if it is not one."""
    match = _FINGERPRINT.fullmatch(text.strip().lower()) if isinstance(text, str) else None
    if match is None:
        raise MalformedRecord(f"a genesis fingerprint is sha256: and 64 hex digits, got {text!r}")
    return FINGERPRINT_PREFIX + match.group(1)


def genesis_validators(genesis: GenesisRecord) -> tuple[dict[str, VerifyingKey], int]:
    """The validators' keys by key id (hex) and the quorum their certificates need, from
    the genesis entry alone (never from a stored state, which a forger could edit)."""
    keys = [v.key() for v in genesis.validators]
    return {k.key_id_hex: k for k in keys}, max(genesis.quorum, min_quorum(len(keys)))


@dataclass(frozen=True)
class ValidatorKey:
    """A validator named at genesis: its id and the key id its cosignatures carry."""

    id: str
    key_id: str

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "key_id": self.key_id}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ValidatorKey:
        return cls(str(obj["id"]), str(obj["key_id"]))


@dataclass(frozen=True)
class HeadCheckpoint:
    """The head block's signed checkpoint: height, tree size, Merkle root, header hash."""

    height: int
    size: int
    root: str
    """Hex RFC 9162 root of the whole log."""
    hash: str
    """Hex SHA-256 of the header (what the next block links to)."""
    time: int

    def to_json(self) -> dict[str, Any]:
        return {"height": self.height, "size": self.size, "root": self.root,
                "hash": self.hash, "time": self.time}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> HeadCheckpoint:
        return cls(int(obj["height"]), int(obj["size"]), str(obj["root"]), str(obj["hash"]),
                   int(obj["time"]))

    @classmethod
    def of(cls, header: BlockHeader) -> HeadCheckpoint:
        return cls(header.height, header.size, header.root.hex(), header.hash().hex(),
                   header.time)


@dataclass(frozen=True)
class LedgerAnchor:
    """What a verification was anchored to; print it, so an auditor can compare it with
    what they hold (a fingerprint from the federation's charter, a checkpoint from a
    witness) and pin it next time."""

    federation_id: str
    genesis_fingerprint: str
    genesis_pinned: bool
    """True when the caller gave the fingerprint it expected (and it matched)."""
    validators: tuple[ValidatorKey, ...]
    quorum: int
    head: HeadCheckpoint
    trusted_size: int | None = None
    """Tree size of the trusted checkpoint the ledger was shown to extend, if one was given."""
    trusted_root: str | None = None
    head_note: str = ""
    """The head block's signed checkpoint note (C2SP): keep it, and give it back next time
    with ``--checkpoint`` to prove the ledger has not been cut off or forked since."""

    @classmethod
    def of(cls, genesis: Entry, head: Block, *, pinned: bool,
           trusted: Checkpoint | None) -> LedgerAnchor:
        """The anchor of a ledger with this genesis entry and (certified) head block."""
        record = GenesisRecord.of(genesis)
        by_key, quorum = genesis_validators(record)
        names = {v.key().key_id_hex: v.id for v in record.validators}
        return cls(
            federation_id=record.federation_id,
            genesis_fingerprint=genesis_fingerprint(genesis),
            genesis_pinned=pinned,
            validators=tuple(ValidatorKey(names[k], k) for k in sorted(by_key, key=names.__getitem__)),
            quorum=quorum,
            head=HeadCheckpoint.of(head.header),
            trusted_size=None if trusted is None else trusted.size,
            trusted_root=None if trusted is None else trusted.root.hex(),
            head_note=certificate_note(head.header, head.signatures, by_key),
        )

    def to_json(self) -> dict[str, Any]:
        return {"federation_id": self.federation_id,
                "genesis_fingerprint": self.genesis_fingerprint,
                "genesis_pinned": self.genesis_pinned,
                "validators": [v.to_json() for v in self.validators],
                "quorum": self.quorum, "head": self.head.to_json(),
                "head_note": self.head_note,
                "trusted_checkpoint": None if self.trusted_size is None else
                {"size": self.trusted_size, "root": self.trusted_root}}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> LedgerAnchor:
        trusted = obj["trusted_checkpoint"]
        return cls(str(obj["federation_id"]), str(obj["genesis_fingerprint"]),
                   bool(obj["genesis_pinned"]),
                   tuple(ValidatorKey.from_json(v) for v in obj["validators"]),
                   int(obj["quorum"]), HeadCheckpoint.from_json(obj["head"]),
                   None if trusted is None else int(trusted["size"]),
                   None if trusted is None else str(trusted["root"]), str(obj["head_note"]))

    def lines(self) -> list[str]:
        """Human-readable form, one fact per line."""
        pinned = ("pinned: matches --expect-genesis" if self.genesis_pinned
                  else "trusted as received")
        lines = [f"federation        {self.federation_id}",
                 f"genesis           {self.genesis_fingerprint} ({pinned})",
                 f"validators        quorum {self.quorum} of {len(self.validators)}: "
                 + ", ".join(f"{v.id} [{v.key_id}]" for v in self.validators),
                 (f"head checkpoint   block {self.head.height}, tree size {self.head.size}, "
                  f"root {self.head.root}")]
        if self.trusted_size is not None:
            lines.append(f"extends pinned    tree size {self.trusted_size}, root "
                         f"{self.trusted_root}")
        return lines


def _rounds_text(rounds: Sequence[int]) -> str:
    """``1-3, 7`` for rounds 1, 2, 3, 7."""
    spans: list[list[int]] = []
    for number in sorted(set(rounds)):
        if spans and number == spans[-1][1] + 1:
            spans[-1][1] = number
        else:
            spans.append([number, number])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


@dataclass(frozen=True)
class BlockContext:
    """What a semantic hook sees for one block."""

    block: Block
    entries: tuple[Entry, ...]
    state_before: LedgerState
    state_after: LedgerState
    blobs: BlobStore
    note: Callable[..., None]
    """``note(text, round=N)``: add a line to the report's notes, e.g. what the ledger
    cannot prove. One line per distinct text; the rounds it was noted for are listed."""


class VerifierHook(ABC):
    """A semantic check run on every block after the integrity checks pass.

    Subclasses set ``name`` (shown as the check's name) and implement :meth:`check_block`,
    raising :class:`~bfl_private.ledger.errors.SemanticCheckError` (or another
    VerificationError subclass) for a false claim. They may read blobs and states but
    must not write anything.
    """

    name: str = "semantic hook"

    def begin(self, entries: Sequence[Entry], executor: Executor | None) -> None:
        """Called once the log has been read and parsed (check 1 passed), before the other
        checks run; by default nothing. With an ``executor`` (other processes), a hook may
        start work there that its checks will need later, e.g. figures to recompute. It
        checks nothing and must not raise: the entries are not verified yet, so whatever it
        starts is only ever a cache that :meth:`check_block` fills in the same way."""

    def end(self) -> None:
        """Called when the run finishes, passed or not (collect or drop what :meth:`begin`
        started); by default nothing."""

    @abstractmethod
    def check_block(self, context: BlockContext) -> None:
        """Check one block; return None or raise a VerificationError subclass."""


@dataclass
class CheckResult:
    """Outcome of one numbered check."""

    number: int
    name: str
    status: str = "not run"
    """``passed``, ``failed`` or ``not run`` (an earlier check failed)."""
    detail: str = ""
    error_type: str | None = None
    block: int | None = None
    entry: int | None = None


@dataclass
class VerificationReport:
    """Everything the verifier found; ``ok`` only when every check passed."""

    directory: str
    checks: list[CheckResult]
    notes: list[str] = field(default_factory=list)
    blocks: int = 0
    entries: int = 0
    head: dict[str, Any] | None = None
    error: VerificationError | None = None
    anchor: LedgerAnchor | None = None
    """What the run was anchored to; None when the checks through 5 did not pass."""
    state: LedgerState | None = field(default=None, repr=False, compare=False)
    """The replayed contract state after the head block, once every check passed."""
    log: tuple[Entry, ...] = field(default=(), repr=False, compare=False)
    """The verified entries in log order, once every check passed (for summaries built
    on what was verified, never on a second read of the directory)."""

    @property
    def ok(self) -> bool:
        return self.error is None and all(c.status == "passed" for c in self.checks)

    @property
    def failure(self) -> CheckResult | None:
        return next((c for c in self.checks if c.status == "failed"), None)

    def raise_for_failure(self) -> None:
        """Re-raise the first failure (its narrow VerificationError subclass)."""
        if self.error is not None:
            raise self.error

    def to_json(self) -> dict[str, Any]:
        """Machine-readable form (``--json``)."""
        failure = self.failure
        return {
            "directory": self.directory,
            "ok": self.ok,
            "blocks": self.blocks,
            "entries": self.entries,
            "head": self.head,
            "anchor": None if self.anchor is None else self.anchor.to_json(),
            "checks": [vars(c).copy() for c in self.checks],
            "failure": None if failure is None else vars(failure).copy(),
            "notes": list(self.notes),
        }

    def render(self) -> str:
        """Human-readable form, one line per numbered check."""
        lines = [f"Verifying ledger {self.directory}"]
        if self.anchor is not None:
            lines.extend(f"  {line}" for line in self.anchor.lines())
        for c in self.checks:
            label = f"  [{c.number}] {c.name} ".ljust(42, ".")
            if c.status == "passed":
                lines.append(f"{label} ok{' (' + c.detail + ')' if c.detail else ''}")
            elif c.status == "failed":
                where = ", ".join(f"{k} {v}" for k, v in (("block", c.block), ("entry", c.entry))
                                  if v is not None)
                lines.append(f"{label} FAILED{' at ' + where if where else ''}: "
                             f"{c.error_type}: {c.detail}")
            else:
                lines.append(f"{label} not run")
        if self.notes:
            lines.append("Notes:")
            lines.extend(f"  - {n}" for n in self.notes)
        failure = self.failure
        lines.append("Result: OK" if self.ok else
                     f"Result: FAILED (check {failure.number if failure else '?'})")
        return "\n".join(lines)


class _Location:
    """Where the running check is, so a failure can name its block and entry."""

    def __init__(self) -> None:
        self.block: int | None = None
        self.entry: int | None = None


class _Audit:
    """State shared by the numbered checks of one verification run."""

    def __init__(self, directory: Path, trusted_checkpoint: str | None,
                 expected_genesis: str | None) -> None:
        self.directory = directory
        self.trusted_note = trusted_checkpoint
        self.expected_genesis = expected_genesis
        self.store: SQLiteStore | None = None
        self.blobs: BlobStore | None = None
        self.blocks: list[Block] = []
        self.stored_states: list[bytes] = []
        self.entries: list[Entry] = []
        self._genesis: GenesisRecord | None = None
        self.states: list[LedgerState] = []
        self.keys: dict[str, VerifyingKey] = {}
        self.notes: dict[str, list[int]] = {}
        """Note text -> the rounds it was noted for (collapsed: one line per text)."""
        self.loc = _Location()
        self.executor: Executor | None = None
        self.signature_share: tuple[int, Future[int | None]] | None = None
        """(first log index, pending result) of the signatures handed to another process."""

    def note(self, text: str, *, round: int | None = None) -> None:
        rounds = self.notes.setdefault(text, [])
        if round is not None:
            rounds.append(round)

    def rendered_notes(self) -> list[str]:
        return [f"{text} (rounds {_rounds_text(rounds)})" if rounds else text
                for text, rounds in self.notes.items()]

    def trusted(self) -> Checkpoint | None:
        return None if self.trusted_note is None else note_checkpoint(self.trusted_note)

    def genesis(self) -> GenesisRecord:
        """Entry 0 as the genesis record, parsed once (check 2 is the first to ask, and
        fails if it is not one; the signatures handed off after check 1 may ask earlier)."""
        if self._genesis is None:
            self._genesis = GenesisRecord.of(self.entries[0], where="entry 0 (genesis)")
        return self._genesis

    # 1 -------------------------------------------------------------------------------------
    def storage_integrity(self) -> str:
        self.store = SQLiteStore.open(self.directory / DATABASE, read_only=True)
        self.store.integrity_check()
        self.blobs = BlobStore(self.directory / BLOBS, create=False)
        rows = self.store.block_rows()
        if not rows:
            raise ChainError("the ledger has no blocks, not even genesis")
        for expected, (height, header, first, state) in enumerate(rows):
            self.loc.block = height
            if height != expected:
                raise StorageError(f"block heights are not contiguous: {height} after "
                                   f"{expected - 1}")
            parsed = BlockHeader.from_bytes(header, where=f"block {height} header")
            self.blocks.append(Block(parsed, self.store.cosignatures(height), first))
            self.stored_states.append(bytes(state))
        orphans = self.store.cosignature_heights() - set(range(len(rows)))
        if orphans:
            raise StorageError(f"cosignatures stored for missing blocks {sorted(orphans)}")
        self.loc.block = None
        heights = {i: b.height for b in self.blocks for i in
                   range(b.first_entry, max(b.first_entry, b.header.size))}
        for expected, (index, height, data) in enumerate(self.store.entry_rows()):
            self.loc.entry = index
            self.loc.block = height
            if index != expected:
                raise StorageError(f"entry indices are not contiguous: {index} after "
                                   f"{expected - 1} (a row was deleted)")
            if heights.get(index) != height:
                raise StorageError(f"entry {index} is stored in block {height}, the block "
                                   f"headers place it in block {heights.get(index)}")
            self.entries.append(Entry.from_bytes(data, where=f"entry {index}"))
        self.loc.entry = self.loc.block = None
        return f"{len(self.blocks)} blocks, {len(self.entries)} entries"

    # 2 -------------------------------------------------------------------------------------
    def hash_chain(self) -> str:
        genesis = self.entries[0] if self.entries else None
        if genesis is None or genesis.type != GENESIS:
            raise ChainError("entry 0 is not a genesis entry")
        if self.expected_genesis is not None:
            actual = genesis_fingerprint(genesis)
            if actual != self.expected_genesis:
                self.loc.entry = 0
                raise ChainError(f"the genesis fingerprint is {actual}, the expected one "
                                 f"{self.expected_genesis}: another federation's ledger, or "
                                 f"its genesis was replaced")
        origin = origin_for(self.genesis().federation_id)
        prev, size, time = GENESIS_PREV, 0, 0
        for block in self.blocks:
            self.loc.block = block.height
            h = block.header
            if h.origin != origin:
                raise ChainError(f"block {h.height} has origin {h.origin!r}, the genesis "
                                 f"names {origin!r}")
            if h.prev_hash != prev:
                raise ChainError(f"block {h.height} links to previous header "
                                 f"{h.prev_hash.hex()}, but block {h.height - 1} hashes "
                                 f"to {prev.hex()}")
            if block.first_entry != size or h.size <= size:
                raise ChainError(f"block {h.height} covers entries [{block.first_entry}, "
                                 f"{h.size}), the previous block ended at {size}")
            if h.time < time:
                raise ChainError(f"block {h.height} time {h.time} is before {time}")
            prev, size, time = h.hash(), h.size, h.time
        self.loc.block = None
        if size != len(self.entries):
            raise ChainError(f"the last block ends at entry {size}, but {len(self.entries)} "
                             f"entries are stored (log truncated or extended)")
        trusted = self.trusted()
        if trusted is not None and trusted.origin != origin:
            raise ChainError(f"the trusted checkpoint is for log {trusted.origin!r}, this "
                             f"ledger is {origin!r}")
        if trusted is not None and trusted.size > size:
            raise ChainError(f"the trusted checkpoint has {trusted.size} entries, this ledger "
                             f"only {size}: it was truncated")
        return f"{len(self.blocks)} blocks linked"

    # 3 -------------------------------------------------------------------------------------
    def merkle_roots(self) -> str:
        assert self.store is not None
        frontier = Frontier()
        leaves: list[bytes] = []
        nodes: dict[tuple[int, int], bytes] = {}
        stored = {(w, s): bytes(h) for w, s, h in self.store.node_rows()}
        for block in self.blocks:
            self.loc.block = block.height
            for index in block.entry_range:
                self.loc.entry = index
                leaf = self.entries[index].leaf_hash()
                if stored.get((1, index), leaf) != leaf:
                    raise RootMismatch(f"entry {index} hashes to leaf {leaf.hex()}, the log "
                                       f"recorded {stored[(1, index)].hex()} when it was "
                                       f"appended (altered or moved)")
                leaves.append(leaf)
                for start, end, h in frontier.append(leaf):
                    nodes[(end - start, start)] = h
            self.loc.entry = None
            if frontier.root() != block.header.root:
                raise RootMismatch(f"block {block.height}: the {frontier.size} entries hash "
                                   f"to root {frontier.root().hex()}, the header says "
                                   f"{block.header.root.hex()}")
        self.loc.block = None
        for key in sorted(set(stored) | set(nodes)):
            if stored.get(key) != nodes.get(key):
                width, start = key
                raise RootMismatch(f"stored Merkle subtree [{start}, {start + width}) "
                                   f"{'is missing' if key not in stored else 'differs'}"
                                   f"{' (extra row)' if key not in nodes else ''}")
        trusted = self.trusted()
        if trusted is not None:
            head = self.blocks[-1].header
            verify_consistency(trusted.size, head.size, trusted.root, head.root,
                               consistency_proof(leaves, trusted.size))
        return f"{len(self.blocks)} roots, {len(nodes)} subtree hashes"

    # 4 -------------------------------------------------------------------------------------
    def share_signatures(self) -> None:
        """Hand the second half of the entry signatures to another process (after check 1),
        so they are verified while this one runs checks 2 and 3 and the first half."""
        if self.executor is None or len(self.entries) < 2 * _MIN_SHARE:
            return
        try:
            keys = genesis_keys(self.genesis(), where="entry 0 (genesis)")
        except VerificationError:
            return  # check 4 names it
        start = len(self.entries) // 2
        items = _signature_items(self.entries, keys, start, len(self.entries))
        if items is not None:
            try:
                self.signature_share = (start, self.executor.submit(first_invalid, items))
            except Exception:  # noqa: BLE001, S110 - no second process: check 4 does it all here
                pass

    def entry_signatures(self) -> str:
        try:
            self.keys = genesis_keys(self.genesis(), where="entry 0 (genesis)")
        except MalformedRecord as exc:
            raise MalformedRecord(f"entry 0 (genesis): bad verifier key: {exc}") from None
        if self.signature_share is not None:
            start, shared = self.signature_share
            mine = _signature_items(self.entries, self.keys, 0, start)
            if mine is not None and first_invalid(mine) is None and _result(shared) is None:
                return f"{len(self.entries)} signatures"
        # One process, or a refusal somewhere: the reference loop, which names the first
        # entry (in log order) whose signature does not verify.
        for block in self.blocks:
            self.loc.block = block.height
            for index in block.entry_range:
                self.loc.entry = index
                verify_signatures([self.entries[index]], self.keys, first_index=index)
        self.loc.entry = self.loc.block = None
        return f"{len(self.entries)} signatures"

    # 5 -------------------------------------------------------------------------------------
    def quorum_certificates(self) -> str:
        by_id, quorum = genesis_validators(self.genesis())
        for block in self.blocks:
            self.loc.block = block.height
            verify_certificate(block.header, block.signatures, validators=by_id, quorum=quorum)
        self.loc.block = None
        if self.trusted_note is not None:
            verify_note(self.trusted_note, verifiers=list(by_id.values()), quorum=quorum)
        return f"{len(self.blocks)} certificates, quorum {quorum} of {len(by_id)}"

    # 6 -------------------------------------------------------------------------------------
    def blob_cids(self) -> str:
        assert self.blobs is not None
        referenced: set[str] = set()
        for block in self.blocks:
            self.loc.block = block.height
            for index in block.entry_range:
                self.loc.entry = index
                entry = self.entries[index]
                for name in BLOB_FIELDS[entry.type]:
                    cid = entry.payload[name]
                    if cid is not None and cid not in referenced:
                        self.blobs.get(cid)
                        referenced.add(cid)
        self.loc.entry = self.loc.block = None
        others = 0
        for cid in self.blobs:
            if cid not in referenced:
                self.blobs.get(cid)
                others += 1
        return f"{len(referenced)} referenced blobs" + (f", {others} unreferenced" if others
                                                         else "")

    # 7 -------------------------------------------------------------------------------------
    def contract_replay(self) -> str:
        state = LedgerState.empty()
        self.states = [state]
        for block, stored in zip(self.blocks, self.stored_states):
            self.loc.block = block.height
            entries = [self.entries[i] for i in block.entry_range]
            try:
                state = state.apply_block(entries, first_index=block.first_entry)
            except ContractViolation as exc:
                self.loc.entry = exc.entry
                raise
            if state.root() != block.header.state_root:
                raise StateRootMismatch(f"block {block.height}: replayed state root "
                                        f"{state.root().hex()}, header says "
                                        f"{block.header.state_root.hex()}")
            if stored != state.to_bytes():
                raise StateRootMismatch(f"block {block.height}: the stored state differs from "
                                        f"the replayed one")
            self.states.append(state)
        self.loc.block = None
        return f"{len(self.blocks)} state roots"

    def run_hook(self, hook: VerifierHook) -> str:
        assert self.blobs is not None
        for block, before, after in zip(self.blocks, self.states, self.states[1:]):
            self.loc.block = block.height
            hook.check_block(BlockContext(
                block=block, entries=tuple(self.entries[i] for i in block.entry_range),
                state_before=before, state_after=after, blobs=self.blobs, note=self.note))
        self.loc.block = None
        return f"{len(self.blocks)} blocks"


_MIN_SHARE = 256
"""Fewer signatures than this a process are not worth handing to another one."""


def _signature_items(entries: Sequence[Entry], keys: dict[str, VerifyingKey], start: int, end: int
                     ) -> list[tuple[bytes, bytes, bytes]] | None:
    """(public key, signature, signed bytes) of ``entries[start:end]`` under the keys their
    authors name; None if an author is unknown (the reference loop then names it)."""
    items = []
    for entry in entries[start:end]:
        key = keys.get(entry.author)
        if key is None or key.key_id_hex != entry.author:
            return None
        items.append((key.public_bytes(), entry.signature, entry.signed_bytes()))
    return items


def _result(future: Future[int | None]) -> int | None | Exception:
    """A shared share's outcome; the exception if its process failed (a refusal, for the
    caller: the reference loop then checks everything itself)."""
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - e.g. BrokenProcessPool
        return exc


def default_workers() -> int:
    """Processes a run uses by default: two where there are two cores, else one."""
    return min(2, os.cpu_count() or 1)


CHECKS: tuple[tuple[int, str, Callable[[_Audit], str]], ...] = (
    (1, "storage integrity", _Audit.storage_integrity),
    (2, "hash chain of blocks", _Audit.hash_chain),
    (3, "Merkle roots and sizes", _Audit.merkle_roots),
    (4, "entry signatures", _Audit.entry_signatures),
    (5, "quorum certificates", _Audit.quorum_certificates),
    (6, "blob CIDs", _Audit.blob_cids),
    (7, "contract replay and state roots", _Audit.contract_replay),
)


def run_checks(
    directory: Path | str,
    *,
    hooks: Sequence[VerifierHook] = (),
    trusted_checkpoint: str | None = None,
    expected_genesis: str | None = None,
    workers: int = 1,
) -> VerificationReport:
    """Run every check in order and return the report (failures are in it, not raised).

    ``workers`` > 1 starts that many processes less one beside this one: half the entry
    signatures are verified there while checks 2 and 3 run, and hooks may start work there
    (:meth:`VerifierHook.begin`). Every check is still made and the report is the same: a
    refusal found anywhere is re-found by the one-process path, which names its entry.

    ``trusted_checkpoint`` is a signed checkpoint note obtained earlier (e.g. from a
    witness): the ledger must extend it, which catches truncation and forks that a
    self-consistent directory alone cannot reveal. ``expected_genesis`` is the genesis
    fingerprint (:func:`genesis_fingerprint`) the auditor holds from elsewhere; a ledger
    with another genesis fails check 2 (MalformedRecord is raised, before any check, if
    it is not a fingerprint at all). A hook that cannot reach what it checks raises
    through: :class:`~bfl_private.ledger.errors.ChainUnavailable` is no verdict on the
    ledger, so it fails no check.
    """
    directory = Path(directory)
    expected = None if expected_genesis is None else parse_fingerprint(expected_genesis)
    audit = _Audit(directory, trusted_checkpoint, expected)
    steps: list[tuple[int, str, Callable[[], str]]] = [
        (number, name, partial(fn, audit)) for number, name, fn in CHECKS
    ]
    steps += [(len(CHECKS) + 1 + i, hook.name, partial(audit.run_hook, hook))
              for i, hook in enumerate(hooks)]
    report = VerificationReport(str(directory), [CheckResult(n, name) for n, name, _ in steps])
    if workers > 1:
        # The platform's default start method (fork on Linux up to Python 3.13): spawn would
        # re-run a caller's script that lacks an ``if __name__ == "__main__"`` guard.
        audit.executor = ProcessPoolExecutor(max_workers=workers - 1,
                                             mp_context=multiprocessing.get_context())
    try:
        for result, (number, _, step) in zip(report.checks, steps):
            try:
                result.detail = step()
                result.status = "passed"
                if number == 1:
                    audit.share_signatures()
                    for hook in hooks:
                        try:
                            hook.begin(tuple(audit.entries), audit.executor)
                        except Exception:  # noqa: BLE001, S112 - a head start only, never a check
                            continue
            except VerificationError as exc:
                result.status, result.detail = "failed", str(exc)
                result.error_type = type(exc).__name__
                result.block, result.entry = audit.loc.block, audit.loc.entry
                where = "".join(f", {k} {v}" for k, v in (("block", result.block),
                                                          ("entry", result.entry))
                                if v is not None)
                report.error = type(exc)(f"check {result.number} ({result.name}) failed"
                                         f"{where}: {exc}")
                break
    finally:
        for hook in hooks:
            hook.end()
        if audit.executor is not None:
            audit.executor.shutdown(wait=True, cancel_futures=True)
        if audit.store is not None:
            audit.store.close()
    if expected is None:
        audit.note("The genesis (federation id, members, keys, budgets, settings) is trusted "
                   "as received: give --expect-genesis FINGERPRINT, obtained from the "
                   "federation through another channel, to pin it.")
    if trusted_checkpoint is None:
        audit.note("Completeness: a copy cut off after some block is itself a valid, shorter "
                   "ledger; give --checkpoint FILE (a signed checkpoint kept earlier) to "
                   "prove this one is not shorter than what you saw.")
    if not hooks:
        audit.note("no semantic hooks ran: aggregates, models and epsilon claims were not "
                   "recomputed (the application's audit adds them)")
    report.notes = audit.rendered_notes()
    report.blocks, report.entries = len(audit.blocks), len(audit.entries)
    if audit.blocks:
        head = audit.blocks[-1].header
        report.head = {"height": head.height, "size": head.size, "root": head.root.hex(),
                       "hash": head.hash().hex()}
    if all(c.status == "passed" for c in report.checks[:5]):
        report.anchor = _anchor(audit, pinned=expected is not None)
    if report.ok:
        report.state, report.log = audit.states[-1], tuple(audit.entries)
    return report


def _anchor(audit: _Audit, *, pinned: bool) -> LedgerAnchor:
    return LedgerAnchor.of(audit.entries[0], audit.blocks[-1], pinned=pinned,
                           trusted=audit.trusted())


def read_anchor(directory: Path | str, *, expected_genesis: str | None = None) -> LedgerAnchor:
    """The :class:`LedgerAnchor` of :func:`read_genesis_and_head`."""
    genesis, head = read_genesis_and_head(directory, expected_genesis=expected_genesis)
    return LedgerAnchor.of(genesis, head, pinned=expected_genesis is not None, trusted=None)


def read_genesis_and_head(directory: Path | str, *, expected_genesis: str | None = None
                          ) -> tuple[Entry, Block]:
    """The genesis and head of a ledger directory, checked without the full audit.

    Entry 0 must be a genesis entry (with the ``expected_genesis`` fingerprint, if given)
    and the only entry of block 0, and blocks 0 and head must carry quorum certificates
    of the validators that genesis names: so the head checkpoint is one the federation's
    validators signed, whatever else the directory's stored state claims. For checking a
    proof against a directory (``bfl-private check-proof``). Raises a VerificationError
    subclass; reads read-only and writes nothing.
    """
    directory = Path(directory)
    expected = None if expected_genesis is None else parse_fingerprint(expected_genesis)
    store = SQLiteStore.open(directory / DATABASE, read_only=True)
    try:
        rows = store.entry_rows(0, 1)
        first, last = store.block_row(0), store.last_block_row()
        if not rows or first is None or last is None:
            raise ChainError(f"{directory}: the ledger has no genesis block")
        genesis = Entry.from_bytes(bytes(rows[0][2]), where="entry 0")
        if genesis.type != GENESIS:
            raise ChainError(f"{directory}: entry 0 is a {genesis.type} entry, not genesis")
        record = GenesisRecord.of(genesis, where="entry 0 (genesis)")
        verify_signatures([genesis], genesis_keys(record, where="entry 0 (genesis)"), first_index=0)
        fingerprint = genesis_fingerprint(genesis)
        if expected is not None and fingerprint != expected:
            raise ChainError(f"{directory}: the genesis fingerprint is {fingerprint}, the "
                             f"expected one {expected}")
        validators, quorum = genesis_validators(record)
        origin = origin_for(record.federation_id)
        for height, header_bytes, _, _ in (first, last):
            header = BlockHeader.from_bytes(bytes(header_bytes), where=f"block {height} header")
            if header.origin != origin:
                raise ChainError(f"block {height} has origin {header.origin!r}, the genesis "
                                 f"names {origin!r}")
            verify_certificate(header, store.cosignatures(height), validators=validators,
                               quorum=quorum)
        block0 = BlockHeader.from_bytes(bytes(first[1]), where="block 0 header")
        if block0.size != 1 or block0.root != genesis.leaf_hash():
            raise ChainError("block 0's certified root is not the genesis entry alone")
        return genesis, Block(header, store.cosignatures(last[0]), last[2])
    finally:
        store.close()


def verify_ledger(
    directory: Path | str,
    *,
    hooks: Sequence[VerifierHook] = (),
    trusted_checkpoint: str | None = None,
    expected_genesis: str | None = None,
    workers: int = 1,
) -> VerificationReport:
    """Like :func:`run_checks`, but raise the first failure's VerificationError subclass."""
    report = run_checks(directory, hooks=hooks, trusted_checkpoint=trusted_checkpoint,
                        expected_genesis=expected_genesis, workers=workers)
    report.raise_for_failure()
    return report
