"""A small synthetic federation that writes real ledgers for the ledger tests.

Real Ed25519 identities, real blobs (safetensors arrays and canonical JSON) and real
blocks certified by the validators; only the numbers in the round records are synthetic.
Imported by tests/test_ledger_*.py (pytest puts tests/ on sys.path) and by the crash
test's child process.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from bfl_private.ledger.blocks import Block
from bfl_private.ledger.entries import (
    ABORT,
    ATTESTATION,
    GENESIS,
    ROUND_CLOSE,
    ROUND_OPEN,
    SUBMISSION,
    Entry,
)
from bfl_private.ledger.identity import SigningIdentity
from bfl_private.ledger.store import Ledger, ProposedBlock

REWARDS = {"reward_per_round": 1000, "penalty_invalid": 100, "penalty_dropout": 10,
           "validator_reward": 5}


class Federation:
    """Coordinator, clients and validators with keys, and helpers to write rounds."""

    def __init__(self, *, clients: int = 3, validators: int = 4, budget: float = 3.0,
                 quorum: int | None = None, seeds: Sequence[bytes] | None = None) -> None:
        names = (["coordinator"] + [f"client-{i}" for i in range(clients)]
                 + [f"validator-{i}" for i in range(validators)])
        if seeds is None:
            ids = [SigningIdentity.generate(n) for n in names]
        else:
            ids = [SigningIdentity.from_private_bytes(n, s) for n, s in zip(names, seeds)]
        self.coordinator = ids[0]
        self.clients = {i.name: i for i in ids[1:1 + clients]}
        self.validators = {i.name: i for i in ids[1 + clients:]}
        self.budget = budget
        self.quorum = quorum if quorum is not None else validators - (validators - 1) // 3
        self.weights = {name: 50 + 10 * k for k, name in enumerate(self.clients)}
        self.time = 1_700_000_000

    def seeds(self) -> list[bytes]:
        """Private key seeds, so a child process can rebuild the same federation."""
        ids = [self.coordinator, *self.clients.values(), *self.validators.values()]
        return [i.private_bytes() for i in ids]

    def genesis(self) -> Entry:
        return Entry.create(self.coordinator, GENESIS, 0, {
            "federation_id": "test-fed",
            "settings": {"dataset": "synthetic", "model": "logreg", "protocol": "plain"},
            "quorum": self.quorum,
            "rewards": REWARDS,
            "coordinator": {"id": "coordinator", "vkey": self.coordinator.public.vkey()},
            "clients": [{"id": n, "vkey": c.public.vkey(), "epsilon_budget": self.budget,
                         "delta": 1e-5, "data_weight": self.weights[n]}
                        for n, c in self.clients.items()],
            "validators": [{"id": n, "vkey": v.public.vkey()}
                           for n, v in self.validators.items()],
            "initial_model_cid": None,
            "normalisation": {"source": "test constants", "records": 0, "mean": [0.0], "scale": [1.0]},
        })

    def sign(self, proposed: ProposedBlock, signers: Sequence[str] | None = None
             ) -> dict[str, bytes]:
        """Cosignatures of the named validators (default: all) over the proposed header."""
        chosen = self.validators if signers is None else {n: self.validators[n] for n in signers}
        body = proposed.header.signing_bytes()
        return {v.public.key_id_hex: v.sign(body) for v in chosen.values()}

    def commit(self, ledger: Ledger, entries: Sequence[Entry]) -> Block:
        self.time = max(self.time, ledger.head.time if ledger.head else 0) + 60
        proposed = ledger.propose(entries, time=self.time)
        return ledger.commit(proposed, self.sign(proposed))

    def start(self, directory: Path) -> Ledger:
        """Create a ledger in ``directory`` and commit the genesis block."""
        ledger = Ledger.create(directory)
        self.commit(ledger, [self.genesis()])
        return ledger

    def round_entries(
        self,
        ledger: Ledger,
        number: int,
        *,
        dropouts: Sequence[str] = (),
        rejected: Mapping[str, str] | None = None,
        epsilon_step: float = 0.5,
        verdicts: Sequence[str] | None = None,
        abort: bool = False,
    ) -> list[Entry]:
        """All entries of one round; blobs are written to ``ledger.blobs`` first."""
        rejected = dict(rejected or {})
        rng = np.random.default_rng(number)
        participants = sorted(self.clients)
        base = ledger.state.model_cid
        entries = [Entry.create(self.coordinator, ROUND_OPEN, number, {
            "participants": participants, "protocol": "plain",
            "protocol_params": {"bits": 16}, "base_model_cid": base,
            "privacy_plan": {"epsilon_per_round": epsilon_step}})]
        submitted = [c for c in participants if c not in dropouts]
        blobs = {}
        for name in submitted:
            cid = ledger.blobs.put_arrays({"update": rng.normal(size=8).astype(np.float32)},
                                          {"client": name, "round": str(number)})
            blobs[name] = cid
            entries.append(Entry.create(self.clients[name], SUBMISSION, number, {
                "client": name, "blob_cid": cid, "data_weight": self.weights[name],
                "privacy": {"noise_multiplier": 1.1, "steps": 20}}))
        spent = {name: c["epsilon_spent"] for name, c in ledger.state.clients().items()}
        cumulative = {name: round(spent[name] + epsilon_step, 6) for name in submitted}
        if abort:
            entries.append(Entry.create(self.coordinator, ABORT, number, {
                "stage": "unmask", "reason": "too many dropouts", "survivors": submitted,
                "cumulative_epsilon": cumulative}))
            return entries
        survivors = [c for c in submitted if c not in rejected]
        aggregate = ledger.blobs.put_arrays({"sum": rng.normal(size=8)})
        model = ledger.blobs.put_arrays({"weights": rng.normal(size=8)},
                                        {"round": str(number)})
        transcript = ledger.blobs.put_json({"round": number, "survivors": survivors})
        entries.append(Entry.create(self.coordinator, ROUND_CLOSE, number, {
            "aggregate_cid": aggregate, "new_model_cid": model, "transcript_cid": transcript,
            "survivors": survivors, "dropouts": list(dropouts), "rejected": rejected,
            "cumulative_epsilon": cumulative}))
        verdicts = list(verdicts) if verdicts is not None else ["accept"] * len(self.validators)
        for (name, validator), verdict in zip(self.validators.items(), verdicts):
            entries.append(Entry.create(validator, ATTESTATION, number, {
                "validator": name, "model_cid": model,
                "quality_ppm": 900_000 + 1000 * int(name.split("-")[1]), "verdict": verdict}))
        return entries

    def run_round(self, ledger: Ledger, number: int, **kwargs: object) -> Block:
        return self.commit(ledger, self.round_entries(ledger, number, **kwargs))


def build_ledger(directory: Path, *, rounds: int = 3, **kwargs: object) -> Federation:
    """A closed ledger with genesis and ``rounds`` accepted rounds; returns its federation."""
    federation = Federation(**kwargs)
    ledger = federation.start(directory)
    for number in range(1, rounds + 1):
        federation.run_round(ledger, number)
    ledger.close()
    return federation


class RefusingPool:
    """A stand-in for the verifier's second process that refuses all work (a broken or
    forbidden process pool): the checks must then all run in the first."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def submit(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("no second process here")

    def shutdown(self, *args: object, **kwargs: object) -> None:
        pass
