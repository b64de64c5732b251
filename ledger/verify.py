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

It reads only the directory (never a private key), opens SQLite read-only, and imports
neither torch nor ``bfl_private.privacy`` / ``bfl_private.protocols``: what needs their
maths is added by the application as :class:`VerifierHook` objects.

``python -m bfl_private.ledger.verify DIR [--json] [--checkpoint NOTE]`` exits 0 only if
every check passes, 1 if one fails.
"""
from __future__ import annotations

import argparse
import json
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from .blobstore import BlobStore
from .blocks import (
    GENESIS_PREV,
    Block,
    BlockHeader,
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
from .identity import VerifyingKey
from .merkle import Frontier, consistency_proof, verify_consistency
from .store import BLOBS, DATABASE, SQLiteStore


@dataclass(frozen=True)
class BlockContext:
    """What a semantic hook sees for one block."""

    block: Block
    entries: tuple[Entry, ...]
    state_before: LedgerState
    state_after: LedgerState
    blobs: BlobStore
    note: Callable[[str], None]
    """Add a line to the report's notes, e.g. what the ledger cannot prove."""


class VerifierHook(ABC):
    """A semantic check run on every block after the integrity checks pass.

    Subclasses set ``name`` (shown as the check's name) and implement :meth:`check_block`,
    raising :class:`~bfl_private.ledger.errors.SemanticCheckError` (or another
    VerificationError subclass) for a false claim. They may read blobs and states but
    must not write anything.
    """

    name: str = "semantic hook"

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
            "checks": [vars(c).copy() for c in self.checks],
            "failure": None if failure is None else vars(failure).copy(),
            "notes": list(self.notes),
        }

    def render(self) -> str:
        """Human-readable form, one line per numbered check."""
        lines = [f"Verifying ledger {self.directory}"]
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

    def __init__(self, directory: Path, trusted_checkpoint: str | None) -> None:
        self.directory = directory
        self.trusted_note = trusted_checkpoint
        self.store: SQLiteStore | None = None
        self.blobs: BlobStore | None = None
        self.blocks: list[Block] = []
        self.stored_states: list[bytes] = []
        self.entries: list[Entry] = []
        self.states: list[LedgerState] = []
        self.keys: dict[str, VerifyingKey] = {}
        self.notes: list[str] = []
        self.loc = _Location()

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def trusted(self) -> Checkpoint | None:
        return None if self.trusted_note is None else note_checkpoint(self.trusted_note)

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
        origin = origin_for(genesis.payload["federation_id"])
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
    def entry_signatures(self) -> str:
        try:
            self.keys = genesis_keys(self.entries[0].payload, where="entry 0 (genesis)")
        except MalformedRecord as exc:
            raise MalformedRecord(f"entry 0 (genesis): bad verifier key: {exc}") from None
        for block in self.blocks:
            self.loc.block = block.height
            for index in block.entry_range:
                self.loc.entry = index
                verify_signatures([self.entries[index]], self.keys, first_index=index)
        self.loc.entry = self.loc.block = None
        return f"{len(self.entries)} signatures"

    # 5 -------------------------------------------------------------------------------------
    def quorum_certificates(self) -> str:
        payload = self.entries[0].payload
        validators = {v["id"]: VerifyingKey.from_vkey(v["vkey"]) for v in payload["validators"]}
        by_id = {k.key_id_hex: k for k in validators.values()}
        quorum = max(payload["quorum"], min_quorum(len(validators)))
        for block in self.blocks:
            self.loc.block = block.height
            verify_certificate(block.header, block.signatures, validators=by_id, quorum=quorum)
        self.loc.block = None
        if self.trusted_note is not None:
            verify_note(self.trusted_note, verifiers=list(by_id.values()), quorum=quorum)
        return f"{len(self.blocks)} certificates, quorum {quorum} of {len(validators)}"

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
) -> VerificationReport:
    """Run every check in order and return the report (failures are in it, not raised).

    ``trusted_checkpoint`` is a signed checkpoint note obtained earlier (e.g. from a
    witness): the ledger must extend it, which catches truncation and forks that a
    self-consistent directory alone cannot reveal.
    """
    directory = Path(directory)
    audit = _Audit(directory, trusted_checkpoint)
    steps: list[tuple[int, str, Callable[[], str]]] = [
        (number, name, partial(fn, audit)) for number, name, fn in CHECKS
    ]
    steps += [(len(CHECKS) + 1 + i, hook.name, partial(audit.run_hook, hook))
              for i, hook in enumerate(hooks)]
    report = VerificationReport(str(directory), [CheckResult(n, name) for n, name, _ in steps])
    try:
        for result, (_, _, step) in zip(report.checks, steps):
            try:
                result.detail = step()
                result.status = "passed"
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
        if audit.store is not None:
            audit.store.close()
    if not hooks:
        audit.note("no semantic hooks ran: aggregates, models and epsilon claims were not "
                   "recomputed (the application's audit adds them)")
    report.notes = audit.notes
    report.blocks, report.entries = len(audit.blocks), len(audit.entries)
    if audit.blocks:
        head = audit.blocks[-1].header
        report.head = {"height": head.height, "size": head.size, "root": head.root.hex(),
                       "hash": head.hash().hex()}
    return report


def verify_ledger(
    directory: Path | str,
    *,
    hooks: Sequence[VerifierHook] = (),
    trusted_checkpoint: str | None = None,
) -> VerificationReport:
    """Like :func:`run_checks`, but raise the first failure's VerificationError subclass."""
    report = run_checks(directory, hooks=hooks, trusted_checkpoint=trusted_checkpoint)
    report.raise_for_failure()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bfl_private.ledger.verify DIR [--json] [--checkpoint NOTE]``."""
    parser = argparse.ArgumentParser(prog="python -m bfl_private.ledger.verify",
                                     description="Verify a bfl-private ledger directory.")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--json", action="store_true", help="print a machine-readable report")
    parser.add_argument("--checkpoint", type=Path,
                        help="a trusted signed checkpoint note the ledger must extend")
    args = parser.parse_args(argv)
    trusted = None
    if args.checkpoint is not None:
        try:
            trusted = args.checkpoint.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            parser.error(f"cannot read checkpoint {args.checkpoint}: {exc}")
    report = run_checks(args.directory, trusted_checkpoint=trusted)
    print(json.dumps(report.to_json(), indent=2) if args.json else report.render())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
