"""Inspection of a ledger: what happened (rounds, participants, budgets, balances) and
portable proofs (an entry's inclusion, two checkpoints' consistency).

Proof records are plain JSON carrying the signed checkpoint notes they refer to, read
back as :class:`InclusionRecord` / :class:`ConsistencyRecord`, so a third party checks
them with their ``check`` (RFC 9162 §2.1.3.2 and §2.1.4.2 via ``merkle.verify_*``) and
the notes' validator signatures with ``checkpoint.open_note``, without the ledger;
:func:`check_proof` does both with the validators a ledger directory's genesis names.

``python -m bfl_private.ledger.inspect DIR [summary | inclusion INDEX [--height H] |
consistency OLD_HEIGHT NEW_HEIGHT]``
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .blocks import note_checkpoint, origin_for
from .checkpoint import Checkpoint, verify_note
from .contracts import PPM, LedgerState
from .entries import (
    ABORT,
    ATTESTATION,
    GENESIS,
    ROUND_BEACON,
    ROUND_CLOSE,
    ROUND_OPEN,
    SUBMISSION,
    Entry,
)
from .errors import ChainError, MalformedRecord, RootMismatch
from .genesis import GenesisRecord
from .merkle import leaf_hash, verify_consistency, verify_inclusion
from .store import Ledger
from .verify import genesis_fingerprint, genesis_validators, read_genesis_and_head


def rounds_table(state: LedgerState) -> Table:
    """One row per finished round: outcome, who took part, model and quality."""
    table = Table(title="Rounds")
    for column in ("round", "outcome", "participants", "survivors", "dropouts", "rejected",
                   "accepts", "quality", "minted", "model after"):
        table.add_column(column)
    for r in state.rounds():
        quality = r.get("quality_ppm")
        table.add_row(
            str(r["round"]), r["outcome"], str(r["participants"]), str(r["survivors"]),
            str(r.get("dropouts", "-")), str(r.get("rejected", "-")),
            str(r.get("accepts", "-")), "-" if quality is None else f"{quality / PPM:.4f}",
            str(r.get("minted", 0)), (r["model_cid"] or "-")[:16],
        )
    return table


def participants_table(state: LedgerState) -> Table:
    """Clients with their key, data weight, privacy spend against budget, and balance."""
    table = Table(title="Clients")
    for column in ("client", "key id", "data weight", "epsilon spent", "budget", "delta",
                   "balance"):
        table.add_column(column)
    for name, c in sorted(state.clients().items()):
        table.add_row(name, c["key_id"], str(c["data_weight"]), f"{c['epsilon_spent']:.4g}",
                      f"{c['epsilon_budget']:.4g}", f"{c['delta']:.1e}", str(c["balance"]))
    return table


def validators_table(state: LedgerState) -> Table:
    """Validators with their key and balance."""
    table = Table(title=f"Validators (quorum {state.quorum})")
    for column in ("validator", "key id", "balance"):
        table.add_column(column)
    for name, v in sorted(state.validators().items()):
        table.add_row(name, v["key_id"], str(v["balance"]))
    return table


def print_summary(ledger: Ledger, console: Console | None = None) -> None:
    """Print the ledger's head, rounds, clients and validators."""
    console = console or Console()
    state = ledger.state
    if not state.initialised:
        console.print(f"{ledger.directory}: empty ledger (no genesis block)")
        return
    console.print(f"federation {state.federation_id}: height {ledger.height}, "
                  f"{ledger.size} entries, current model {state.model_cid}")
    console.print(rounds_table(state))
    console.print(participants_table(state))
    console.print(validators_table(state))


def summary_record(ledger: Ledger) -> dict[str, Any]:
    """What :func:`print_summary` shows, as JSON: head, rounds, clients, validators."""
    state = ledger.state
    if not state.initialised:
        raise ChainError(f"{ledger.directory}: empty ledger (no genesis block)")
    return {"federation_id": state.federation_id, "height": ledger.height, "entries": ledger.size,
            "model_cid": state.model_cid, "quorum": state.quorum, "rounds": state.rounds(),
            "clients": state.clients(), "validators": state.validators()}


@dataclass(frozen=True)
class LocatedEntry:
    """A log entry with its position: leaf index, the block that holds it, its author's name."""

    index: int
    height: int
    author: str
    """The registered id (``hospital-03``) whose key signed the entry."""
    entry: Entry

    def line(self) -> str:
        """One line for ``bfl-private log``: where, what, who, and the payload's gist."""
        payload = self.entry.payload
        gist = {SUBMISSION: lambda: f"blob {payload['blob_cid']}",
                ROUND_CLOSE: lambda: f"survivors {len(payload['survivors'])}, model {payload['new_model_cid']}",
                ATTESTATION: lambda: f"{payload['verdict']} {payload['model_cid']}",
                ABORT: lambda: f"stage {payload['stage']}",
                ROUND_OPEN: lambda: f"{payload['protocol']}, {len(payload['participants'])} participants",
                ROUND_BEACON: lambda: f"{len(payload['signatures'])} validator signatures",
                GENESIS: lambda: f"federation {GenesisRecord.of(self.entry).federation_id}"}.get(self.entry.type, lambda: "")()
        return (f"{self.index:>6}  block {self.height:<5} round {self.entry.round:<4} {self.entry.type:<12} "
                f"{self.author:<14} {gist}")

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "block": self.height, "author": self.author,
                "entry": json.loads(self.entry.to_bytes())}


def located_entries(ledger: Ledger, *, round_id: int | None = None, author: str | None = None,
                    entry_type: str | None = None) -> list[LocatedEntry]:
    """Every entry in log order, filtered by round, author name and type when given."""
    if not ledger.state.initialised:
        return []
    state = ledger.state.as_dict()
    members = {**state["clients"], **state["validators"], state["coordinator"]["id"]: state["coordinator"]}
    names = {record["key_id"]: name for name, record in members.items()}
    located, start = [], 0
    for block in ledger.blocks():
        for offset, entry in enumerate(ledger.entries(start, block.header.size)):
            name = names.get(entry.author, f"key {entry.author}")
            if ((round_id is None or entry.round == round_id) and (author is None or name == author)
                    and (entry_type is None or entry.type == entry_type)):
                located.append(LocatedEntry(start + offset, block.height, name, entry))
        start = block.header.size
    return located


def locate_entry(ledger: Ledger, index: int) -> LocatedEntry:
    """Entry ``index`` with its block and author; MalformedRecord if the log has no such entry."""
    if not 0 <= index < ledger.size:
        raise MalformedRecord(f"no entry {index}; the log holds entries 0-{ledger.size - 1}")
    return next(e for e in located_entries(ledger) if e.index == index)


def submission_index(ledger: Ledger, client: str, round_id: int) -> int:
    """The log index of ``client``'s submission in round ``round_id``."""
    found = located_entries(ledger, round_id=round_id, author=client, entry_type=SUBMISSION)
    if not found:
        known = sorted(ledger.state.clients())
        if client not in known:
            raise MalformedRecord(f"no client {client!r}; clients are {', '.join(known)}")
        raise MalformedRecord(f"{client} made no submission in round {round_id} "
                              f"(it dropped out before sending, was not admitted, or the round does not exist)")
    return found[0].index


def inclusion_proof_record(ledger: Ledger, index: int, *, height: int | None = None
                           ) -> dict[str, Any]:
    """Proof that entry ``index`` is in the log as of block ``height`` (default: head)."""
    if height is None:
        if ledger.height is None:
            raise ChainError(f"{ledger.directory}: no block yet, nothing to prove")
        height = ledger.height
    block = ledger.block(height)
    entry = ledger.entries(index, index + 1)
    if not entry or index >= block.header.size:
        raise MalformedRecord(f"entry {index} is not in the log as of block {block.height} "
                              f"(size {block.header.size})")
    return InclusionRecord(
        entry_index=index,
        entry=entry[0].to_bytes().decode("utf-8"),
        tree_size=block.header.size,
        proof=tuple(ledger.inclusion_proof(index, block.header.size)),
        checkpoint=ledger.checkpoint(block.height),
    ).to_json()


def consistency_proof_record(ledger: Ledger, old_height: int, new_height: int
                             ) -> dict[str, Any]:
    """Proof that the checkpoint of block ``new_height`` extends that of ``old_height``."""
    old, new = ledger.block(old_height).header, ledger.block(new_height).header
    return ConsistencyRecord(
        old_size=old.size,
        new_size=new.size,
        proof=tuple(ledger.consistency_proof(old.size, new.size)),
        old_checkpoint=ledger.checkpoint(old_height),
        new_checkpoint=ledger.checkpoint(new_height),
    ).to_json()


def _field(obj: dict[str, Any], name: str, kind: type, what: str) -> Any:
    value = obj.get(name)
    if name not in obj:
        raise MalformedRecord(f"{what}: missing field {name!r}")
    if not isinstance(value, kind) or isinstance(value, bool):
        raise MalformedRecord(f"{what}: field {name!r} must be {kind.__name__}, "
                              f"got {type(value).__name__}")
    if kind is int and value < 0:
        raise MalformedRecord(f"{what}: field {name!r} must be >= 0, got {value}")
    return value


def _hashes(obj: dict[str, Any], what: str) -> tuple[bytes, ...]:
    values = _field(obj, "proof", list, what)
    try:
        hashes = tuple(bytes.fromhex(v) for v in values)
    except (TypeError, ValueError):
        hashes = ()
    if len(hashes) != len(values) or any(len(h) != 32 for h in hashes):
        raise MalformedRecord(f"{what}: field 'proof' must be a list of 64-digit hex hashes")
    return hashes


def _note(obj: dict[str, Any], name: str, what: str) -> tuple[str, Checkpoint]:
    note = _field(obj, name, str, what)
    try:
        return note, note_checkpoint(note)
    except MalformedRecord as exc:
        raise MalformedRecord(f"{what}: field {name!r} is not a signed checkpoint: {exc}") from None


@dataclass(frozen=True)
class InclusionRecord:
    """``bfl-private prove --entry``: entry ``entry_index`` is in the tree of ``tree_size``
    whose signed checkpoint note is ``checkpoint``."""

    entry_index: int
    entry: str
    """The entry's canonical JSON, exactly as the log hashed it."""
    tree_size: int
    proof: tuple[bytes, ...]
    checkpoint: str

    def to_json(self) -> dict[str, Any]:
        return {"entry_index": self.entry_index, "entry": self.entry,
                "tree_size": self.tree_size, "proof": [h.hex() for h in self.proof],
                "checkpoint": self.checkpoint}

    @classmethod
    def from_json(cls, obj: Any) -> InclusionRecord:
        what = "inclusion proof"
        if not isinstance(obj, dict):
            raise MalformedRecord(f"{what}: a JSON object is expected, got {type(obj).__name__}")
        note, _ = _note(obj, "checkpoint", what)
        return cls(_field(obj, "entry_index", int, what), _field(obj, "entry", str, what),
                   _field(obj, "tree_size", int, what), _hashes(obj, what), note)

    def notes(self) -> tuple[str, ...]:
        return (self.checkpoint,)

    def check(self) -> None:
        """The Merkle path from the entry leads to the root in the checkpoint; raises if not."""
        checkpoint = _checkpoint_of(self.checkpoint, self.tree_size, "checkpoint")
        verify_inclusion(leaf_hash(self.entry.encode("utf-8")), self.entry_index,
                         self.tree_size, list(self.proof), checkpoint.root)


@dataclass(frozen=True)
class ConsistencyRecord:
    """``bfl-private prove --consistency``: the tree of ``old_size`` is a prefix of the
    tree of ``new_size``; both signed checkpoint notes are carried."""

    old_size: int
    new_size: int
    proof: tuple[bytes, ...]
    old_checkpoint: str
    new_checkpoint: str

    def to_json(self) -> dict[str, Any]:
        return {"old_size": self.old_size, "new_size": self.new_size,
                "proof": [h.hex() for h in self.proof], "old_checkpoint": self.old_checkpoint,
                "new_checkpoint": self.new_checkpoint}

    @classmethod
    def from_json(cls, obj: Any) -> ConsistencyRecord:
        what = "consistency proof"
        if not isinstance(obj, dict):
            raise MalformedRecord(f"{what}: a JSON object is expected, got {type(obj).__name__}")
        old, _ = _note(obj, "old_checkpoint", what)
        new, _ = _note(obj, "new_checkpoint", what)
        return cls(_field(obj, "old_size", int, what), _field(obj, "new_size", int, what),
                   _hashes(obj, what), old, new)

    def notes(self) -> tuple[str, ...]:
        return (self.old_checkpoint, self.new_checkpoint)

    def check(self) -> None:
        """The old checkpoint's tree is a prefix of the new one's; raises if not."""
        old = _checkpoint_of(self.old_checkpoint, self.old_size, "old checkpoint")
        new = _checkpoint_of(self.new_checkpoint, self.new_size, "new checkpoint")
        verify_consistency(old.size, new.size, old.root, new.root, list(self.proof))


def parse_proof_record(obj: Any) -> InclusionRecord | ConsistencyRecord:
    """An inclusion record if it has ``entry_index``, else a consistency record;
    MalformedRecord naming the field that is missing or of the wrong type."""
    if isinstance(obj, dict) and "entry_index" in obj:
        return InclusionRecord.from_json(obj)
    return ConsistencyRecord.from_json(obj)


def _checkpoint_of(note: str, size: int, what: str) -> Checkpoint:
    checkpoint = note_checkpoint(note)
    if checkpoint.size != size:
        raise RootMismatch(f"{what} has tree size {checkpoint.size}, the proof says {size}")
    return checkpoint


def check_proof(record: InclusionRecord | ConsistencyRecord, directory: Path | str, *,
                expected_genesis: str | None = None) -> str:
    """Check a proof record against the federation in ``directory`` and say what it proved.

    The validators and quorum come from the genesis entry, and the directory's genesis
    and head block must themselves be certified by them (:func:`read_genesis_and_head`),
    so an edited stored state or a directory of another federation cannot vouch for a
    proof. Then every checkpoint of the record must be for this federation's log and
    signed by a quorum of those validators, and the Merkle path must lead to its root.
    Raises a VerificationError subclass; returns the one-line success statement.
    """
    genesis, head = read_genesis_and_head(directory, expected_genesis=expected_genesis)
    registry = GenesisRecord.of(genesis)
    validators, quorum = genesis_validators(registry)
    origin = origin_for(registry.federation_id)
    for note in record.notes():
        checkpoint = note_checkpoint(note)
        if checkpoint.origin != origin:
            raise ChainError(f"the proof's checkpoint is for log {checkpoint.origin!r}, "
                             f"{directory} is {origin!r}")
        verify_note(note, verifiers=list(validators.values()), quorum=quorum)
    record.check()
    signed = (f"signed by a quorum ({quorum} of {len(validators)}) of the validators named by "
              f"genesis {genesis_fingerprint(genesis)}")
    if isinstance(record, ConsistencyRecord):
        return (f"proof OK: the log of tree size {record.old_size} is a prefix of the log of "
                f"tree size {record.new_size}; both checkpoints are {signed}")
    entry = Entry.from_bytes(record.entry.encode("utf-8"), where=f"entry {record.entry_index}")
    names = {m.key().key_id_hex: m.id for m in registry.members}
    who = entry.payload["client"] if entry.type == SUBMISSION else names.get(entry.author,
                                                                             entry.author)
    return (f"proof OK: entry {record.entry_index} ({entry.type} by {who}, round "
            f"{entry.round}) is in the log of tree size {record.tree_size} (head "
            f"{head.header.size}); its checkpoint is {signed}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: summary tables or a JSON proof record."""
    parser = argparse.ArgumentParser(prog="python -m bfl_private.ledger.inspect")
    parser.add_argument("directory", type=Path)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("summary", help="rounds, clients, budgets and balances")
    inclusion = sub.add_parser("inclusion", help="inclusion proof of one entry")
    inclusion.add_argument("index", type=int)
    inclusion.add_argument("--height", type=int, default=None)
    consistency = sub.add_parser("consistency", help="consistency proof between two blocks")
    consistency.add_argument("old_height", type=int)
    consistency.add_argument("new_height", type=int)
    args = parser.parse_args(argv)
    with Ledger.open(args.directory) as ledger:
        if args.command == "inclusion":
            print(json.dumps(inclusion_proof_record(ledger, args.index, height=args.height),
                             indent=2))
        elif args.command == "consistency":
            print(json.dumps(consistency_proof_record(ledger, args.old_height,
                                                      args.new_height), indent=2))
        else:
            print_summary(ledger)
    return 0


if __name__ == "__main__":
    sys.exit(main())
