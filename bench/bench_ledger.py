"""Ledger throughput: entries appended per second, signed entries verified per second, and
proof generation time from the SQLite store against log size.

Workload: a federation of C clients and 4 validators; each block is one round (open, C
submissions each signed by its client, close, 4 attestations), signed beforehand, so the
timed append is exactly ``Ledger.propose`` (contracts, Ed25519 check of every entry,
Merkle hashing) plus ``Ledger.commit`` (quorum certificate, one SQLite WAL transaction with
``synchronous=FULL``). Baselines, timed in the same process on the same bytes:

* append: inserting the same entry bytes into a bare SQLite table, one transaction per
  block, same pragmas (the storage floor; the ratio is the cost of the checks);
* verify: raw libsodium Ed25519 verification (:func:`bfl_private.primitives.ed25519.verify_signature`)
  of the same messages (the signature floor; the ratio is the cost of parsing, key lookup
  and canonical bytes);
* proofs: the RFC 9162 reference recursion over the full list of leaf hashes.

Targets from issue 6: >= 10k entries/s appended, >= 5k signed entries/s verified, proof
time flat in log n.
"""
from __future__ import annotations

import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from bfl_private.primitives.ed25519 import verify_signature
from bfl_private.ledger.blocks import Block
from bfl_private.ledger.entries import (
    ATTESTATION,
    GENESIS,
    ROUND_CLOSE,
    ROUND_OPEN,
    SUBMISSION,
    Entry,
    verify_signatures,
)
from bfl_private.ledger.genesis import GenesisRecord, Normalisation, RegisteredClient, RegisteredParty, Rewards
from bfl_private.ledger.identity import SigningIdentity
from bfl_private.ledger.merkle import Frontier, inclusion_proof, leaf_hash
from bfl_private.ledger.store import Ledger, SQLiteStore

_CID = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
_VALIDATORS = 4


class _Federation:
    """Identities and pre-signed rounds (signing is the clients' cost, not the ledger's)."""

    def __init__(self, clients: int) -> None:
        self.coordinator = SigningIdentity.generate("coordinator")
        self.clients = [SigningIdentity.generate(f"c{i}") for i in range(clients)]
        self.validators = [SigningIdentity.generate(f"v{i}") for i in range(_VALIDATORS)]

    def genesis(self) -> Entry:
        def member(identity: SigningIdentity) -> RegisteredParty:
            return RegisteredParty(identity.name, identity.public.vkey())

        return Entry.create(self.coordinator, GENESIS, 0, GenesisRecord(
            federation_id="bench", settings={}, quorum=3,
            rewards=Rewards(reward_per_round=1000, penalty_invalid=1, penalty_dropout=1, validator_reward=1),
            coordinator=member(self.coordinator),
            clients=tuple(RegisteredClient(c.name, c.public.vkey(), epsilon_budget=1e9, delta=1e-5, data_weight=100)
                          for c in self.clients),
            validators=tuple(member(v) for v in self.validators),
            initial_model_cid=_CID,
            normalisation=Normalisation(source="bench constants", records=0, mean=(0.0,), scale=(1.0,)),
        ).to_json())

    def round(self, number: int) -> list[Entry]:
        names = sorted(c.name for c in self.clients)
        entries = [Entry.create(self.coordinator, ROUND_OPEN, number, {
            "participants": names, "protocol": "plain", "protocol_params": {},
            "base_model_cid": _CID, "privacy_plan": {}})]
        entries += [Entry.create(c, SUBMISSION, number, {
            "client": c.name, "blob_cid": _CID, "data_weight": 100,
            "privacy": {"noise_multiplier": 1.1}}) for c in self.clients]
        entries.append(Entry.create(self.coordinator, ROUND_CLOSE, number, {
            "aggregate_cid": _CID, "new_model_cid": _CID, "transcript_cid": None,
            "survivors": names, "dropouts": [], "rejected": {},
            "cumulative_epsilon": {n: 0.01 * number for n in names}}))
        entries += [Entry.create(v, ATTESTATION, number, {
            "validator": v.name, "model_cid": _CID, "quality_ppm": 900_000,
            "verdict": "accept"}) for v in self.validators]
        return entries

    def commit(self, ledger: Ledger, entries: list[Entry], when: int) -> Block:
        proposed = ledger.propose(entries, time=when)
        body = proposed.header.signing_bytes()
        return ledger.commit(proposed, {v.public.key_id_hex: v.sign(body)
                                        for v in self.validators})


def _raw_sqlite_append(path: Path, blocks: list[list[bytes]]) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE entries(idx INTEGER PRIMARY KEY, height INTEGER, data BLOB)")
    start, index = time.perf_counter(), 0
    for height, block in enumerate(blocks):
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO entries VALUES (?, ?, ?)",
                       [(index + i, height, d) for i, d in enumerate(block)])
        db.execute("COMMIT")
        index += len(block)
    elapsed = time.perf_counter() - start
    db.close()
    return elapsed


def run(*, quick: bool) -> list[dict]:
    clients, rounds = (300, 4) if quick else (1000, 12)
    federation = _Federation(clients)
    blocks = [federation.round(r) for r in range(1, rounds + 1)]
    count = sum(map(len, blocks))
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger.create(Path(tmp) / "ledger")
        federation.commit(ledger, [federation.genesis()], 1)
        start = time.perf_counter()
        for number, entries in enumerate(blocks, start=1):
            federation.commit(ledger, entries, 1 + number)
        t_ledger = time.perf_counter() - start
        t_raw = _raw_sqlite_append(Path(tmp) / "raw.sqlite3",
                                   [[e.to_bytes() for e in b] for b in blocks])
        rows.append({
            "suite": "ledger",
            "name": f"append with all checks ({rounds} blocks of {len(blocks[0])} entries)",
            "per_s": count / t_ledger, "target_per_s": 10_000,
            "baseline": "bare SQLite insert of the same bytes", "baseline_per_s": count / t_raw,
            "ratio": t_ledger / t_raw,
        })

        # The log layer alone: Merkle nodes and one SQLite transaction per block, for
        # entries already checked (what commit writes once propose has passed).
        store = SQLiteStore.create(Path(tmp) / "log.sqlite3")
        frontier, first = Frontier(), 0
        start = time.perf_counter()
        for height, entries in enumerate(blocks):
            nodes = [n for e in entries for n in frontier.append(leaf_hash(e.to_bytes()))]
            store.write_block(height=height, header=b"", first_entry=first, state=b"",
                              cosignatures={}, entries=[e.to_bytes() for e in entries],
                              nodes=nodes)
            first += len(entries)
        t_log = time.perf_counter() - start
        store.close()
        rows.append({
            "suite": "ledger", "name": "log append only (Merkle + SQLite, no checks)",
            "per_s": count / t_log, "target_per_s": 10_000,
            "baseline": "bare SQLite insert of the same bytes", "baseline_per_s": count / t_raw,
            "ratio": t_log / t_raw,
        })

        stored = ledger.entries()
        keys = ledger.state.keys()
        start = time.perf_counter()
        parsed = [Entry.from_bytes(e.to_bytes(), where="bench") for e in stored]
        verify_signatures(parsed, keys, first_index=0)
        t_verify = time.perf_counter() - start
        messages = [(keys[e.author].public_bytes(), e.signature, e.signed_bytes()) for e in parsed]
        start = time.perf_counter()
        for key, signature, message in messages:
            verify_signature(key, signature, message)
        t_ed = time.perf_counter() - start
        rows.append({
            "suite": "ledger", "name": f"parse + verify {len(stored)} signed entries",
            "per_s": len(stored) / t_verify, "target_per_s": 5_000,
            "baseline": "raw Ed25519 verify (libsodium, as the ledger uses it)",
            "baseline_per_s": len(stored) / t_ed, "ratio": t_verify / t_ed,
        })

        leaves = [leaf_hash(e.to_bytes()) for e in stored]
        rng = random.Random(6)
        first = None
        sizes = [1 << k for k in range(8, 32) if 1 << k <= ledger.size] + [ledger.size]
        for size in sizes:
            indices = [rng.randrange(size) for _ in range(300 if quick else 1000)]
            start = time.perf_counter()
            for i in indices:
                ledger.inclusion_proof(i, size)
            t_proof = (time.perf_counter() - start) / len(indices)
            reference = indices[:20]
            start = time.perf_counter()
            for i in reference:
                assert inclusion_proof(leaves[:size], i) == ledger.inclusion_proof(i, size)
            t_ref = (time.perf_counter() - start) / len(reference) - t_proof
            first = first or t_proof
            rows.append({
                "suite": "ledger", "name": f"inclusion proof from SQLite, n = {size}",
                "us_per_proof": t_proof * 1e6, "growth_vs_smallest": t_proof / first,
                "baseline": "RFC recursion over all leaf hashes",
                "baseline_us_per_proof": t_ref * 1e6, "ratio": t_ref / t_proof,
            })
        ledger.close()
    return rows


def _markdown(rows: list[dict]) -> str:
    lines = ["| measure | figure | baseline | ratio | note |", "|---|---|---|---|---|"]
    for r in rows:
        if "per_s" in r:
            lines.append(f"| {r['name']} | {r['per_s']:,.0f} /s (target {r['target_per_s']:,}) "
                         f"| {r['baseline']}: {r['baseline_per_s']:,.0f} /s "
                         f"| {r['ratio']:.2f}x time | |")
        else:
            lines.append(f"| {r['name']} | {r['us_per_proof']:.1f} µs | {r['baseline']}: "
                         f"{r['baseline_us_per_proof']:.1f} µs | {r['ratio']:.1f}x faster "
                         f"| growth vs smallest {r['growth_vs_smallest']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(_markdown(run(quick="--quick" in sys.argv)))
